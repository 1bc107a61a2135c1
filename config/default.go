package config

import _ "embed"

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the embedded default configuration as commented YAML,
// for rekey init to write to <home>/rekey.yaml. Its paths are relative
// (dsn: rekey.db, keyring: keyring, master_key_file: master.key), so that
// Load of the written file, or Parse with baseDir home, equals
// Default(home). It also shows, commented out, every other backend type
// and a declared key. The caller owns the returned slice.
func DefaultYAML() []byte {
	return append([]byte(nil), defaultYAML...)
}

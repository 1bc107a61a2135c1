package localkms

import (
	"errors"
	"path/filepath"
)

// Settings are the local backend's settings in a configuration file
// (backends.NAME with type: local). The config package decodes them from
// YAML (expanding ${VAR} in values), calls ResolvePaths with the
// configuration file's directory and Validate; the program that opens the
// backend turns them into a Config:
//
//	localkms.Config{Keyring: s.Keyring, MasterKeyFile: s.MasterKeyFile, MasterKey: mk, Logger: l}
type Settings struct {
	// Keyring is the keyring file (YAML: keyring). Required.
	Keyring string `yaml:"keyring" json:"keyring"`
	// MasterKeyFile is the master key file (YAML: master_key_file). Empty
	// means the master key comes from REKEY_MASTER_KEY instead.
	MasterKeyFile string `yaml:"master_key_file,omitempty" json:"master_key_file,omitempty"`
}

// SettingsError is a problem with one field of Settings. Field is the
// field's YAML name; Message says what is wrong and how to fix it, and
// never repeats a secret.
type SettingsError struct {
	Field   string
	Message string
}

// Error returns "FIELD: MESSAGE".
func (e *SettingsError) Error() string { return e.Field + ": " + e.Message }

// FieldName returns the YAML name of the field with the problem.
func (e *SettingsError) FieldName() string { return e.Field }

// Reason returns what is wrong with the field.
func (e *SettingsError) Reason() string { return e.Message }

// Validate returns nil, or every problem with s joined (errors.Join), each
// a *SettingsError naming its field: a missing keyring, and a master key
// file that is the keyring file itself.
func (s *Settings) Validate() error {
	var errs []error
	if s.Keyring == "" {
		errs = append(errs, &SettingsError{"keyring", "missing: set keyring to the keyring file, e.g. keyring"})
	}
	if s.MasterKeyFile != "" && filepath.Clean(s.MasterKeyFile) == filepath.Clean(s.Keyring) {
		errs = append(errs, &SettingsError{"master_key_file", "is the keyring file: the master key needs a file of its own"})
	}
	return errors.Join(errs...)
}

// ResolvePaths makes the relative file paths of s (keyring,
// master_key_file) relative to dir, the directory of the configuration
// file. Absolute and empty paths, and every path when dir is empty, are
// left as they are.
func (s *Settings) ResolvePaths(dir string) {
	for _, p := range []*string{&s.Keyring, &s.MasterKeyFile} {
		if *p != "" && dir != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

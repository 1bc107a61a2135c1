package config

import (
	"os"
	"path/filepath"
)

// Resolve finds the configuration the command line uses, in DESIGN.md's
// order:
//
//  1. flagPath (--config PATH), if not empty;
//  2. else $REKEY_CONFIG, if not empty;
//  3. else ./rekey.yaml, if it exists;
//  4. else the embedded default in home = $REKEY_HOME (default ./rekey-data),
//     read from <home>/rekey.yaml when that file exists (rekey init writes
//     it), else Default(home).
//
// fromFile reports whether path names a file to Load; when it is false,
// path is "" and the caller uses Default(home) (creating home on first use
// is the caller's business). When fromFile is true, home is the file's
// directory: the directory its relative paths resolve against. A named
// file (1, 2) is returned whether or not it exists, so that Load reports
// it missing. env is os.Getenv when nil.
func Resolve(flagPath string, env func(string) string) (path string, home string, fromFile bool) {
	if env == nil {
		env = os.Getenv
	}
	for _, p := range []string{flagPath, env("REKEY_CONFIG")} {
		if p != "" {
			return p, filepath.Dir(p), true
		}
	}
	if exists(FileName) {
		return FileName, ".", true
	}
	home = env("REKEY_HOME")
	if home == "" {
		home = DefaultHome
	}
	home = filepath.Clean(home)
	if p := filepath.Join(home, FileName); exists(p) {
		return p, home, true
	}
	return "", home, false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

package pkcs11

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultPINEnv is the environment variable the user PIN is read from when
// neither pin_env nor pin_file is set.
const DefaultPINEnv = "REKEY_PKCS11_PIN"

// DefaultMaxSessions is the default of Settings.MaxSessions and
// Config.MaxSessions.
const DefaultMaxSessions = 16

// maxPINFile bounds what PIN reads from a PIN file.
const maxPINFile = 4096

// Settings are the pkcs11 backend's settings in a configuration file
// (backends.NAME with type: pkcs11). The config package decodes them from
// YAML (expanding ${VAR} in values), calls ResolvePaths with the
// configuration file's directory and Validate; the program that opens the
// backend reads the PIN with PIN and turns them into a Config. The PIN is
// never a setting: it comes from the environment variable pin_env or the
// file pin_file.
type Settings struct {
	// Module is the path of the PKCS#11 library (YAML: module), e.g.
	// /usr/lib/softhsm/libsofthsm2.so. Required.
	Module string `yaml:"module" json:"module"`
	// TokenLabel selects the token by its label (YAML: token_label).
	// Exactly one of token_label and slot is required.
	TokenLabel string `yaml:"token_label,omitempty" json:"token_label,omitempty"`
	// Slot selects the token by slot id (YAML: slot).
	Slot *uint `yaml:"slot,omitempty" json:"slot,omitempty"`
	// PINEnv is the environment variable holding the user PIN (YAML:
	// pin_env). Empty (and no pin_file) means DefaultPINEnv.
	PINEnv string `yaml:"pin_env,omitempty" json:"pin_env,omitempty"`
	// PINFile is a file holding the user PIN (YAML: pin_file), readable by
	// the owner only (0600); a final newline is ignored.
	PINFile string `yaml:"pin_file,omitempty" json:"pin_file,omitempty"`
	// MaxSessions bounds the PKCS#11 sessions the backend opens (YAML:
	// max_sessions). 0 means DefaultMaxSessions.
	MaxSessions int `yaml:"max_sessions,omitempty" json:"max_sessions,omitempty"`
	// RateLimitRPS is this backend's request rate (YAML: rate_limit,
	// requests per second; 0 = none). Unset means worker.kms_rate_limit,
	// else no limit: an HSM has no published quota, so set it for a
	// partition shared with other applications.
	RateLimitRPS *float64 `yaml:"rate_limit,omitempty" json:"rate_limit,omitempty"`
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
// a *SettingsError naming its field: a missing module, not exactly one of
// token_label and slot, both pin_env and pin_file, a pin_env that is not a
// variable name, and max_sessions or rate_limit out of range.
func (s *Settings) Validate() error {
	var errs []error
	add := func(field, msg string) { errs = append(errs, &SettingsError{field, msg}) }
	if s.Module == "" {
		add("module", "missing: set module to the path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
	}
	switch {
	case s.TokenLabel == "" && s.Slot == nil:
		add("token_label", "missing: set token_label to the token's label (or slot to its slot id)")
	case s.TokenLabel != "" && s.Slot != nil:
		add("slot", "token_label and slot are both set: keep one")
	}
	switch {
	case s.PINEnv != "" && s.PINFile != "":
		add("pin_file", "pin_env and pin_file are both set: keep one")
	case s.PINEnv != "" && !isEnvName(s.PINEnv):
		add("pin_env", "is the name of an environment variable (letters, digits, _), not the PIN: never put the PIN in the configuration")
	}
	if s.MaxSessions < 0 || s.MaxSessions == 1 || s.MaxSessions > 1024 {
		add("max_sessions", fmt.Sprintf("%d is out of range: use 2 to 1024, or 0 for the default %d", s.MaxSessions, DefaultMaxSessions))
	}
	if s.RateLimitRPS != nil && *s.RateLimitRPS < 0 {
		add("rate_limit", "is negative: use requests per second, or 0 for no limit")
	}
	return errors.Join(errs...)
}

func isEnvName(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// ResolvePaths makes a relative pin_file (and a relative module path with a
// directory part) relative to dir, the directory of the configuration file.
// A bare library name (libsofthsm2.so) is left for the dynamic loader.
func (s *Settings) ResolvePaths(dir string) {
	if dir == "" {
		return
	}
	if s.PINFile != "" && !filepath.IsAbs(s.PINFile) {
		s.PINFile = filepath.Join(dir, s.PINFile)
	}
	if s.Module != "" && !filepath.IsAbs(s.Module) && strings.ContainsRune(s.Module, filepath.Separator) {
		s.Module = filepath.Join(dir, s.Module)
	}
}

// RateLimit implements config.RateLimitSettings: the explicit rate_limit,
// else no default of its own (0, not explicit).
func (s *Settings) RateLimit() (rps float64, explicit bool) {
	if s.RateLimitRPS != nil {
		return *s.RateLimitRPS, true
	}
	return 0, false
}

// PINSource says where the PIN comes from, for error messages: "the
// environment variable NAME" or "the file PATH".
func (s *Settings) PINSource() string {
	if s.PINFile != "" {
		return "the file " + s.PINFile
	}
	return "the environment variable " + s.pinEnv()
}

func (s *Settings) pinEnv() string {
	if s.PINEnv != "" {
		return s.PINEnv
	}
	return DefaultPINEnv
}

// PIN reads the user PIN from pin_file, or from the environment variable
// pin_env (default DefaultPINEnv) through getenv. It refuses a PIN file that
// group or others may access, and an empty PIN. Its errors name where the
// PIN was looked for, never the PIN.
func (s *Settings) PIN(getenv func(string) string) (string, error) {
	if s.PINFile == "" {
		name := s.pinEnv()
		pin := getenv(name)
		if pin == "" {
			return "", fmt.Errorf("pkcs11: no PIN: set the environment variable %s to the token's user PIN (or set pin_file)", name)
		}
		return pin, nil
	}
	fi, err := os.Stat(s.PINFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("pkcs11: PIN file %s does not exist: write the token's user PIN to it (chmod 600), or fix pin_file", s.PINFile)
	case err != nil:
		return "", fmt.Errorf("pkcs11: PIN file: %w", err)
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("pkcs11: PIN file %s is not a regular file: fix pin_file", s.PINFile)
	case fi.Mode().Perm()&0o077 != 0:
		return "", fmt.Errorf("pkcs11: PIN file %s is accessible to group or others (mode %04o): run chmod 600 %s", s.PINFile, fi.Mode().Perm(), s.PINFile)
	case fi.Size() > maxPINFile:
		return "", fmt.Errorf("pkcs11: PIN file %s is %d bytes: it must hold only the PIN", s.PINFile, fi.Size())
	}
	b, err := os.ReadFile(s.PINFile)
	if err != nil {
		return "", fmt.Errorf("pkcs11: PIN file: %w", err)
	}
	defer clear(b)
	pin := strings.TrimRight(string(b), "\r\n")
	if pin == "" {
		return "", fmt.Errorf("pkcs11: PIN file %s is empty: write the token's user PIN to it", s.PINFile)
	}
	return pin, nil
}

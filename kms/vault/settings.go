package vault

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"path/filepath"
	"strings"
)

// DefaultRateLimit is the backend's request rate (per second) when the
// configuration sets none: Vault has no built-in quota, but a Transit
// mount is shared with the applications that encrypt through it, and a
// re-wrap sends batches (one request per batch), so a few hundred
// requests a second leave it room.
const DefaultRateLimit = 500

// DefaultTokenEnv is the environment variable the token comes from when
// the settings name no other source.
const DefaultTokenEnv = "VAULT_TOKEN"

// Settings are the vault backend's settings in a configuration file
// (backends.NAME with type: vault). The config package decodes them from
// YAML (expanding ${VAR} in values), calls ResolvePaths with the
// configuration file's directory and Validate; the program that opens the
// backend reads the secrets they point at and builds a Config
// (Settings.Config does that).
//
// A token or AppRole secret ID is never a setting: the settings name the
// environment variable or the file that holds it.
type Settings struct {
	// Address is Vault's address, e.g. https://vault.example.com:8200
	// (YAML: address). Required.
	Address string `yaml:"address" json:"address"`
	// Mount is the Transit mount path (YAML: mount; default transit).
	Mount string `yaml:"mount,omitempty" json:"mount,omitempty"`
	// Namespace is the Vault Enterprise / OpenBao namespace (YAML:
	// namespace; empty: none).
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	// TokenEnv names the environment variable holding the token (YAML:
	// token_env). When no token_file and no role_id is set it defaults to
	// VAULT_TOKEN.
	TokenEnv string `yaml:"token_env,omitempty" json:"token_env,omitempty"`
	// TokenFile is a file holding the token, such as a Vault Agent sink
	// (YAML: token_file). It is read again when it changes.
	TokenFile string `yaml:"token_file,omitempty" json:"token_file,omitempty"`
	// RoleID is the AppRole role ID (YAML: role_id): log in with AppRole
	// instead of a token. It needs secret_id_env or secret_id_file.
	RoleID string `yaml:"role_id,omitempty" json:"role_id,omitempty"`
	// SecretIDEnv names the environment variable holding the AppRole
	// secret ID (YAML: secret_id_env).
	SecretIDEnv string `yaml:"secret_id_env,omitempty" json:"secret_id_env,omitempty"`
	// SecretIDFile is a file holding the AppRole secret ID (YAML:
	// secret_id_file).
	SecretIDFile string `yaml:"secret_id_file,omitempty" json:"secret_id_file,omitempty"`
	// AppRoleMount is the AppRole auth mount path (YAML: approle_mount;
	// default approle).
	AppRoleMount string `yaml:"approle_mount,omitempty" json:"approle_mount,omitempty"`
	// CACert is a PEM file of the CA certificates that sign Vault's TLS
	// certificate (YAML: ca_cert; empty: the system's roots).
	CACert string `yaml:"ca_cert,omitempty" json:"ca_cert,omitempty"`
	// RateLimitRPS is the backend's request rate per second (YAML:
	// rate_limit; unset: DefaultRateLimit unless worker.kms_rate_limit is
	// set; 0: no limit).
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

// Validate returns nil, or every problem with s joined (errors.Join),
// each a *SettingsError naming its field: a missing or malformed address,
// a malformed mount, more than one way to authenticate, AppRole without a
// secret ID source, a negative rate limit.
func (s *Settings) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &SettingsError{field, fmt.Sprintf(format, args...)})
	}
	if s.Address == "" {
		add("address", "missing: set address to Vault's address, e.g. https://vault.example.com:8200")
	} else if u, err := url.Parse(s.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("address", "is not an http:// or https:// address with a host: use e.g. https://vault.example.com:8200")
	} else if u.User != nil {
		add("address", "has user information: give the token through token_env, token_file or AppRole, never in the address")
	}
	for _, f := range []struct{ name, value string }{{"mount", s.Mount}, {"approle_mount", s.AppRoleMount}} {
		if f.value != "" && !validMount(f.value) {
			add(f.name, "%q is not a mount path: use letters, digits, '-', '_', '.' and inner '/', e.g. transit", f.value)
		}
	}
	ways := 0
	for _, set := range []bool{s.TokenEnv != "", s.TokenFile != "", s.RoleID != ""} {
		if set {
			ways++
		}
	}
	if ways > 1 {
		add("token_env", "token_env, token_file and role_id are three ways to log in: set only one")
	}
	if s.RoleID != "" {
		switch {
		case s.SecretIDEnv == "" && s.SecretIDFile == "":
			add("secret_id_env", "role_id is set but no secret ID: set secret_id_env (an environment variable) or secret_id_file")
		case s.SecretIDEnv != "" && s.SecretIDFile != "":
			add("secret_id_env", "secret_id_env and secret_id_file are both set: set only one")
		}
	} else {
		if s.SecretIDEnv != "" {
			add("secret_id_env", "is set without role_id: AppRole needs both, else remove it")
		}
		if s.SecretIDFile != "" {
			add("secret_id_file", "is set without role_id: AppRole needs both, else remove it")
		}
	}
	for _, f := range []struct{ name, value string }{{"token_env", s.TokenEnv}, {"secret_id_env", s.SecretIDEnv}} {
		if f.value != "" && !validEnvName(f.value) {
			add(f.name, "is not an environment variable name (letters, digits, '_'): name the variable, e.g. VAULT_TOKEN, never put the secret itself here")
		}
	}
	if r := s.RateLimitRPS; r != nil && (*r < 0 || math.IsNaN(*r) || math.IsInf(*r, 0)) {
		add("rate_limit", "%v is not a rate: give requests per second, 0 for no limit", *r)
	}
	return errors.Join(errs...)
}

// RateLimit implements config.RateLimitSettings: rate_limit when set,
// else DefaultRateLimit.
func (s *Settings) RateLimit() (rps float64, explicit bool) {
	if s.RateLimitRPS != nil {
		return *s.RateLimitRPS, true
	}
	return DefaultRateLimit, false
}

// ResolvePaths makes the relative file paths of s (token_file,
// secret_id_file, ca_cert) relative to dir, the directory of the
// configuration file. Absolute and empty paths, and every path when dir is
// empty, are left as they are.
func (s *Settings) ResolvePaths(dir string) {
	for _, p := range []*string{&s.TokenFile, &s.SecretIDFile, &s.CACert} {
		if *p != "" && dir != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// tokenEnv is the environment variable of the token, "" when the token
// comes from a file or AppRole.
func (s *Settings) tokenEnv() string {
	if s.TokenEnv != "" {
		return s.TokenEnv
	}
	if s.TokenFile == "" && s.RoleID == "" {
		return DefaultTokenEnv
	}
	return ""
}

// Config builds the Config that New takes for backend name: it reads the
// token (or AppRole secret ID) from the environment through getenv, or
// leaves the file to New. It returns an error, naming the variable but
// never its value, when a variable it needs is empty.
func (s *Settings) Config(name string, getenv func(string) string) (Config, error) {
	c := Config{
		Name: name, Address: s.Address, Mount: s.Mount, Namespace: s.Namespace,
		TokenFile: s.TokenFile, CACertFile: s.CACert,
	}
	if env := s.tokenEnv(); env != "" {
		c.Token = strings.TrimSpace(getenv(env))
		if c.Token == "" {
			return Config{}, fmt.Errorf("vault backend %s: the token variable %s is empty: export the Vault token in %s, or set token_file or AppRole (role_id) in the backend's settings", name, env, env)
		}
	}
	if s.RoleID != "" {
		c.AppRole = &AppRole{RoleID: s.RoleID, SecretIDFile: s.SecretIDFile, Mount: s.AppRoleMount}
		if s.SecretIDEnv != "" {
			c.AppRole.SecretID = strings.TrimSpace(getenv(s.SecretIDEnv))
			if c.AppRole.SecretID == "" {
				return Config{}, fmt.Errorf("vault backend %s: the AppRole secret ID variable %s is empty: export the secret ID in %s", name, s.SecretIDEnv, s.SecretIDEnv)
			}
		}
	}
	return c, nil
}

func validMount(m string) bool {
	if strings.HasPrefix(m, "/") || strings.HasSuffix(m, "/") || strings.Contains(m, "//") {
		return false
	}
	for _, c := range m {
		if !(c == '-' || c == '_' || c == '.' || c == '/' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func validEnvName(s string) bool {
	for i, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

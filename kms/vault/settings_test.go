package vault_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey/kms/vault"
)

func TestSettingsValidate(t *testing.T) {
	neg := -1.0
	cases := []struct {
		name string
		s    vault.Settings
		want []string // "field: part of the message"; none = valid
	}{
		{"token from the environment (default)", vault.Settings{Address: "https://v:8200"}, nil},
		{"approle", vault.Settings{Address: "http://127.0.0.1:8200", RoleID: "r", SecretIDFile: "f"}, nil},
		{"missing address", vault.Settings{}, []string{"address: missing"}},
		{"not a URL", vault.Settings{Address: "vault:8200"}, []string{"address: is not an http"}},
		{"credentials in the address", vault.Settings{Address: "https://u:p@v"}, []string{"address: has user information"}},
		{"two ways to log in", vault.Settings{Address: "https://v", TokenEnv: "T", TokenFile: "f"}, []string{"token_env: "}},
		{"approle without secret", vault.Settings{Address: "https://v", RoleID: "r"}, []string{"secret_id_env: role_id is set"}},
		{"secret without approle", vault.Settings{Address: "https://v", SecretIDFile: "f"}, []string{"secret_id_file: is set without role_id"}},
		{"token in token_env", vault.Settings{Address: "https://v", TokenEnv: "hvs.CAESIsecret"}, []string{"token_env: is not an environment variable name"}},
		{"bad mount", vault.Settings{Address: "https://v", Mount: "/transit/"}, []string{"mount: "}},
		{"negative rate", vault.Settings{Address: "https://v", RateLimitRPS: &neg}, []string{"rate_limit: "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want %v", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate: %q, want %q", err, w)
				}
			}
			var se *vault.SettingsError
			if !errors.As(err, &se) {
				t.Errorf("Validate: %T, want *vault.SettingsError inside", err)
			}
			if strings.Contains(err.Error(), "CAESIsecret") {
				t.Errorf("Validate repeats a secret: %v", err)
			}
		})
	}
}

func TestSettingsConfig(t *testing.T) {
	env := map[string]string{"VAULT_TOKEN": "tok-1", "MY_SECRET": " sid \n"}
	getenv := func(k string) string { return env[k] }

	s := vault.Settings{Address: "https://v"}
	c, err := s.Config("v1", getenv)
	if err != nil || c.Token != "tok-1" || c.Name != "v1" {
		t.Fatalf("default token_env: %+v, %v", c, err)
	}
	if rps, explicit := s.RateLimit(); rps != vault.DefaultRateLimit || explicit {
		t.Errorf("RateLimit = %v, %v; want the default, not explicit", rps, explicit)
	}
	zero := 0.0
	s.RateLimitRPS = &zero
	if rps, explicit := s.RateLimit(); rps != 0 || !explicit {
		t.Errorf("RateLimit with rate_limit 0 = %v, %v; want 0, explicit", rps, explicit)
	}

	s = vault.Settings{Address: "https://v", TokenEnv: "EMPTY"}
	if _, err := s.Config("v1", getenv); err == nil || !strings.Contains(err.Error(), "EMPTY") {
		t.Errorf("empty token variable: %v, want an error naming EMPTY", err)
	}
	s = vault.Settings{Address: "https://v", RoleID: "r", SecretIDEnv: "MY_SECRET"}
	c, err = s.Config("v1", getenv)
	if err != nil || c.AppRole == nil || c.AppRole.SecretID != "sid" || c.Token != "" {
		t.Fatalf("AppRole from the environment: %+v, %v", c, err)
	}
	s = vault.Settings{Address: "https://v", TokenFile: "t", CACert: "ca.pem"}
	s.ResolvePaths("/etc/rekey")
	if s.TokenFile != "/etc/rekey/t" || s.CACert != "/etc/rekey/ca.pem" {
		t.Errorf("ResolvePaths: %+v", s)
	}
}

package keyprotect_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/kms/keyprotect"
)

func TestSettingsValidate(t *testing.T) {
	t.Parallel()
	neg := -1.0
	tests := []struct {
		name  string
		s     keyprotect.Settings
		field string // "" = valid
		msg   string
	}{
		{"region", keyprotect.Settings{InstanceID: "i", Region: "us-south"}, "", ""},
		{"endpoint", keyprotect.Settings{InstanceID: "i", Endpoint: "https://private.eu-de.kms.cloud.ibm.com"}, "", ""},
		{"no instance", keyprotect.Settings{Region: "us-south"}, "instance_id", "missing"},
		{"crn as instance", keyprotect.Settings{InstanceID: "crn:v1/x", Region: "us-south"}, "instance_id", "GUID"},
		{"no region", keyprotect.Settings{InstanceID: "i"}, "region", "set region"},
		{"bad region", keyprotect.Settings{InstanceID: "i", Region: "US South"}, "region", "not a region"},
		{"endpoint with credentials", keyprotect.Settings{InstanceID: "i", Endpoint: "https://u:SECRET@h"}, "endpoint", "credentials"},
		{"endpoint not a URL", keyprotect.Settings{InstanceID: "i", Endpoint: "SECRET"}, "endpoint", "not a URL"},
		{"iam ftp", keyprotect.Settings{InstanceID: "i", Region: "us-south", IAMEndpoint: "ftp://h"}, "iam_endpoint", "http(s)"},
		{"key in api_key_env", keyprotect.Settings{InstanceID: "i", Region: "us-south", APIKeyEnv: "SECRET-abc+/="}, "api_key_env", "never the key"},
		{"negative rate", keyprotect.Settings{InstanceID: "i", Region: "us-south", RateLimitRPS: &neg}, "rate_limit", "requests per second"},
	}
	for _, tc := range tests {
		err := tc.s.Validate()
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		var se *keyprotect.SettingsError
		if !errors.As(err, &se) || se.FieldName() != tc.field || !strings.Contains(se.Reason(), tc.msg) {
			t.Errorf("%s: %v; want a problem with %s saying %q", tc.name, err, tc.field, tc.msg)
		}
		if err != nil && strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%s: the error repeats the value: %v", tc.name, err)
		}
	}
}

func TestSettingsDerived(t *testing.T) {
	t.Parallel()
	s := keyprotect.Settings{InstanceID: "i", Region: "eu-de"}
	if s.BaseURL() != "https://eu-de.kms.cloud.ibm.com" || s.IAMURL() != keyprotect.DefaultIAMEndpoint || s.APIKeyVar() != "IBMCLOUD_API_KEY" {
		t.Fatalf("defaults: %s %s %s", s.BaseURL(), s.IAMURL(), s.APIKeyVar())
	}
	if rps, explicit := s.RateLimit(); rps != keyprotect.DefaultRateLimit || explicit {
		t.Fatalf("RateLimit() = %v, %v", rps, explicit)
	}
	r := 7.5
	s.RateLimitRPS = &r
	s.Endpoint = "https://x.example/"
	if rps, explicit := s.RateLimit(); rps != 7.5 || !explicit || s.BaseURL() != "https://x.example" {
		t.Fatalf("explicit: %v %v %s", rps, explicit, s.BaseURL())
	}
	s.APIKeyFile = "kp.key"
	s.ResolvePaths("/etc/rekey")
	if s.APIKeyFile != "/etc/rekey/kp.key" {
		t.Fatalf("ResolvePaths: %s", s.APIKeyFile)
	}
}

func TestAPIKeySources(t *testing.T) {
	t.Parallel()
	env := map[string]string{"IBMCLOUD_API_KEY": " from-env \n", "MY_KP_KEY": "mine"}
	getenv := func(k string) string { return env[k] }

	key, src, err := keyprotect.APIKey(&keyprotect.Settings{}, getenv)
	if err != nil || key != "from-env" || src != "$IBMCLOUD_API_KEY" {
		t.Fatalf("default variable: %q %q %v", key, src, err)
	}
	key, _, err = keyprotect.APIKey(&keyprotect.Settings{APIKeyEnv: "MY_KP_KEY"}, getenv)
	if err != nil || key != "mine" {
		t.Fatalf("api_key_env: %q %v", key, err)
	}
	_, _, err = keyprotect.APIKey(&keyprotect.Settings{APIKeyEnv: "UNSET_VAR"}, getenv)
	if err == nil || !strings.Contains(err.Error(), "export UNSET_VAR=") {
		t.Fatalf("unset variable: %v", err)
	}

	dir := t.TempDir()
	f := filepath.Join(dir, "kp.key")
	if err := os.WriteFile(f, []byte("file-key-VALUE\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = keyprotect.APIKey(&keyprotect.Settings{APIKeyFile: f}, getenv)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), "file-key-VALUE") {
		t.Fatalf("group-readable key file: %v", err)
	}
	os.Chmod(f, 0o600)
	key, src, err = keyprotect.APIKey(&keyprotect.Settings{APIKeyFile: f}, getenv)
	if err != nil || key != "file-key-VALUE" || src != "file "+f {
		t.Fatalf("key file: %q %q %v", key, src, err)
	}
	os.WriteFile(f, []byte("  \n"), 0o600)
	if _, _, err = keyprotect.APIKey(&keyprotect.Settings{APIKeyFile: f}, getenv); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty key file: %v", err)
	}
}

// A keyprotect backend in a configuration file: its fields, its default
// request rate, an explicit rate_limit, and no field for the key itself.
func TestConfigFile(t *testing.T) {
	t.Parallel()
	const base = `version: 1
store: {driver: sqlite, dsn: rekey.db}
defaults: {rotation_period: 90d, rotate_within: 7d, notify_within: 14d, grace: 7d, destroy_after: never}
`
	c, err := config.Parse([]byte(base+`backends:
  kp: {type: keyprotect, instance_id: 0d5a, region: us-south, api_key_file: kp.key}
  kp2: {type: keyprotect, instance_id: 0d5a, endpoint: "https://private.us-south.kms.cloud.ibm.com", rate_limit: 20}
`), "/etc/rekey")
	if err != nil {
		t.Fatal(err)
	}
	s, ok := c.Backends["kp"].Settings.(*keyprotect.Settings)
	if !ok || s.InstanceID != "0d5a" || s.APIKeyFile != "/etc/rekey/kp.key" || s.BaseURL() != "https://us-south.kms.cloud.ibm.com" {
		t.Fatalf("kp settings: %+v", c.Backends["kp"].Settings)
	}
	if got := config.EffectiveRateLimit(c.Backends["kp"], 0); got != keyprotect.DefaultRateLimit {
		t.Errorf("default rate = %v, want %v", got, keyprotect.DefaultRateLimit)
	}
	if got := config.EffectiveRateLimit(c.Backends["kp"], 100); got != 100 {
		t.Errorf("rate with worker.kms_rate_limit 100 = %v", got)
	}
	if got := config.EffectiveRateLimit(c.Backends["kp2"], 100); got != 20 {
		t.Errorf("explicit rate_limit = %v, want 20", got)
	}
	_, err = config.Parse([]byte(base+"backends:\n  kp: {type: keyprotect, instance_id: i, region: us-south, api_key: SECRETVALUE}\n"), "")
	if err == nil || !strings.Contains(err.Error(), `unknown field "api_key"`) || strings.Contains(err.Error(), "SECRETVALUE") {
		t.Fatalf("an API key in the config file: %v; want refused without repeating it", err)
	}
}

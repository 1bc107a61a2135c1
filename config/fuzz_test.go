package config

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error is a
// *ValidationError with at least one problem, and that a config it accepts
// validates, policies included.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		string(DefaultYAML()),
		"",
		"version: 1\n",
		"version: 1\nstore: {driver: postgres, dsn: \"postgres://u:${P}@h/d\"}\n",
		"version: 1\nbackends:\n  a: &a {type: local, keyring: k}\n  b: *a\nkeys: [{name: x, backend: a}, {name: y, backend: b, rotation_period: 2s}]\n",
		"version: 1\nworker: {check_interval: 5x, batch_size: 0}\nkeys: [1, ~, {name: A}]\n",
		"version: 1\nbackends: {h: {type: pkcs11, module: m, slot: 1, pin: $$}}\n",
		"a: &a [*a]\n",
		"x: &x {<<: *x}\n",
		"version: 1\n---\nversion: 1\n",
		"version: !!binary aGVsbG8=\n",
		"{? [a]: b}\n",
	} {
		f.Add([]byte(seed))
	}
	env := envOf(map[string]string{"P": "pw", "HOME": "/root"})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parse(data, "/base", env)
		if err != nil {
			var verr *ValidationError
			if !errors.As(err, &verr) || len(verr.Problems) == 0 {
				t.Fatalf("error %T %v is not a *ValidationError with problems", err, err)
			}
			if c != nil {
				t.Fatal("config returned with an error")
			}
			for _, p := range verr.Problems {
				if p.Message == "" {
					t.Fatalf("empty message for %q", p.Path)
				}
				if p.Path == "" && !strings.HasPrefix(p.Message, "yaml:") && !strings.HasPrefix(p.Message, "a config is") &&
					!strings.HasPrefix(p.Message, "and ") && !strings.HasPrefix(p.Message, "the document") &&
					!strings.HasPrefix(p.Message, "field names must be") {
					t.Fatalf("problem without a path: %q", p.Message)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
		// What the file accepts, the library accepts too.
		if err := c.Defaults.Validate(); err != nil {
			t.Fatalf("accepted defaults fail rekey.Policy.Validate: %v", err)
		}
		for _, k := range c.Keys {
			if err := c.Policy(k).Validate(); err != nil {
				t.Fatalf("accepted key %s fails rekey.Policy.Validate: %v", k.Name, err)
			}
		}
	})
}

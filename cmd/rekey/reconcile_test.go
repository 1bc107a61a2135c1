package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeclaredKeysReconciled: keys declared in the config are created by
// `rekey run`, and a policy change in the config is applied and recorded as
// policy.changed, once.
func TestDeclaredKeysReconciled(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	cfgPath := filepath.Join(e.home, "rekey.yaml")
	base, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	write := func(keys string) {
		t.Helper()
		s := strings.Replace(string(base), "keys: []", keys, 1)
		if s == string(base) {
			t.Fatal("config/default.yaml no longer has 'keys: []'")
		}
		if err := os.WriteFile(cfgPath, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("keys:\n  - {name: payments, rotation_period: 30d}\n  - {name: invoices, grace: 1d}\n")
	e.must("run", "--once")
	var show struct {
		Policy struct {
			RotationPeriod string `json:"rotation_period"`
			Grace          string `json:"grace"`
		} `json:"policy"`
		ExpiresIn float64 `json:"expires_in_seconds"`
	}
	if err := json.Unmarshal([]byte(e.must("key", "show", "payments", "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if show.Policy.RotationPeriod != "30d" || show.ExpiresIn < 29*86400 || show.ExpiresIn > 30*86400 {
		t.Fatalf("declared payments: %+v", show)
	}
	if err := json.Unmarshal([]byte(e.must("key", "show", "invoices", "--json")), &show); err != nil || show.Policy.Grace != "1d" {
		t.Fatalf("declared invoices: %+v %v", show, err)
	}

	// Change the period: the expiry moves with it, and the change is audited.
	write("keys:\n  - {name: payments, rotation_period: 60d}\n  - {name: invoices, grace: 1d}\n")
	e.must("run", "--once")
	if err := json.Unmarshal([]byte(e.must("key", "show", "payments", "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if show.Policy.RotationPeriod != "60d" || show.ExpiresIn < 59*86400 {
		t.Fatalf("after the policy change: %+v", show)
	}
	events := e.must("audit", "list", "--key", "payments", "--json")
	var changed []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(events), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if ev["type"] == "policy.changed" {
			changed = append(changed, ev)
		}
	}
	if len(changed) != 1 || !strings.Contains(changed[0]["reason"].(string), "rotation_period=30d->60d") {
		t.Fatalf("policy.changed events: %v", changed)
	}
	// Running again changes nothing more.
	e.must("run", "--once")
	if n := strings.Count(e.must("audit", "list", "--key", "payments", "--json"), `"policy.changed"`); n != 1 {
		t.Fatalf("%d policy.changed events after an unchanged run, want 1", n)
	}
	e.must("audit", "verify")
}

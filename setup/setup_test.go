package setup_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/setup"
)

// noEnv is an environment with nothing set, so that the tests never see
// the REKEY_* variables of whoever runs them.
func noEnv(string) string { return "" }

func open(t *testing.T, o setup.Options) *setup.System {
	t.Helper()
	if o.Getenv == nil {
		o.Getenv = noEnv
	}
	sys, err := setup.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

// kmsRequests sums rekey_kms_requests_total{op} over backends and results.
func kmsRequests(t *testing.T, g prometheus.Gatherer, op string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "rekey_kms_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "op") == op {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Open on an empty home creates the embedded default, and what it returns
// works end to end: a key, the AEAD, and both the Keyring's and the
// engine's backend calls counted by the one middleware.
func TestOpenEmbeddedDefault(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	home := filepath.Join(t.TempDir(), "home")
	reg := prometheus.NewRegistry()
	sys := open(t, setup.Options{Home: home, Registerer: reg})
	if len(sys.Created) != 4 {
		t.Errorf("Created = %v, want the master key, keyring, database and config", sys.Created)
	}
	for _, f := range []string{"master.key", "keyring", "rekey.db", "rekey.yaml"} {
		fi, err := os.Stat(filepath.Join(home, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode().Perm())
		}
	}
	if _, err := sys.Keyring.CreateKey(ctx, "payments", "local", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	aead := sys.Keyring.AEAD("payments")
	ct, err := aead.Encrypt(ctx, []byte("hello"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := aead.Decrypt(ctx, ct, []byte("ad")); err != nil || string(pt) != "hello" {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}
	wraps := kmsRequests(t, reg, "wrap")
	if wraps < 1 {
		t.Fatalf("a Keyring call was not counted: rekey_kms_requests_total{op=wrap} = %v", wraps)
	}
	if _, err := sys.Engine.Rotate(ctx, "payments", rekey.ReasonManual, "test"); err != nil {
		t.Fatal(err)
	}
	if n := kmsRequests(t, reg, "rotate_key"); n != 1 {
		t.Errorf("an engine call was not counted: rekey_kms_requests_total{op=rotate_key} = %v, want 1", n)
	}
	if n := kmsRequests(t, reg, "wrap"); n != wraps {
		t.Errorf("wraps moved from %v to %v during a rotation that re-wraps server-side", wraps, n)
	}

	// A second Open of the same home creates nothing and sees the key.
	again := open(t, setup.Options{Home: home})
	if len(again.Created) != 0 {
		t.Errorf("second Open created %v", again.Created)
	}
	if pt, err := again.Keyring.AEAD("payments").Decrypt(ctx, ct, []byte("ad")); err != nil || string(pt) != "hello" {
		t.Fatalf("Decrypt in a second System = %q, %v", pt, err)
	}
}

// Close checkpoints what the System wrote to the audit trail, so that
// every command's events get a MACed checkpoint before it exits.
func TestCloseCheckpointsTheAuditTrail(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	home := t.TempDir()
	sys, err := setup.Open(ctx, setup.Options{Home: home, Getenv: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sys.Keyring.CreateKey(ctx, "k", "local", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	if err := sys.Close(); err != nil {
		t.Fatal(err)
	}
	sys = open(t, setup.Options{Home: home})
	cp, err := sys.Store.LastAuditCheckpoint(ctx)
	if err != nil || cp.Seq != 1 {
		t.Fatalf("last checkpoint = %+v, %v; want one at seq 1 (key.created)", cp, err)
	}
	if res, err := sys.Audit.Verify(ctx); err != nil || !res.Valid || res.Checkpoints != 1 {
		t.Fatalf("verify = %+v, %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(home, "audit.anchor")); err != nil {
		t.Errorf("no audit.anchor beside the config: %v", err)
	}
}

// worker.kms_rate_limit is applied where the backends are opened, so it
// holds for the Keyring too (dek create --count), not only for the engine.
func TestKMSRateLimitAppliesToTheKeyring(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	home := t.TempDir()
	if _, err := setup.InitHome(ctx, home, noEnv); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(home, config.FileName)
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	limited := strings.Replace(string(b), "kms_rate_limit: 0", "kms_rate_limit: 100", 1)
	if limited == string(b) {
		t.Fatal("config/default.yaml no longer has 'kms_rate_limit: 0'")
	}
	if err := os.WriteFile(cfgPath, []byte(limited), 0o600); err != nil {
		t.Fatal(err)
	}
	sys := open(t, setup.Options{ConfigPath: cfgPath})
	if _, err := sys.Keyring.CreateKey(ctx, "k", "local", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	const n, rate = 200, 100.0
	start := time.Now()
	if _, err := sys.Keyring.NewDEKs(ctx, "k", "", n); err != nil {
		t.Fatal(err)
	}
	// A lower bound only: the machine is shared, so no upper bound.
	if took, floor := time.Since(start), time.Duration(0.8*(n-1)/rate*float64(time.Second)); took < floor {
		t.Errorf("%d wraps at %v requests/s took %v, want at least %v", n, rate, took, floor)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "nothing-here")
	if _, err := setup.Open(ctx, setup.Options{Home: missing, NoCreate: true, Getenv: noEnv}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NoCreate on a missing home: %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NoCreate created %s", missing)
	}
	if _, err := setup.Open(ctx, setup.Options{ConfigPath: filepath.Join(t.TempDir(), "nope.yaml"), Getenv: noEnv}); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("missing config file: %v, want an error naming it", err)
	}

	// A keyring that cannot be read fails Open, naming the backend; with
	// TolerateBackendErrors the System opens and only that backend fails.
	home := t.TempDir()
	if _, err := setup.InitHome(ctx, home, noEnv); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "keyring"), []byte("not a keyring"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Open(ctx, setup.Options{Home: home, Getenv: noEnv}); err == nil || !strings.Contains(err.Error(), "backend local") {
		t.Errorf("corrupt keyring: %v, want an error naming backend local", err)
	}
	sys := open(t, setup.Options{Home: home, TolerateBackendErrors: true})
	if _, err := sys.Keyring.CreateKey(ctx, "k", "local", rekey.DefaultPolicy()); err == nil || !strings.Contains(err.Error(), "backend local") {
		t.Errorf("CreateKey on the broken backend: %v", err)
	}
}

// The master key can come from REKEY_MASTER_KEY through Options.Getenv,
// and no master key file is written then.
func TestMasterKeyFromEnvironment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	home := t.TempDir()
	mk := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" // base64 of bytes 0..31
	env := func(k string) string {
		if k == setup.EnvMasterKey {
			return mk
		}
		return ""
	}
	sys := open(t, setup.Options{Home: home, Getenv: env})
	if _, err := os.Stat(filepath.Join(home, "master.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("master.key written although %s is set: %v", setup.EnvMasterKey, err)
	}
	if _, err := sys.Keyring.CreateKey(ctx, "k", "local", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	ct, err := sys.Keyring.AEAD("k").Encrypt(ctx, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sys.Close()
	if bytes.Contains(ct, []byte(mk)) {
		t.Fatal("ciphertext holds the master key")
	}
	if _, err := setup.Open(ctx, setup.Options{Home: home, Getenv: noEnv}); err == nil {
		t.Error("opened the keyring without its master key")
	}
}

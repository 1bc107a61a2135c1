//go:build cgo

package pkcs11

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kmstest"
	"github.com/rekeyhq/rekey/retry"
)

// The tests run against a real PKCS#11 token: SoftHSM2, initialised by
// scripts/softhsm (which scripts/test runs), named by these variables.
const (
	envModule = "REKEY_TEST_PKCS11_MODULE"
	envToken  = "REKEY_TEST_PKCS11_TOKEN"
	envPIN    = "REKEY_TEST_PKCS11_PIN"
)

// peer is the test token's configuration.
type peer struct{ module, token, pin string }

// testPeer returns the test token. Without one the test fails under CI (CI
// or REKEY_REQUIRE_PEERS set: scripts/test was supposed to start one) and
// is skipped otherwise, naming the command that makes one.
func testPeer(t testing.TB) peer {
	t.Helper()
	p := peer{os.Getenv(envModule), os.Getenv(envToken), os.Getenv(envPIN)}
	if p.module == "" || p.token == "" || p.pin == "" {
		const how = envModule + ", " + envToken + " and " + envPIN + " are not all set: make a SoftHSM2 token with `eval \"$(scripts/softhsm start)\"` (which also sets SOFTHSM2_CONF; remove it with `scripts/softhsm stop`), or run scripts/test, which does both"
		if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	return p
}

func (p peer) config() Config {
	return Config{Module: p.module, TokenLabel: p.token, PIN: p.pin, PINSource: "the environment variable " + envPIN}
}

func open(t testing.TB, cfg Config) *Client {
	t.Helper()
	c, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Through the middleware, as setup opens every backend. One Client serves
// every subtest, as one daemon's does.
func TestConformance(t *testing.T) {
	p := testPeer(t)
	shared := kmsmw.Wrap(open(t, p.config()), kmsmw.Options{Name: "pkcs11", Retry: retry.Policy{Attempts: 6, Base: 20 * time.Millisecond, Max: 500 * time.Millisecond}})
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return shared })
}

// TestOpenErrors: a wrong PIN, a missing token, a missing module and a
// file that is not a PKCS#11 library fail New with an error naming what to
// fix, and never containing the PIN. Not parallel: PKCS#11 logins are per
// process, so while another Client of the token is open a second login is
// "already logged in" whatever the PIN; here none is open.
func TestOpenErrors(t *testing.T) {
	p := testPeer(t)
	notLib := t.TempDir() + "/not-a-library.so"
	if err := os.WriteFile(notLib, []byte("not an ELF file"), 0o600); err != nil {
		t.Fatal(err)
	}
	const wrongPIN = "wrong-pin-31337"
	tests := []struct {
		name  string
		edit  func(*Config)
		wants []string
	}{
		{"wrong PIN", func(c *Config) { c.PIN = wrongPIN }, []string{"wrong PIN", "CKR_PIN_INCORRECT", envPIN, p.token}},
		{"missing token", func(c *Config) { c.TokenLabel = "no-such-token" }, []string{`no token labelled "no-such-token"`, p.token, "token_label"}},
		{"missing slot", func(c *Config) { s := uint(987654); c.TokenLabel, c.Slot = "", &s }, []string{"no token in slot 987654"}},
		{"missing module", func(c *Config) { c.Module = "/nonexistent/libpkcs11.so" }, []string{"/nonexistent/libpkcs11.so", "fix module"}},
		{"not a library", func(c *Config) { c.Module = notLib }, []string{"cannot load the PKCS#11 library", notLib}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := p.config()
			tc.edit(&cfg)
			c, err := New(t.Context(), cfg)
			if err == nil {
				c.Close()
				t.Fatal("New succeeded")
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), p.pin) || strings.Contains(err.Error(), wrongPIN) {
				t.Errorf("error %q contains the PIN", err)
			}
		})
	}
	// The right PIN still works after the failures (the token is not locked).
	c := open(t, p.config())
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("Ping after the failed opens: %v", err)
	}
}

// TestRetireOtherClient: a version retired through one Client is refused
// by another that had already used (and cached) it: the token enforces
// retirement, not the Client's memory.
func TestRetireOtherClient(t *testing.T) {
	p := testPeer(t)
	a, b := open(t, p.config()), open(t, p.config())
	ctx := t.Context()
	name := "retire-" + strings.ToLower(rekey.NewID())
	ref, err := a.CreateKey(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	dek := bytes.Repeat([]byte{7}, 32)
	w, err := b.Wrap(ctx, ref, 1, dek)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.Unwrap(ctx, ref, 1, w); err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("Unwrap before retirement: %v", err)
	}
	if _, err := a.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if err := a.RetireVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, ref, 1, w); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Errorf("Unwrap of a version another Client retired: %v, want ErrVersionDisabled", err)
	}
	if _, err := b.Wrap(ctx, ref, 1, dek); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Errorf("Wrap under a version another Client retired: %v, want ErrVersionDisabled", err)
	}
	if err := a.DestroyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	// b's cached handle is stale now: it must find out, not crash.
	if _, err := b.Unwrap(ctx, ref, 1, w); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Errorf("Unwrap of a version another Client destroyed: %v, want ErrVersionDisabled", err)
	}
	if v, err := b.CurrentVersion(ctx, ref); err != nil || v != 2 {
		t.Errorf("CurrentVersion = %d, %v; want 2", v, err)
	}
}

// TestSettingsPIN: the PIN comes from pin_env (default REKEY_PKCS11_PIN)
// or a private pin_file, and the errors never contain it.
func TestSettingsPIN(t *testing.T) {
	env := map[string]string{"REKEY_PKCS11_PIN": "1111", "HSM_PIN": "2222"}
	getenv := func(k string) string { return env[k] }
	dir := t.TempDir()
	good, loose := dir+"/pin", dir+"/loose"
	os.WriteFile(good, []byte("3333\n"), 0o600)
	os.WriteFile(loose, []byte("4444\n"), 0o644)
	os.Chmod(loose, 0o644)
	tests := []struct {
		s       Settings
		pin     string
		wantErr string
	}{
		{Settings{}, "1111", ""},
		{Settings{PINEnv: "HSM_PIN"}, "2222", ""},
		{Settings{PINEnv: "UNSET_PIN"}, "", "UNSET_PIN"},
		{Settings{PINFile: good}, "3333", ""},
		{Settings{PINFile: loose}, "", "chmod 600"},
		{Settings{PINFile: dir + "/missing"}, "", "does not exist"},
	}
	for _, tc := range tests {
		pin, err := tc.s.PIN(getenv)
		switch {
		case tc.wantErr == "" && (err != nil || pin != tc.pin):
			t.Errorf("%+v: PIN = %q, %v; want %q", tc.s, pin, err, tc.pin)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%+v: error %v, want one mentioning %q", tc.s, err, tc.wantErr)
		case err != nil && strings.Contains(err.Error(), "4444"):
			t.Errorf("error %q contains the PIN", err)
		}
	}
}

// TestSettingsValidate: each problem names its field.
func TestSettingsValidate(t *testing.T) {
	slot := uint(0)
	neg := -1.0
	tests := []struct {
		s      Settings
		fields []string
	}{
		{Settings{Module: "/m.so", TokenLabel: "t"}, nil},
		{Settings{Module: "/m.so", Slot: &slot}, nil},
		{Settings{}, []string{"module", "token_label"}},
		{Settings{Module: "/m.so", TokenLabel: "t", Slot: &slot}, []string{"slot"}},
		{Settings{Module: "/m.so", TokenLabel: "t", PINEnv: "A", PINFile: "f"}, []string{"pin_file"}},
		{Settings{Module: "/m.so", TokenLabel: "t", PINEnv: "12 34"}, []string{"pin_env"}},
		{Settings{Module: "/m.so", TokenLabel: "t", MaxSessions: 1}, []string{"max_sessions"}},
		{Settings{Module: "/m.so", TokenLabel: "t", RateLimitRPS: &neg}, []string{"rate_limit"}},
	}
	for _, tc := range tests {
		var got []string
		err := tc.s.Validate()
		for _, e := range flatten(err) {
			var se *SettingsError
			if !errors.As(e, &se) {
				t.Errorf("%+v: %v is not a *SettingsError", tc.s, e)
				continue
			}
			got = append(got, se.Field)
		}
		if strings.Join(got, ",") != strings.Join(tc.fields, ",") {
			t.Errorf("%+v: problems with %v (%v), want %v", tc.s, got, err, tc.fields)
		}
	}
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// BenchmarkRewrap measures what a rotation does per DEK on this backend:
// unwrap under version 1 and wrap under version 2, both inside the token,
// from 8 goroutines (the engine's default concurrency).
func BenchmarkRewrap(b *testing.B) {
	p := testPeer(b)
	c := open(b, p.config())
	ctx := b.Context()
	ref, err := c.CreateKey(ctx, "bench-"+strings.ToLower(rekey.NewID()))
	if err != nil {
		b.Fatal(err)
	}
	w, err := c.Wrap(ctx, ref, 1, bytes.Repeat([]byte{1}, 32))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.RotateKey(ctx, ref); err != nil {
		b.Fatal(err)
	}
	var failed atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			pt, err := c.Unwrap(ctx, ref, 1, w)
			if err == nil {
				_, err = c.Wrap(ctx, ref, 2, pt)
				clear(pt)
			}
			if err != nil {
				failed.Add(1)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rewraps/s")
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d re-wraps failed", n)
	}
}

// TestCreateWhileFinding: keys created and rotated from several goroutines
// while others look versions up and wrap, through two Clients of one
// library and without the middleware's retries, all succeed, and each key
// ends with exactly the versions made. SoftHSM2 2.6.1 answers
// CKR_GENERAL_ERROR or CKR_TEMPLATE_INCONSISTENT to C_GenerateKey, or keeps
// an empty second copy of the new object, when a C_FindObjects of another
// thread indexes the half-written object (softhsm/SoftHSMv2#573); the
// Client orders them (module.objects). Fails within a few runs without it.
func TestCreateWhileFinding(t *testing.T) {
	p := testPeer(t)
	clients := []*Client{open(t, p.config()), open(t, p.config())}
	ctx := t.Context()
	const makers, keysEach, rotations = 4, 3, 2
	seed, err := clients[0].CreateKey(ctx, "find-"+strings.ToLower(rekey.NewID()))
	if err != nil {
		t.Fatal(err)
	}
	dek := bytes.Repeat([]byte{9}, 32)
	var (
		done    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		failed  []string
		created []string
	)
	fail := func(format string, a ...any) {
		mu.Lock()
		failed = append(failed, fmt.Sprintf(format, a...))
		mu.Unlock()
	}
	for i := range 4 {
		c := clients[i%2]
		wg.Go(func() {
			for !done.Load() {
				if _, err := c.CurrentVersion(ctx, seed); err != nil {
					fail("CurrentVersion: %v", err)
				}
				if _, err := c.Wrap(ctx, seed, 1, dek); err != nil {
					fail("Wrap: %v", err)
				}
			}
		})
	}
	var makersWG sync.WaitGroup
	for i := range makers {
		c := clients[i%2]
		makersWG.Go(func() {
			for range keysEach {
				ref, err := c.CreateKey(ctx, "find-"+strings.ToLower(rekey.NewID()))
				if err != nil {
					fail("CreateKey: %v", err)
					continue
				}
				mu.Lock()
				created = append(created, ref)
				mu.Unlock()
				for r := range rotations {
					if v, err := c.RotateKey(ctx, ref); err != nil || v != r+2 {
						fail("RotateKey(%s) = %d, %v; want %d", ref, v, err, r+2)
					}
				}
				// A scratch key whose first version is retired and
				// destroyed: changes and deletions race the finds too.
				tmp, err := c.CreateKey(ctx, "find-"+strings.ToLower(rekey.NewID()))
				if err == nil {
					_, err = c.RotateKey(ctx, tmp)
				}
				if err == nil {
					err = c.RetireVersion(ctx, tmp, 1)
				}
				if err == nil {
					err = c.DestroyVersion(ctx, tmp, 1)
				}
				if err != nil {
					fail("scratch key: %v", err)
				}
			}
		})
	}
	makersWG.Wait()
	done.Store(true)
	wg.Wait()
	for _, f := range failed {
		t.Error(f)
	}
	if len(created) != makers*keysEach {
		t.Fatalf("%d keys created, want %d", len(created), makers*keysEach)
	}
	for _, ref := range created {
		vs, err := clients[0].versions(ctx, ref)
		if err != nil || !slices.Equal(vs, []int{1, 2, 3}) {
			t.Errorf("versions of %s = %v, %v; want [1 2 3] (one object each)", ref, vs, err)
		}
		for v := 1; v <= 1+rotations; v++ {
			w, err := clients[1].Wrap(ctx, ref, v, dek)
			if err != nil {
				t.Errorf("Wrap(%s v%d): %v", ref, v, err)
				continue
			}
			if got, err := clients[0].Unwrap(ctx, ref, v, w); err != nil || !bytes.Equal(got, dek) {
				t.Errorf("Unwrap(%s v%d): %v", ref, v, err)
			}
		}
	}
}

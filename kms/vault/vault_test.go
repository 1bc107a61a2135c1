package vault_test

// Tests of the vault backend against transitserver, the in-process Transit
// stand-in built on Vault's own keysutil (not a Vault server: none can be
// installed where rekey is tested).

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/vault"
	"github.com/rekeyhq/rekey/kms/vault/transitserver"
	"github.com/rekeyhq/rekey/kmstest"
	"github.com/rekeyhq/rekey/retry"
)

func startServer(t *testing.T, o transitserver.Options) *transitserver.Server {
	t.Helper()
	s, err := transitserver.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newClient(t *testing.T, cfg vault.Config) *vault.Client {
	t.Helper()
	c, err := vault.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Name: "vault", Address: s.URL, Token: s.Token()})
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return c })
}

// The suite passes through the middleware too (as setup opens it).
func TestConformanceWrapped(t *testing.T) {
	s := startServer(t, transitserver.Options{Mount: "kv/transit-rekey", Namespace: "team-a"})
	c := newClient(t, vault.Config{Name: "vault", Address: s.URL, Token: s.Token(), Mount: "kv/transit-rekey", Namespace: "team-a"})
	w := kmsmw.Wrap(c, kmsmw.Options{Name: "vault"})
	if caps := rekey.CapabilitiesOf(w); !caps.Rewrap || !caps.BatchRewrap || !caps.RetireVersion || !caps.Ping || caps.MAC {
		t.Fatalf("capabilities %+v: want rewrap, batch rewrap, retire, ping and no MAC", caps)
	}
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return w })
}

func dek(t *testing.T) []byte {
	b := make([]byte, 32)
	rand.Read(b)
	return b
}

// A batch re-wrap of n DEKs is ceil(n/MaxBatch) requests at the server.
func TestRewrapBatchIsBatched(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Address: s.URL, Token: s.Token()})
	ctx := t.Context()
	ref, err := c.CreateKey(ctx, "batched")
	if err != nil {
		t.Fatal(err)
	}
	const n = vault.MaxBatch + 500
	items := make([]rekey.RewrapItem, n)
	plain := make([][]byte, n)
	for i := range items {
		plain[i] = dek(t)
		w, err := c.Wrap(ctx, ref, 1, plain[i])
		if err != nil {
			t.Fatal(err)
		}
		items[i] = rekey.RewrapItem{Version: 1, Wrapped: w}
	}
	if _, err := c.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	before := s.Counts()
	res, err := c.RewrapBatch(ctx, ref, 2, items)
	if err != nil {
		t.Fatal(err)
	}
	after := s.Counts()
	if calls := after.Rewrap - before.Rewrap; calls != 2 || after.RewrapBatch-before.RewrapBatch != 2 {
		t.Errorf("re-wrap of %d DEKs made %d rewrap calls (%d batch), want 2 batch calls", n, calls, after.RewrapBatch-before.RewrapBatch)
	}
	if items := after.RewrapItems - before.RewrapItems; items != n {
		t.Errorf("server re-wrapped %d items, want %d", items, n)
	}
	if after.Decrypt != before.Decrypt || after.Encrypt != before.Encrypt {
		t.Errorf("the batch re-wrap decrypted or encrypted outside Vault's rewrap: %+v -> %+v", before, after)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("item %d: %v", i, r.Err)
		}
		if !bytes.HasPrefix(r.Wrapped, []byte("vault:v2:")) {
			t.Fatalf("item %d re-wrapped as %.12q, want vault:v2:", i, r.Wrapped)
		}
		if i%97 == 0 {
			pt, err := c.Unwrap(ctx, ref, 2, r.Wrapped)
			if err != nil || !bytes.Equal(pt, plain[i]) {
				t.Fatalf("item %d does not unwrap under v2 to its DEK: %v", i, err)
			}
		}
	}
}

// A batch whose every item fails (Transit answers 400 with the results)
// gives per-item errors, not a failed call.
func TestRewrapBatchAllFail(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Address: s.URL, Token: s.Token()})
	ctx := t.Context()
	ref, _ := c.CreateKey(ctx, "allfail")
	w, err := c.Wrap(ctx, ref, 1, dek(t))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := c.CreateKey(ctx, "allfail-other")
	// Well-formed v1 ciphertexts of another key: they fail at the server.
	res, err := c.RewrapBatch(ctx, other, 1, []rekey.RewrapItem{{Version: 1, Wrapped: w}, {Version: 1, Wrapped: w}})
	if err != nil {
		t.Fatalf("RewrapBatch: %v, want per-item errors", err)
	}
	for i, r := range res {
		if !errors.Is(r.Err, rekey.ErrInvalidCiphertext) {
			t.Errorf("item %d: %v, want ErrInvalidCiphertext", i, r.Err)
		}
	}
}

func TestBadToken(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	ref := "k"
	good := newClient(t, vault.Config{Address: s.URL, Token: s.Token()})
	if _, err := good.CreateKey(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	const secret = "hvs.not-the-right-token-4242"
	c := newClient(t, vault.Config{Name: "hsm-vault", Address: s.URL, Token: secret})
	_, err := c.CurrentVersion(t.Context(), ref)
	if err == nil {
		t.Fatal("CurrentVersion with a bad token succeeded")
	}
	msg := err.Error()
	for _, want := range []string{"hsm-vault", "permission denied", "key k", "token"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, secret) {
		t.Errorf("error %q contains the token", msg)
	}
	if rekey.IsTransient(err) {
		t.Errorf("a rejected token is reported transient: %v", err)
	}
	if err := c.Ping(t.Context()); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Ping with a bad token = %v, want permission denied", err)
	}
}

func TestSealed(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Name: "vault-eu", Address: s.URL, Token: s.Token()})
	ctx := t.Context()
	ref, _ := c.CreateKey(ctx, "sealme")
	w, _ := c.Wrap(ctx, ref, 1, dek(t))
	s.SetSealed(true)
	checks := map[string]error{}
	_, checks["CurrentVersion"] = c.CurrentVersion(ctx, ref)
	_, checks["Unwrap"] = c.Unwrap(ctx, ref, 1, w)
	_, checks["RewrapBatch"] = c.RewrapBatch(ctx, ref, 1, []rekey.RewrapItem{{Version: 1, Wrapped: w}})
	checks["Ping"] = c.Ping(ctx)
	for op, err := range checks {
		var u *rekey.UnreachableError
		if !errors.As(err, &u) || u.Service != "kms:vault-eu" {
			t.Errorf("%s on a sealed Vault: %v (%T), want *rekey.UnreachableError for kms:vault-eu", op, err, err)
			continue
		}
		if !strings.Contains(err.Error(), "sealed") || !strings.Contains(err.Error(), "unseal") {
			t.Errorf("%s on a sealed Vault: %q does not say it is sealed and what to do", op, err)
		}
	}
	s.SetSealed(false)
	if err := c.Ping(ctx); err != nil {
		t.Errorf("Ping after unsealing: %v", err)
	}
	if _, err := c.Unwrap(ctx, ref, 1, w); err != nil {
		t.Errorf("Unwrap after unsealing: %v", err)
	}
}

func TestThrottledAndUnreachable(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Name: "v", Address: s.URL, Token: s.Token()})
	ctx := t.Context()
	ref, _ := c.CreateKey(ctx, "thr")
	s.SetThrottled(true)
	_, err := c.CurrentVersion(ctx, ref)
	if !rekey.IsTransient(err) || !errors.Is(err, rekey.ErrThrottled) || !strings.Contains(err.Error(), "429") {
		t.Errorf("throttled: %v, want a transient error saying throttled (429)", err)
	}
	s.SetThrottled(false)

	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + ln.Addr().String()
	ln.Close()
	d := newClient(t, vault.Config{Name: "gone", Address: addr, Token: "x", Timeout: 2 * time.Second})
	_, err = d.CurrentVersion(ctx, ref)
	var u *rekey.UnreachableError
	if !errors.As(err, &u) || u.Service != "kms:gone" || !strings.Contains(err.Error(), addr) {
		t.Errorf("unreachable Vault: %v, want *rekey.UnreachableError naming kms:gone and %s", err, addr)
	}
	if err := d.Ping(ctx); !rekey.IsTransient(err) {
		t.Errorf("Ping of an unreachable Vault: %v, want transient", err)
	}
}

// Transit retires by raising a floor: a version is refused while an older
// one can still decrypt, so that retiring it cannot disable DEKs left on
// the older one.
func TestRetireOrder(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Address: s.URL, Token: s.Token()})
	ctx := t.Context()
	ref, _ := c.CreateKey(ctx, "order")
	d1 := dek(t)
	w1, _ := c.Wrap(ctx, ref, 1, d1)
	c.RotateKey(ctx, ref)
	c.RotateKey(ctx, ref) // v3 newest
	err := c.RetireVersion(ctx, ref, 2)
	if err == nil || !strings.Contains(err.Error(), "version 1") || !strings.Contains(err.Error(), "retire version 1 first") {
		t.Fatalf("RetireVersion(v2) with v1 live = %v, want a refusal naming version 1", err)
	}
	if pt, err := c.Unwrap(ctx, ref, 1, w1); err != nil || !bytes.Equal(pt, d1) {
		t.Fatalf("v1 no longer unwraps after a refused retire of v2: %v", err)
	}
	if err := c.DestroyVersion(ctx, ref, 1); err == nil || !strings.Contains(err.Error(), "not retired") {
		t.Errorf("DestroyVersion of a live version = %v, want a refusal", err)
	}
	if err := c.RetireVersion(ctx, ref, 3); !errors.Is(err, rekey.ErrInvalidArgument) || !strings.Contains(err.Error(), "newest") {
		t.Errorf("RetireVersion(newest) = %v, want a refusal matching ErrInvalidArgument (a moved key's newest version is then retired in the store only)", err)
	}
	for _, v := range []int{1, 2, 1, 2} { // oldest first, then again (idempotent)
		if err := c.RetireVersion(ctx, ref, v); err != nil {
			t.Fatalf("RetireVersion(v%d): %v", v, err)
		}
	}
	if _, minDec, _, _ := s.KeyVersions(ref); minDec != 3 {
		t.Errorf("min_decryption_version = %d, want 3", minDec)
	}
	if err := c.DestroyVersion(ctx, ref, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, minAvail, _ := s.KeyVersions(ref); minAvail != 3 {
		t.Errorf("min_available_version = %d, want 3 (v1 and v2 trimmed)", minAvail)
	}
	if err := c.DestroyVersion(ctx, ref, 1); err != nil {
		t.Errorf("DestroyVersion of an already trimmed version: %v, want nil", err)
	}
}

func TestTokenFileAndAppRole(t *testing.T) {
	s := startServer(t, transitserver.Options{RoleID: "role-1", SecretID: "secret-1", TokenTTL: time.Hour})
	dir := t.TempDir()
	tf := filepath.Join(dir, "token")
	if err := os.WriteFile(tf, []byte(s.Token()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	fc := newClient(t, vault.Config{Address: s.URL, TokenFile: tf})
	ref, err := fc.CreateKey(ctx, "filetok")
	if err != nil {
		t.Fatal(err)
	}

	sf := filepath.Join(dir, "secret-id")
	os.WriteFile(sf, []byte("secret-1"), 0o600)
	ac := newClient(t, vault.Config{Address: s.URL, AppRole: &vault.AppRole{RoleID: "role-1", SecretIDFile: sf}})
	if v, err := ac.CurrentVersion(ctx, ref); err != nil || v != 1 {
		t.Fatalf("AppRole: CurrentVersion = %d, %v", v, err)
	}
	// Every token revoked: AppRole logs in again once, by itself.
	s.RevokeTokens()
	logins := s.Counts().Login
	if v, err := ac.CurrentVersion(ctx, ref); err != nil || v != 1 {
		t.Fatalf("AppRole after the token was revoked: %d, %v", v, err)
	}
	if got := s.Counts().Login - logins; got != 1 {
		t.Errorf("%d logins after the revocation, want 1", got)
	}

	bad := newClient(t, vault.Config{Name: "ar", Address: s.URL, AppRole: &vault.AppRole{RoleID: "role-1", SecretID: "wrong-secret-77"}})
	_, err = bad.CurrentVersion(ctx, ref)
	if err == nil || !strings.Contains(err.Error(), "AppRole login") || strings.Contains(err.Error(), "wrong-secret-77") {
		t.Errorf("AppRole with a bad secret ID: %v, want a refusal that does not repeat the secret", err)
	}

	world := filepath.Join(dir, "world")
	os.WriteFile(world, []byte("x"), 0o644)
	if _, err := vault.New(ctx, vault.Config{Address: s.URL, TokenFile: world}); err == nil || !strings.Contains(err.Error(), "every user") {
		t.Errorf("world-readable token file: %v, want a refusal", err)
	}
	if _, err := vault.New(ctx, vault.Config{Address: s.URL, TokenFile: filepath.Join(dir, "missing")}); err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Errorf("missing token file: %v, want an error naming token_file", err)
	}
}

// The client refuses what Transit would read loosely: "v0" (Transit: v1),
// "v02" (v2), stray padding bits.
func TestWrappedFormat(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Address: s.URL, Token: s.Token()})
	ctx := t.Context()
	ref, _ := c.CreateKey(ctx, "fmt")
	w, _ := c.Wrap(ctx, ref, 1, dek(t))
	payload := bytes.TrimPrefix(w, []byte("vault:v1:"))
	// A 1-byte DEK: 29 bytes, base64 with one '=' and two unused bits
	// in the last character, which a lax decoder ignores.
	short, err := c.Wrap(ctx, ref, 1, []byte{7})
	if err != nil {
		t.Fatal(err)
	}
	stray := bytes.Clone(short)
	stray[len(stray)-2] ^= 1
	for name, b := range map[string][]byte{
		"v0":         append([]byte("vault:v0:"), payload...),
		"v01":        append([]byte("vault:v01:"), payload...),
		"v+1":        append([]byte("vault:v+1:"), payload...),
		"no payload": []byte("vault:v1:"),
		"extra =":    append(append([]byte("vault:v1:"), payload...), '='),
		"stray bits": stray,
	} {
		_, err := c.Unwrap(ctx, ref, 1, b)
		if !errors.Is(err, rekey.ErrInvalidCiphertext) && !errors.Is(err, rekey.ErrWrongVersion) {
			t.Errorf("%s: Unwrap = %v, want ErrInvalidCiphertext", name, err)
		}
	}
	if _, err := c.CreateKey(ctx, "../sys/seal"); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("CreateKey with a path in the name = %v, want ErrInvalidArgument", err)
	}
	if _, err := c.CurrentVersion(ctx, "../sys/seal"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("CurrentVersion of a path = %v, want ErrKeyNotFound", err)
	}
}

// The middleware retries a sealed Vault's transient error and succeeds
// once it is unsealed.
func TestMiddlewareRetriesSealed(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Name: "v", Address: s.URL, Token: s.Token()})
	w := kmsmw.Wrap(c, kmsmw.Options{Name: "v", Retry: retry.Policy{Attempts: 50, Base: 5 * time.Millisecond, Max: 20 * time.Millisecond}})
	ctx := t.Context()
	ref, _ := w.CreateKey(ctx, "retry")
	s.SetSealed(true)
	go func() {
		time.Sleep(50 * time.Millisecond)
		s.SetSealed(false)
	}()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if v, err := w.CurrentVersion(ctx, ref); err != nil || v != 1 {
		t.Fatalf("CurrentVersion across an unseal: %d, %v", v, err)
	}
	if s.Counts().Sealed == 0 {
		t.Error("the server never answered sealed: the test did not test the retry")
	}
}

func ExampleNew() {
	s, _ := transitserver.Start(transitserver.Options{})
	defer s.Close()
	c, _ := vault.New(context.Background(), vault.Config{Name: "vault", Address: s.URL, Token: s.Token()})
	ref, _ := c.CreateKey(context.Background(), "payments")
	w, _ := c.Wrap(context.Background(), ref, 1, []byte("a 32-byte data encryption key..."))
	fmt.Println(string(w[:9]))
	// Output: vault:v1:
}

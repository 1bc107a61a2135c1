package keyprotect_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/keyprotect"
	"github.com/rekeyhq/rekey/kms/keyprotect/kpserver"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kmstest"
)

const (
	instance = "5a1c8c4e-6f2b-4d0e-9a51-3d2f0c7e9b11"
	apiKey   = "kp-test-API-KEY-do-not-print-0123456789"
)

// env is one in-process Key Protect stand-in (kpserver, NOT the real
// service) and a way to make clients on it.
type env struct {
	srv *kpserver.Server
	url string
}

func newEnv(t *testing.T, opts kpserver.Options) *env {
	t.Helper()
	if opts.InstanceID == "" {
		opts.InstanceID = instance
	}
	if opts.APIKeys == nil {
		opts.APIKeys = []string{apiKey}
	}
	srv := kpserver.New(opts)
	url := srv.Start()
	t.Cleanup(srv.Close)
	return &env{srv: srv, url: url}
}

func (e *env) client(t *testing.T, mod ...func(*keyprotect.Config)) *keyprotect.Client {
	t.Helper()
	cfg := keyprotect.Config{Name: "kp", Endpoint: e.url, IAMEndpoint: e.url, InstanceID: instance, APIKey: apiKey, KeySource: "$IBMCLOUD_API_KEY"}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := keyprotect.New(cfg)
	if err != nil {
		t.Fatalf("keyprotect.New: %v", err)
	}
	return c
}

// kpOptions: Key Protect wraps only under a key's newest version; the suite
// holds it to refusing the others (TestWrapOlderVersionRefused and
// TestConcurrentWrapsAndRotations test the same more closely).
var kpOptions = kmstest.Options{NewestVersionWrapsOnly: true}

func TestConformance(t *testing.T) {
	e := newEnv(t, kpserver.Options{})
	shared := e.client(t)
	kmstest.RunWith(t, func(t *testing.T) rekey.KMS { return shared }, kpOptions)
}

// The conformance suite wrapped in the middleware every backend gets, as
// setup opens it: capabilities pass through (Rewrap, Ping and FindKey, no
// RetireVersion).
func TestConformanceThroughMiddleware(t *testing.T) {
	e := newEnv(t, kpserver.Options{})
	k := kmsmw.Wrap(e.client(t), kmsmw.Options{Name: "kp"})
	caps := rekey.CapabilitiesOf(k)
	if !caps.Rewrap || !caps.Ping || !caps.FindKey || caps.RetireVersion || caps.BatchRewrap || caps.MAC {
		t.Fatalf("capabilities through kmsmw = %+v, want Rewrap, Ping and FindKey only", caps)
	}
	kmstest.RunWith(t, func(t *testing.T) rekey.KMS { return k }, kpOptions)
}

func newKey(t *testing.T, c *keyprotect.Client) string {
	t.Helper()
	ref, err := c.CreateKey(t.Context(), "k-"+strings.ToLower(rekey.NewID()))
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return ref
}

func TestWrapOlderVersionRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kpserver.Options{})
	c := e.client(t)
	ctx := t.Context()
	ref := newKey(t, c)
	dek := bytes.Repeat([]byte{7}, 32)
	w1, err := c.Wrap(ctx, ref, 1, dek)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.RotateKey(ctx, ref); err != nil || v != 2 {
		t.Fatalf("RotateKey = %d, %v; want 2", v, err)
	}
	_, err = c.Wrap(ctx, ref, 1, dek)
	if !errors.Is(err, rekey.ErrVersionDisabled) || !strings.Contains(err.Error(), "newest version (v2)") {
		t.Fatalf("Wrap under v1 of a key at v2: %v; want ErrVersionDisabled naming the newest version", err)
	}
	// What v1 wrapped still unwraps under v1, and only v1.
	pt, err := c.Unwrap(ctx, ref, 1, w1)
	if err != nil || !bytes.Equal(pt, dek) {
		t.Fatalf("Unwrap(v1) = %v; want the DEK", err)
	}
	if _, err := c.Unwrap(ctx, ref, 2, w1); !errors.Is(err, rekey.ErrWrongVersion) {
		t.Fatalf("Unwrap of a v1 wrap asking v2: %v; want ErrWrongVersion", err)
	}
	// A client whose cache is stale (another process rotated) finds out
	// from the reply's keyVersion rather than mislabelling the wrap.
	other := e.client(t)
	if v, err := other.CurrentVersion(ctx, ref); err != nil || v != 2 {
		t.Fatalf("CurrentVersion = %d, %v", v, err)
	}
	if _, err := c.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	_, err = other.Wrap(ctx, ref, 2, dek)
	if !errors.Is(err, rekey.ErrVersionDisabled) || !strings.Contains(err.Error(), "(v3)") {
		t.Fatalf("Wrap under v2 by a client that still thinks v2 is newest: %v; want ErrVersionDisabled naming v3", err)
	}
	if _, err := other.Wrap(ctx, ref, 3, dek); err != nil {
		t.Fatalf("Wrap under v3 after the refusal: %v", err)
	}
}

// Rotations and wraps at once: every rotation gets its own number, a wrap
// either succeeds under the version it asked for or is refused with
// ErrVersionDisabled, and every successful wrap unwraps under its version.
func TestConcurrentWrapsAndRotations(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kpserver.Options{})
	c := e.client(t)
	ctx := t.Context()
	ref := newKey(t, c)
	type wrapped struct {
		v       int
		w, want []byte
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		versions []int
		ok       []wrapped
		refused  atomic.Int64
	)
	for range 2 {
		wg.Go(func() {
			for range 3 {
				v, err := c.RotateKey(ctx, ref)
				if err != nil {
					t.Errorf("RotateKey: %v", err)
					return
				}
				mu.Lock()
				versions = append(versions, v)
				mu.Unlock()
			}
		})
	}
	for i := range 4 {
		wg.Go(func() {
			for j := range 15 {
				v, err := c.CurrentVersion(ctx, ref)
				if err != nil {
					t.Errorf("CurrentVersion: %v", err)
					return
				}
				dek := []byte(fmt.Sprintf("dek-%d-%d-padding-to-32-bytes!!", i, j))
				w, err := c.Wrap(ctx, ref, v, dek)
				switch {
				case errors.Is(err, rekey.ErrVersionDisabled):
					refused.Add(1)
				case err != nil:
					t.Errorf("Wrap(v%d): %v", v, err)
					return
				default:
					mu.Lock()
					ok = append(ok, wrapped{v, w, dek})
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	slices.Sort(versions)
	if !slices.Equal(versions, []int{2, 3, 4, 5, 6, 7}) {
		t.Fatalf("concurrent rotations returned %v, want 2..7 once each", versions)
	}
	if len(ok) == 0 {
		t.Fatal("no wrap succeeded")
	}
	for _, x := range ok {
		pt, err := c.Unwrap(ctx, ref, x.v, x.w)
		if err != nil || !bytes.Equal(pt, x.want) {
			t.Fatalf("Unwrap(v%d) of a concurrent wrap: %v", x.v, err)
		}
	}
	t.Logf("%d wraps succeeded, %d refused as stale", len(ok), refused.Load())
}

func TestCreateKeyAliasAndExisting(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kpserver.Options{})
	c := e.client(t)
	ctx := t.Context()
	ref, err := c.CreateKey(ctx, "pay.ments_2")
	if err != nil {
		t.Fatal(err)
	}
	if got := keyprotect.AliasFor("pay.ments_2"); got != "rekey-pay_dments__2" {
		t.Fatalf("AliasFor = %q", got)
	}
	if e.srv.Versions("rekey-pay_dments__2") != 1 || e.srv.Versions(ref) != 1 {
		t.Fatal("the key is not reachable by its alias and id on the server")
	}
	// Another process (another client) sees the name taken.
	_, err = e.client(t).CreateKey(ctx, "pay.ments_2")
	if !errors.Is(err, rekey.ErrKeyExists) || !strings.Contains(err.Error(), ref) {
		t.Fatalf("second CreateKey: %v; want ErrKeyExists naming %s", err, ref)
	}
	// Distinct names, distinct aliases.
	if keyprotect.AliasFor("a.b") == keyprotect.AliasFor("a_b") || keyprotect.AliasFor("a_d") == keyprotect.AliasFor("a.") {
		t.Fatal("two names share an alias")
	}
	if _, err := c.CreateKey(ctx, "Bad Name"); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Fatalf("CreateKey(bad name): %v", err)
	}
}

// clock is a hand-moved clock shared by the server and the client.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestTokenRefresh(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e := newEnv(t, kpserver.Options{TokenTTL: 10 * time.Second, Now: clk.Now})
	c := e.client(t, func(cfg *keyprotect.Config) { cfg.Now = clk.Now })
	ctx := t.Context()
	ref := newKey(t, c)
	tokens := func() int64 { return e.srv.Count("token") }
	if tokens() != 1 {
		t.Fatalf("%d token requests after the first calls, want 1 (cached)", tokens())
	}
	for range 5 {
		if _, err := c.CurrentVersion(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	if tokens() != 1 {
		t.Fatalf("%d token requests, want 1: the token is cached", tokens())
	}
	clk.Add(7 * time.Second) // 70% of its life: still used
	if _, err := c.CurrentVersion(ctx, ref); err != nil || tokens() != 1 {
		t.Fatalf("at 70%%: %v, %d token requests; want the cached token", err, tokens())
	}
	clk.Add(2 * time.Second) // 90%: refreshed before it expires
	if _, err := c.CurrentVersion(ctx, ref); err != nil || tokens() != 2 {
		t.Fatalf("at 90%%: %v, %d token requests; want a refresh (2)", err, tokens())
	}
	// A token the service no longer accepts (revoked, clock skew): one
	// refresh, and the call succeeds.
	e.srv.ExpireTokens()
	before := e.srv.Count("versions")
	if _, err := c.CurrentVersion(ctx, ref); err != nil {
		t.Fatalf("after the server forgot the token: %v", err)
	}
	if tokens() != 3 || e.srv.Count("versions")-before != 2 {
		t.Fatalf("token requests %d (want 3), versions requests +%d (want 2: refused, then retried)", tokens(), e.srv.Count("versions")-before)
	}
}

func TestRefusedCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kpserver.Options{})
	c := e.client(t)
	ctx := t.Context()
	ref := newKey(t, c)

	e.srv.Refuse(true)
	e.srv.ExpireTokens()
	_, err := c.CurrentVersion(ctx, ref)
	var ae *keyprotect.AuthError
	if !errors.As(err, &ae) || !errors.Is(err, keyprotect.ErrAuth) || rekey.IsTransient(err) {
		t.Fatalf("refused API key: %v (%T); want a non-transient *AuthError", err, err)
	}
	for _, want := range []string{"keyprotect backend kp", "IAM refused", "BXNIM0415E", "$IBMCLOUD_API_KEY"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := c.Ping(ctx); !errors.Is(err, keyprotect.ErrAuth) {
		t.Fatalf("Ping with refused credentials: %v", err)
	}

	// A token IAM issued that Key Protect refuses (no access policy): 401
	// twice (one refresh), then a clear error.
	e.srv.Refuse(false)
	other := kpserver.New(kpserver.Options{InstanceID: "another-instance", APIKeys: []string{apiKey}})
	url := other.Start()
	defer other.Close()
	c2 := e.client(t, func(cfg *keyprotect.Config) { cfg.Endpoint = url })
	_, err = c2.CurrentVersion(ctx, ref)
	if !errors.As(err, &ae) || ae.Service != "Key Protect" || ae.Status != http.StatusUnauthorized {
		t.Fatalf("Key Protect refusing IAM's token: %v; want an AuthError from Key Protect, 401", err)
	}
	if n := other.Count("versions"); n != 2 {
		t.Fatalf("%d versions requests, want 2 (one refresh after 401)", n)
	}
}

func TestTransientAndMappedErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kpserver.Options{})
	c := e.client(t)
	ctx := t.Context()
	ref := newKey(t, c)
	w, err := c.Wrap(ctx, ref, 1, []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}

	e.srv.Throttle(1)
	_, err = c.Unwrap(ctx, ref, 1, w)
	if !rekey.IsTransient(err) || !errors.Is(err, keyprotect.ErrThrottled) || !errors.Is(err, rekey.ErrThrottled) {
		t.Fatalf("429: %v; want a transient error matching ErrThrottled", err)
	}
	e.srv.Down(true)
	_, err = c.CurrentVersion(ctx, ref)
	if !rekey.IsTransient(err) || errors.Is(err, keyprotect.ErrThrottled) || errors.Is(err, rekey.ErrThrottled) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("503: %v; want transient, not throttling", err)
	}
	if err := c.Ping(ctx); !rekey.IsTransient(err) {
		t.Fatalf("Ping while down: %v; want transient", err)
	}
	e.srv.Down(false)
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}

	// Through the middleware a throttled call is retried and succeeds.
	mw := kmsmw.Wrap(c, kmsmw.Options{Name: "kp"})
	e.srv.Throttle(1)
	if _, err := mw.Unwrap(ctx, ref, 1, w); err != nil {
		t.Fatalf("Unwrap through kmsmw after one 429: %v", err)
	}

	_, err = c.CurrentVersion(ctx, "11111111-2222-4333-8444-555555555555")
	if !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
	bad := slices.Clone(w)
	bad[len(bad)-1] ^= 1
	if _, err := c.Unwrap(ctx, ref, 1, bad); !errors.Is(err, rekey.ErrInvalidCiphertext) {
		t.Fatalf("corrupt ciphertext: %v", err)
	}
	if _, err := c.Rewrap(ctx, ref, 1, w, 1); err != nil {
		t.Fatalf("Rewrap v1→v1 (the newest): %v", err)
	}
}

// The API key never shows in an error, a log line or a printed Client,
// whatever fails.
func TestAPIKeyNeverShown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kpserver.Options{})
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := e.client(t, func(cfg *keyprotect.Config) { cfg.Logger = logger })
	ctx := t.Context()
	ref := newKey(t, c)
	w, _ := c.Wrap(ctx, ref, 1, []byte("0123456789abcdef0123456789abcdef"))

	var errs []error
	note := func(err error) {
		if err == nil {
			t.Error("a provoked failure succeeded")
		}
		errs = append(errs, err)
	}
	_, err := c.Unwrap(ctx, ref, 1, []byte("garbage"))
	note(err)
	_, err = c.CurrentVersion(ctx, "no-such-key")
	note(err)
	e.srv.Throttle(1)
	_, err = c.CurrentVersion(ctx, ref)
	note(err)
	e.srv.Down(true)
	note(c.Ping(ctx))
	e.srv.Down(false)
	e.srv.ExpireTokens()
	e.srv.Refuse(true)
	_, err = c.Unwrap(ctx, ref, 1, w)
	note(err)
	e.srv.Refuse(false)
	// A wrong key: IAM's answer is quoted in the error.
	wrong := e.client(t, func(cfg *keyprotect.Config) { cfg.APIKey = apiKey + "-wrong"; cfg.Logger = logger })
	_, err = wrong.CurrentVersion(ctx, ref)
	note(err)
	// Nothing listening.
	gone := e.client(t, func(cfg *keyprotect.Config) { cfg.IAMEndpoint = "http://127.0.0.1:1"; cfg.Logger = logger })
	_, err = gone.CurrentVersion(ctx, ref)
	note(err)
	if !strings.Contains(err.Error(), "IAM token request") {
		t.Errorf("unreachable IAM: %v", err)
	}
	// Through the middleware too (it logs transient failures at debug).
	mw := kmsmw.Wrap(c, kmsmw.Options{Name: "kp", Logger: logger})
	e.srv.Throttle(2)
	_, err = mw.CurrentVersion(ctx, ref)
	if err != nil {
		t.Fatalf("after two 429s through kmsmw: %v", err)
	}

	var all strings.Builder
	for _, err := range errs {
		fmt.Fprintf(&all, "%v\n%+v\n%#v\n", err, err, err)
	}
	fmt.Fprintf(&all, "%v %+v %#v", c, c, c)
	all.Write(logs.Bytes())
	for _, secret := range []string{apiKey, "kpserver."} { // the key, and any bearer token
		if strings.Contains(all.String(), secret) {
			t.Fatalf("%q appears in an error, a log line or a printed client:\n%s", secret, all.String())
		}
	}
	if logs.Len() == 0 {
		t.Fatal("nothing was logged: the test checks nothing about logs")
	}
}

func TestNewRefusesMissingFields(t *testing.T) {
	t.Parallel()
	for _, cfg := range []keyprotect.Config{
		{InstanceID: "i", APIKey: "k"},
		{Endpoint: "http://x", APIKey: "k"},
		{Endpoint: "http://x", InstanceID: "i", APIKey: "  "},
	} {
		if _, err := keyprotect.New(cfg); !errors.Is(err, rekey.ErrInvalidArgument) {
			t.Errorf("New(%+v): %v; want ErrInvalidArgument", cfg, err)
		}
	}
	_ = context.Background
}

package rekeysecrets

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/driver"
	"gocloud.dev/secrets/drivertest"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// noEnv is an empty environment: REKEY_* variables of the machine running
// the tests must not reach setup.Open.
func noEnv(string) string { return "" }

// newHome makes the embedded default in a temporary directory with the
// root keys names (on the local backend) and returns the directory and the
// open System, closed at the end of the test.
func newHome(t *testing.T, names ...string) (string, *setup.System) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	sys, err := setup.Open(ctx, setup.Options{Home: dir, Getenv: noEnv})
	if err != nil {
		t.Fatalf("setup.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := sys.Close(); err != nil {
			t.Errorf("close system: %v", err)
		}
	})
	for _, n := range names {
		if _, err := sys.Keyring.CreateKey(ctx, n, "local", rekey.DefaultPolicy()); err != nil {
			t.Fatalf("create key %s: %v", n, err)
		}
	}
	return dir, sys
}

// harness is the drivertest harness: a real embedded default with two root
// keys, one keeper on each.
type harness struct {
	sys *setup.System
}

func newHarness(ctx context.Context, t *testing.T) (drivertest.Harness, error) {
	sys, err := setup.Open(ctx, setup.Options{Home: t.TempDir(), Getenv: noEnv})
	if err != nil {
		return nil, err
	}
	for _, n := range []string{"alpha", "beta"} {
		if _, err := sys.Keyring.CreateKey(ctx, n, "local", rekey.DefaultPolicy()); err != nil {
			return nil, errors.Join(err, sys.Close())
		}
	}
	return &harness{sys: sys}, nil
}

func (h *harness) MakeDriver(ctx context.Context) (driver.Keeper, driver.Keeper, error) {
	return &keeper{aead: h.sys.Keyring.AEAD("alpha")}, &keeper{aead: h.sys.Keyring.AEAD("beta")}, nil
}

func (h *harness) Close() { _ = h.sys.Close() }

// malformedAs checks what drivertest's malformed ciphertext gives: an
// InvalidArgument code, rekey's sentinel in the chain, and no unrelated
// error type through ErrorAs.
type malformedAs struct{}

func (malformedAs) Name() string {
	return "malformed ciphertext is InvalidArgument and ErrInvalidCiphertext"
}

func (malformedAs) ErrorCheck(k *secrets.Keeper, err error) error {
	if got := gcerrors.Code(err); got != gcerrors.InvalidArgument {
		return fmt.Errorf("gcerrors.Code = %v, want InvalidArgument (err: %v)", got, err)
	}
	if !errors.Is(err, rekey.ErrInvalidCiphertext) {
		return fmt.Errorf("errors.Is(%v, rekey.ErrInvalidCiphertext) = false", err)
	}
	var u *rekey.UnreachableError
	if k.ErrorAs(err, &u) {
		return fmt.Errorf("ErrorAs(*rekey.UnreachableError) = true for %v", err)
	}
	return nil
}

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, newHarness, []drivertest.AsTest{malformedAs{}})
}

func TestDecryptOtherKeysCiphertext(t *testing.T) {
	ctx := context.Background()
	_, sys := newHome(t, "alpha", "beta")
	a := OpenKeeper(sys.Keyring, "alpha")
	b := OpenKeeper(sys.Keyring, "beta")
	defer a.Close()
	defer b.Close()

	ct, err := a.Encrypt(ctx, []byte("for alpha only"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := b.Decrypt(ctx, ct)
	if err == nil {
		t.Fatalf("beta's keeper decrypted alpha's ciphertext to %q", pt)
	}
	if got := gcerrors.Code(err); got != gcerrors.InvalidArgument {
		t.Errorf("gcerrors.Code = %v, want InvalidArgument (err: %v)", got, err)
	}
	if !errors.Is(err, rekey.ErrWrongKey) {
		t.Errorf("errors.Is(%v, rekey.ErrWrongKey) = false", err)
	}
	var de *rekey.DEKError
	if !b.ErrorAs(err, &de) || de.ID == "" {
		t.Errorf("ErrorAs(*rekey.DEKError) = false or no id, err: %v", err)
	}
	if pt, err := a.Decrypt(ctx, ct); err != nil || string(pt) != "for alpha only" {
		t.Errorf("alpha's keeper: Decrypt = %q, %v", pt, err)
	}
}

func TestOpenKeeperUnknownKeyAndClose(t *testing.T) {
	ctx := context.Background()
	_, sys := newHome(t, "alpha")
	k := OpenKeeper(sys.Keyring, "nosuch")
	_, err := k.Encrypt(ctx, []byte("x"))
	if got := gcerrors.Code(err); got != gcerrors.NotFound || !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("Encrypt under an unknown key: code %v, err %v; want NotFound, ErrKeyNotFound", got, err)
	}
	if err := k.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The keeper does not own the Keyring: it still works.
	if _, err := sys.Keyring.AEAD("alpha").Encrypt(ctx, []byte("x"), nil); err != nil {
		t.Errorf("Keyring after the keeper's Close: %v", err)
	}
}

func TestErrorCode(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error { return fmt.Errorf("key payments: %w", err) }
	for _, tc := range []struct {
		err  error
		want gcerrors.ErrorCode
	}{
		{nil, gcerrors.OK},
		{wrap(rekey.ErrKeyNotFound), gcerrors.NotFound},
		{&rekey.DEKError{ID: "d", Op: "open", Err: rekey.ErrDEKNotFound}, gcerrors.NotFound},
		{wrap(rekey.ErrVersionNotFound), gcerrors.NotFound},
		{wrap(rekey.ErrInvalidCiphertext), gcerrors.InvalidArgument},
		{&rekey.DEKError{ID: "d", Op: "open", Err: wrap(rekey.ErrWrongKey)}, gcerrors.InvalidArgument},
		{wrap(rekey.ErrWrongVersion), gcerrors.InvalidArgument},
		{rekey.Invalidf("bad %s", "input"), gcerrors.InvalidArgument},
		{wrap(rekey.ErrVersionDisabled), gcerrors.FailedPrecondition},
		{wrap(rekey.ErrVersionNotActive), gcerrors.FailedPrecondition},
		{wrap(rekey.ErrUsageLimit), gcerrors.ResourceExhausted},
		{wrap(rekey.ErrUnsupported), gcerrors.Unimplemented},
		{wrap(context.Canceled), gcerrors.Canceled},
		{&rekey.UnreachableError{Service: "kms:local", Err: context.DeadlineExceeded}, gcerrors.DeadlineExceeded},
		{&rekey.UnreachableError{Service: "kms:aws", Err: errors.New("connection refused")}, gcerrors.Unknown},
		{errors.New("something else"), gcerrors.Unknown},
	} {
		if got := errorCode(tc.err); got != tc.want {
			t.Errorf("errorCode(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestParseURL(t *testing.T) {
	t.Parallel()
	abs, err := filepath.Abs("rel/dir")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		url     string
		key     string
		loc     location
		wantErr string // substring; empty means success
	}{
		{url: "rekey://payments?home=/srv/rekey", key: "payments", loc: location{home: "/srv/rekey"}},
		{url: "rekey://payments?home=/srv/rekey/./", key: "payments", loc: location{home: "/srv/rekey"}},
		{url: "rekey://payments?home=rel/dir", key: "payments", loc: location{home: abs}},
		{url: "rekey://payments?config=/etc/rekey.yaml", key: "payments", loc: location{configPath: "/etc/rekey.yaml"}},
		{url: "rekey://payments", key: "payments"},
		{url: "rekey://payments/", key: "payments"},
		{url: "rekey://payments?home=/a&colour=red&bogus=1", wantErr: `["bogus" "colour"]`},
		{url: "rekey://payments?home=/a&config=/b", wantErr: "not both"},
		{url: "rekey://payments?home=/a&home=/b", wantErr: "given 2 times"},
		{url: "rekey://payments?home=", wantErr: `"home" is empty`},
		{url: "rekey://?home=/a", wantErr: "no key name"},
		{url: "rekey://Pay_ments?home=/a", wantErr: `key name "Pay_ments"`},
		{url: "rekey://payments/sub?home=/a", wantErr: `path "/sub"`},
		{url: "rekey://payments:8080?home=/a", wantErr: "port"},
		{url: "rekey://user@payments?home=/a", wantErr: "user information"},
		{url: "rekey:payments", wantErr: "want rekey://KEYNAME"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Errorf("url.Parse(%q): %v", tc.url, err)
			continue
		}
		key, loc, err := parseURL(u)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("parseURL(%q): %v", tc.url, err)
		case tc.wantErr == "" && (key != tc.key || loc != tc.loc):
			t.Errorf("parseURL(%q) = %q, %+v; want %q, %+v", tc.url, key, loc, tc.key, tc.loc)
		case tc.wantErr != "" && err == nil:
			t.Errorf("parseURL(%q) = %q, %+v; want an error containing %q", tc.url, key, loc, tc.wantErr)
		case tc.wantErr != "" && (!strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, rekey.ErrInvalidArgument)):
			t.Errorf("parseURL(%q) error %q: want it to contain %q and match ErrInvalidArgument", tc.url, err, tc.wantErr)
		}
	}
}

// openURL opens a keeper with o, failing the test on error.
func openURL(t *testing.T, o *URLOpener, raw string) *secrets.Keeper {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	k, err := o.OpenKeeperURL(context.Background(), u)
	if err != nil {
		t.Fatalf("OpenKeeperURL(%s): %v", raw, err)
	}
	return k
}

// refs returns how many keepers hold a System of o, by location.
func refs(o *URLOpener) map[location]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := make(map[location]int)
	for loc, s := range o.systems {
		m[loc] = s.refs
	}
	return m
}

func TestURLOpenerSharesAndClosesSystem(t *testing.T) {
	ctx := context.Background()
	dir, home := newHome(t, "alpha", "beta")
	if err := home.Close(); err != nil { // the opener opens its own
		t.Fatal(err)
	}
	o := &URLOpener{Options: setup.Options{Getenv: noEnv}}
	q := "?home=" + url.QueryEscape(dir)
	k1 := openURL(t, o, "rekey://alpha"+q)
	k2 := openURL(t, o, "rekey://beta?home="+url.QueryEscape(dir+"/."))
	if got := refs(o); len(got) != 1 || got[location{home: dir}] != 2 {
		t.Fatalf("after two opens of one home: systems %v, want one with 2 keepers", got)
	}
	o.mu.Lock()
	st := o.systems[location{home: dir}].sys.Store
	o.mu.Unlock()

	ct, err := k1.Encrypt(ctx, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := k1.Close(); err != nil {
		t.Fatalf("close k1: %v", err)
	}
	// A second Close of one keeper must not release the System again.
	if err := k1.Close(); err == nil {
		t.Error("second Close of k1: want go-cloud's closed error")
	}
	if got := refs(o); got[location{home: dir}] != 1 {
		t.Fatalf("after closing k1 (twice): systems %v, want 1 keeper left", got)
	}
	if _, err := k2.Encrypt(ctx, []byte("still open")); err != nil {
		t.Fatalf("k2 after k1's Close: %v", err)
	}
	if err := k2.Close(); err != nil {
		t.Fatalf("close k2: %v", err)
	}
	if got := refs(o); len(got) != 0 {
		t.Fatalf("after the last Close: systems %v, want none", got)
	}
	// A closed store fails (perhaps only once its retries give up: the
	// deadline keeps the test short).
	closedCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := st.GetKey(closedCtx, "alpha"); err == nil {
		t.Error("the System's store still answers after the last keeper closed")
	}

	// Opening again opens a new System, which reads what the first wrote.
	k3 := openURL(t, o, "rekey://alpha"+q)
	defer k3.Close()
	if pt, err := k3.Decrypt(ctx, ct); err != nil || string(pt) != "hello" {
		t.Errorf("Decrypt after reopening = %q, %v", pt, err)
	}
}

func TestURLOpenerErrors(t *testing.T) {
	ctx := context.Background()
	dir, home := newHome(t, "alpha")
	if err := home.Close(); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "nothing-here")
	o := &URLOpener{Options: setup.Options{Getenv: noEnv}}
	for _, tc := range []struct {
		url      string
		contains []string
		is       error
	}{
		{"rekey://nosuch?home=" + url.QueryEscape(dir), []string{"nosuch", "key not found"}, rekey.ErrKeyNotFound},
		{"rekey://alpha?home=" + url.QueryEscape(dir) + "&region=eu", []string{`"region"`}, rekey.ErrInvalidArgument},
		{"rekey://alpha?home=" + url.QueryEscape(missing), []string{"rekey init"}, os.ErrNotExist},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		k, err := o.OpenKeeperURL(ctx, u)
		if err == nil {
			k.Close()
			t.Errorf("OpenKeeperURL(%s): no error", tc.url)
			continue
		}
		for _, s := range tc.contains {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("OpenKeeperURL(%s) = %q, want it to contain %q", tc.url, err, s)
			}
		}
		if !errors.Is(err, tc.is) {
			t.Errorf("OpenKeeperURL(%s) = %v, want it to match %v", tc.url, err, tc.is)
		}
		if got := refs(o); len(got) != 0 {
			t.Errorf("after a failed open of %s: systems %v still open", tc.url, got)
		}
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the opener created the missing home %s (stat: %v)", missing, err)
	}
}

func TestURLOpenerConcurrent(t *testing.T) {
	ctx := context.Background()
	dir, home := newHome(t, "alpha")
	if err := home.Close(); err != nil {
		t.Fatal(err)
	}
	o := &URLOpener{Options: setup.Options{Getenv: noEnv}}
	u, err := url.Parse("rekey://alpha?home=" + url.QueryEscape(dir))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			k, err := o.OpenKeeperURL(ctx, u)
			if err != nil {
				errs <- err
				return
			}
			msg := fmt.Sprintf("message %d", i)
			ct, err := k.Encrypt(ctx, []byte(msg))
			if err == nil {
				var pt []byte
				if pt, err = k.Decrypt(ctx, ct); err == nil && string(pt) != msg {
					err = fmt.Errorf("decrypted %q, want %q", pt, msg)
				}
			}
			errs <- errors.Join(err, k.Close())
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := refs(o); len(got) != 0 {
		t.Errorf("after every keeper closed: systems %v still open", got)
	}
}

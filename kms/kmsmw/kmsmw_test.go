package kmsmw_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/kmstest"
	"github.com/rekeyhq/rekey/retry"
)

// fast is a retry policy with tiny sleeps.
var fast = retry.Policy{Attempts: 4, Base: time.Microsecond, Max: 10 * time.Microsecond}

func TestConformance(t *testing.T) {
	t.Run("memkms", func(t *testing.T) {
		kmstest.Run(t, func(t *testing.T) rekey.KMS {
			return kmsmw.Wrap(memkms.New(), kmsmw.Options{Name: "mem", Retry: fast, Observer: &recorder{}})
		})
	})
	t.Run("localkms", func(t *testing.T) {
		kmstest.Run(t, func(t *testing.T) rekey.KMS {
			dir := t.TempDir()
			master := filepath.Join(dir, "master.key")
			if err := localkms.CreateMasterKeyFile(master); err != nil {
				t.Fatal(err)
			}
			c, err := localkms.New(t.Context(), localkms.Config{Keyring: filepath.Join(dir, "keyring"), MasterKeyFile: master, Create: true})
			if err != nil {
				t.Fatalf("localkms.New: %v", err)
			}
			k := kmsmw.Wrap(c, kmsmw.Options{Name: "local", Retry: fast, RateLimit: 10000, Burst: 100})
			t.Cleanup(func() { k.Close() })
			return k
		})
	})
}

// call is one Observer.KMSCall.
type call struct{ backend, op, result string }

// recorder is an Observer that keeps every call.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) KMSCall(backend, op, result string, d time.Duration) {
	if d < 0 {
		panic("negative duration")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{backend, op, result})
}

func (r *recorder) get() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// fixture is a memkms with fault injection that counts the calls the
// backend received per op, wrapped with a recorder.
type fixture struct {
	mem   *memkms.KMS
	k     *kmsmw.KMS
	obs   *recorder
	mu    sync.Mutex
	count map[string]int // backend calls per memkms op
	fail  map[string]func(n int) error
	ref   string
}

// setup wraps a memkms holding one key (created before faults apply).
// fail maps a memkms op to a function of the op's call number (1, 2, …)
// that returns the fault of that call.
func setup(t *testing.T, o kmsmw.Options, fail map[string]func(n int) error) *fixture {
	t.Helper()
	f := &fixture{mem: memkms.New(), obs: &recorder{}, count: map[string]int{}, fail: fail}
	ref, err := f.mem.CreateKey(t.Context(), "k1")
	if err != nil {
		t.Fatal(err)
	}
	f.ref = ref
	f.mem.Fail = func(op, ref string) error {
		f.mu.Lock()
		f.count[op]++
		n := f.count[op]
		f.mu.Unlock()
		if fn := f.fail[op]; fn != nil {
			return fn(n)
		}
		return nil
	}
	if o.Name == "" {
		o.Name = "test"
	}
	if o.Observer == nil {
		o.Observer = f.obs
	}
	f.k = kmsmw.Wrap(f.mem, o)
	return f
}

func (f *fixture) calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count[op]
}

var errDown = &rekey.UnreachableError{Service: "kms:fake", Err: errors.New("connection reset by peer")}

// failFirst fails the first n calls with err.
func failFirst(n int, err error) func(int) error {
	return func(i int) error {
		if i <= n {
			return err
		}
		return nil
	}
}

func always(err error) func(int) error { return func(int) error { return err } }

// Ping is a health check: tried once, its own error reported at once.
func TestPingIsNotRetried(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{Retry: fast}, map[string]func(int) error{memkms.OpPing: always(errDown)})
	if err := f.k.Ping(t.Context()); !rekey.IsTransient(err) || !errors.Is(err, errDown) {
		t.Fatalf("Ping = %v, want the backend's transient error", err)
	}
	if got := f.calls(memkms.OpPing); got != 1 {
		t.Fatalf("backend saw %d pings, want 1", got)
	}
}

func TestTransientWrapIsRetriedUpToAttempts(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{Retry: fast}, map[string]func(int) error{memkms.OpWrap: always(errDown)})
	_, err := f.k.Wrap(t.Context(), f.ref, 1, []byte("0123456789abcdef"))
	if !rekey.IsTransient(err) {
		t.Fatalf("Wrap = %v, want a transient error once the attempts are spent", err)
	}
	if got := f.calls(memkms.OpWrap); got != fast.Attempts {
		t.Fatalf("backend saw %d wraps, want %d (Attempts)", got, fast.Attempts)
	}
}

func TestTransientFailureThenSuccess(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{Retry: fast}, map[string]func(int) error{
		memkms.OpWrap:    failFirst(2, errDown),
		memkms.OpCurrent: failFirst(1, errDown),
	})
	dek := []byte("0123456789abcdef")
	w, err := f.k.Wrap(t.Context(), f.ref, 1, dek)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	if got := f.calls(memkms.OpWrap); got != 3 {
		t.Fatalf("backend saw %d wraps, want 3", got)
	}
	pt, err := f.k.Unwrap(t.Context(), f.ref, 1, w)
	if err != nil || string(pt) != string(dek) {
		t.Fatalf("Unwrap = %q, %v", pt, err)
	}
	if v, err := f.k.CurrentVersion(t.Context(), f.ref); err != nil || v != 1 {
		t.Fatalf("CurrentVersion = %d, %v; want 1", v, err)
	}
	want := []call{
		{"test", kmsmw.OpWrap, kmsmw.ResultFailure},
		{"test", kmsmw.OpWrap, kmsmw.ResultFailure},
		{"test", kmsmw.OpWrap, kmsmw.ResultSuccess},
		{"test", kmsmw.OpUnwrap, kmsmw.ResultSuccess},
		{"test", kmsmw.OpCurrentVersion, kmsmw.ResultFailure},
		{"test", kmsmw.OpCurrentVersion, kmsmw.ResultSuccess},
	}
	if got := f.obs.get(); !slices.Equal(got, want) {
		t.Fatalf("observer saw\n%v\nwant\n%v", got, want)
	}
}

func TestCreateAndRotateAreTriedOnce(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{Retry: fast}, map[string]func(int) error{
		memkms.OpRotate: always(errDown),
		memkms.OpCreate: always(errDown),
	})
	if _, err := f.k.RotateKey(t.Context(), f.ref); !rekey.IsTransient(err) {
		t.Fatalf("RotateKey = %v, want the transient error", err)
	}
	if got := f.calls(memkms.OpRotate); got != 1 {
		t.Fatalf("backend saw %d rotations, want exactly 1", got)
	}
	if _, err := f.k.CreateKey(t.Context(), "k2"); !rekey.IsTransient(err) {
		t.Fatalf("CreateKey = %v, want the transient error", err)
	}
	if got := f.calls(memkms.OpCreate); got != 1 {
		t.Fatalf("backend saw %d creates, want exactly 1", got)
	}
	want := []call{{"test", kmsmw.OpRotateKey, kmsmw.ResultFailure}, {"test", kmsmw.OpCreateKey, kmsmw.ResultFailure}}
	if got := f.obs.get(); !slices.Equal(got, want) {
		t.Fatalf("observer saw %v, want %v", got, want)
	}
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	t.Parallel()
	for _, perm := range []error{rekey.ErrKeyNotFound, rekey.ErrInvalidCiphertext, errors.New("some unknown failure")} {
		f := setup(t, kmsmw.Options{Retry: fast}, map[string]func(int) error{memkms.OpUnwrap: always(perm)})
		_, err := f.k.Unwrap(t.Context(), f.ref, 1, []byte("x"))
		if !errors.Is(err, perm) || rekey.IsTransient(err) {
			t.Errorf("%v: Unwrap = %v, want it unchanged", perm, err)
		}
		if got := f.calls(memkms.OpUnwrap); got != 1 {
			t.Errorf("%v: backend saw %d unwraps, want 1", perm, got)
		}
	}
}

// timeoutError is a net.Error that times out.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	t.Parallel()
	opErr := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	transport := map[string]error{
		"net.OpError":       opErr,
		"url.Error":         &url.Error{Op: "Post", URL: "https://kms.example/v1", Err: io.EOF},
		"unexpected EOF":    fmt.Errorf("read body: %w", io.ErrUnexpectedEOF),
		"connection reset":  fmt.Errorf("read: %w", syscall.ECONNRESET),
		"net.Error timeout": timeoutError{},
		"client deadline":   fmt.Errorf("backend call: %w", context.DeadlineExceeded),
	}
	for name, raw := range transport {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, kmsmw.Options{Name: "aws", Retry: fast}, map[string]func(int) error{memkms.OpCurrent: always(raw)})
			_, err := f.k.CurrentVersion(t.Context(), f.ref)
			var u *rekey.UnreachableError
			if !errors.As(err, &u) || u.Service != "kms:aws" {
				t.Fatalf("CurrentVersion = %v, want an UnreachableError for kms:aws", err)
			}
			if !errors.Is(err, raw) {
				t.Fatalf("CurrentVersion = %v, want the original error in the chain", err)
			}
			if got := f.calls(memkms.OpCurrent); got != fast.Attempts {
				t.Fatalf("backend saw %d calls, want %d: a transport failure is retried", got, fast.Attempts)
			}
		})
	}

	t.Run("unreachable passes unchanged", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kmsmw.Options{Name: "aws", Retry: fast}, map[string]func(int) error{memkms.OpCurrent: always(errDown)})
		_, err := f.k.CurrentVersion(t.Context(), f.ref)
		var u *rekey.UnreachableError
		if !errors.As(err, &u) || u != errDown {
			t.Fatalf("CurrentVersion = %v, want the backend's own UnreachableError", err)
		}
	})

	t.Run("caller cancelled", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(t.Context())
		f := setup(t, kmsmw.Options{Retry: fast}, map[string]func(int) error{memkms.OpCurrent: func(int) error {
			cancel()
			return &url.Error{Op: "Post", URL: "https://kms.example/v1", Err: context.Canceled}
		}})
		_, err := f.k.CurrentVersion(ctx, f.ref)
		if !errors.Is(err, context.Canceled) || rekey.IsTransient(err) {
			t.Fatalf("CurrentVersion = %v, want the caller's cancellation, not transient", err)
		}
		if got := f.calls(memkms.OpCurrent); got != 1 {
			t.Fatalf("backend saw %d calls, want 1", got)
		}
	})
}

func TestContextEndsRetry(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{Retry: retry.Policy{Attempts: 10, Base: time.Hour}}, map[string]func(int) error{memkms.OpMAC: always(errDown)})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := f.k.MAC(ctx, "audit", []byte("data"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("MAC = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("MAC took %v: the retry did not end with the context", d)
	}
	if got := f.calls(memkms.OpMAC); got != 1 {
		t.Fatalf("backend saw %d calls, want 1", got)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	const perSecond, calls = 40.0, 21
	f := setup(t, kmsmw.Options{RateLimit: perSecond}, nil)
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range calls {
		wg.Go(func() {
			if _, err := f.k.CurrentVersion(t.Context(), f.ref); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if failed.Load() != 0 {
		t.Fatalf("%d calls failed", failed.Load())
	}
	if min := time.Duration(0.8 * float64(calls-1) / perSecond * float64(time.Second)); elapsed < min {
		t.Fatalf("%d calls at %v/s took %v, want at least %v", calls, perSecond, elapsed, min)
	}
	if got := len(f.obs.get()); got != calls {
		t.Fatalf("observer saw %d calls, want %d", got, calls)
	}
}

func TestRateLimitReported(t *testing.T) {
	t.Parallel()
	inner := memkms.New()
	if got := kmsmw.Wrap(inner, kmsmw.Options{RateLimit: 200}).RateLimit(); got != 200 {
		t.Errorf("RateLimit() = %v, want 200", got)
	}
	if got := kmsmw.Wrap(inner, kmsmw.Options{}).RateLimit(); got != 0 {
		t.Errorf("RateLimit() without a limit = %v, want 0", got)
	}
}

func TestRateLimitAppliesToEveryTry(t *testing.T) {
	t.Parallel()
	const perSecond = 20.0
	f := setup(t, kmsmw.Options{RateLimit: perSecond, Retry: fast}, map[string]func(int) error{memkms.OpCurrent: always(errDown)})
	start := time.Now()
	if _, err := f.k.CurrentVersion(t.Context(), f.ref); !rekey.IsTransient(err) {
		t.Fatalf("CurrentVersion = %v, want transient", err)
	}
	if min := time.Duration(0.8 * float64(fast.Attempts-1) / perSecond * float64(time.Second)); time.Since(start) < min {
		t.Fatalf("%d tries at %v/s took %v, want at least %v", fast.Attempts, perSecond, time.Since(start), min)
	}
}

func TestRateLimitDeadline(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{RateLimit: 0.1}, nil)
	if _, err := f.k.CurrentVersion(t.Context(), f.ref); err != nil {
		t.Fatal(err) // takes the one token
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	_, err := f.k.CurrentVersion(ctx, f.ref)
	if !errors.Is(err, context.DeadlineExceeded) || rekey.IsTransient(err) {
		t.Fatalf("CurrentVersion = %v, want a deadline error", err)
	}
	if got := f.calls(memkms.OpCurrent); got != 1 {
		t.Fatalf("backend saw %d calls, want 1: the second never got its turn", got)
	}
	if got := len(f.obs.get()); got != 1 {
		t.Fatalf("observer saw %d calls, want 1", got)
	}
}

// plainKMS has only the methods of rekey.KMS.
type plainKMS struct{ rekey.KMS }

// closer counts Close calls.
type closer struct {
	plainKMS
	closed int
}

func (c *closer) Close() error { c.closed++; return nil }

func TestCapabilities(t *testing.T) {
	t.Parallel()
	mem := memkms.New()
	if got, want := kmsmw.Wrap(mem, kmsmw.Options{}).Capabilities(), rekey.CapabilitiesOf(mem); got != want {
		t.Fatalf("Capabilities of wrapped memkms = %+v, want %+v", got, want)
	}
	if got := rekey.CapabilitiesOf(kmsmw.Wrap(mem, kmsmw.Options{})); got != (rekey.Capabilities{Rewrap: true, BatchRewrap: true, RetireVersion: true, Ping: true, MAC: true, FindKey: true, DeleteKey: true}) {
		t.Fatalf("CapabilitiesOf(wrapped memkms) = %+v, want all", got)
	}

	obs := &recorder{}
	plain := plainKMS{mem}
	k := kmsmw.Wrap(plain, kmsmw.Options{Name: "plain", Observer: obs})
	if got, want := k.Capabilities(), rekey.CapabilitiesOf(plain); got != want || got != (rekey.Capabilities{}) {
		t.Fatalf("Capabilities of wrapped plain KMS = %+v, want %+v (none)", got, want)
	}
	ctx := t.Context()
	ref, err := k.CreateKey(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]error{}
	_, checks["Rewrap"] = k.Rewrap(ctx, ref, 1, []byte("x"), 1)
	_, checks["RewrapBatch"] = k.RewrapBatch(ctx, ref, 1, nil)
	checks["RetireVersion"] = k.RetireVersion(ctx, ref, 1)
	checks["DestroyVersion"] = k.DestroyVersion(ctx, ref, 1)
	checks["Ping"] = k.Ping(ctx)
	_, checks["MAC"] = k.MAC(ctx, "p", []byte("d"))
	for name, err := range checks {
		if !errors.Is(err, rekey.ErrUnsupported) {
			t.Errorf("%s on a backend without it = %v, want ErrUnsupported", name, err)
		}
	}
	if got := obs.get(); len(got) != 1 {
		t.Fatalf("observer saw %v, want only the CreateKey: unsupported calls reach no backend", got)
	}
}

func TestInnerAndClose(t *testing.T) {
	t.Parallel()
	c := &closer{plainKMS: plainKMS{memkms.New()}}
	k := kmsmw.Wrap(c, kmsmw.Options{})
	if k.Inner() != rekey.KMS(c) || kmsmw.Unwrap(k) != rekey.KMS(c) {
		t.Fatal("Inner/Unwrap do not give the inner backend back")
	}
	if kmsmw.Unwrap(c) != rekey.KMS(c) {
		t.Fatal("Unwrap of an unwrapped backend is not itself")
	}
	if err := k.Close(); err != nil || c.closed != 1 {
		t.Fatalf("Close = %v, inner closed %d times; want nil, 1", err, c.closed)
	}
	if err := kmsmw.Wrap(memkms.New(), kmsmw.Options{}).Close(); err != nil {
		t.Fatalf("Close of a backend without Close = %v", err)
	}
}

// flakyBatch is a memkms whose RewrapBatch results are tampered with.
type flakyBatch struct {
	*memkms.KMS
	calls  atomic.Int32
	tamper func(n int, res []rekey.RewrapResult) []rekey.RewrapResult
}

func (f *flakyBatch) RewrapBatch(ctx context.Context, ref string, to int, items []rekey.RewrapItem) ([]rekey.RewrapResult, error) {
	n := int(f.calls.Add(1))
	res, err := f.KMS.RewrapBatch(ctx, ref, to, items)
	if err != nil {
		return nil, err
	}
	return f.tamper(n, res), nil
}

func batchSetup(t *testing.T, tamper func(int, []rekey.RewrapResult) []rekey.RewrapResult) (*flakyBatch, *kmsmw.KMS, *recorder, string, []rekey.RewrapItem) {
	t.Helper()
	fb := &flakyBatch{KMS: memkms.New(), tamper: tamper}
	obs := &recorder{}
	k := kmsmw.Wrap(fb, kmsmw.Options{Name: "b", Retry: fast, Observer: obs})
	ctx := t.Context()
	ref, err := k.CreateKey(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	var items []rekey.RewrapItem
	for i := range 3 {
		w, err := k.Wrap(ctx, ref, 1, []byte(fmt.Sprintf("dek-%d-0123456789", i)))
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, rekey.RewrapItem{Version: 1, Wrapped: w})
	}
	if _, err := k.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	return fb, k, obs, ref, items
}

func TestRewrapBatchRetriesTransientItems(t *testing.T) {
	t.Parallel()
	fb, k, obs, ref, items := batchSetup(t, func(n int, res []rekey.RewrapResult) []rekey.RewrapResult {
		if n <= 2 {
			res[1] = rekey.RewrapResult{Err: errDown}
		}
		return res
	})
	// One item has a permanent failure: it stays in the results.
	items[2].Wrapped = []byte("garbage")
	res, err := k.RewrapBatch(t.Context(), ref, 2, items)
	if err != nil {
		t.Fatalf("RewrapBatch: %v", err)
	}
	if got := fb.calls.Load(); got != 3 {
		t.Fatalf("backend saw %d batch calls, want 3", got)
	}
	if len(res) != 3 || res[0].Err != nil || res[1].Err != nil || !errors.Is(res[2].Err, rekey.ErrInvalidCiphertext) {
		t.Fatalf("results = %+v, want two re-wrapped and one ErrInvalidCiphertext", res)
	}
	for i := range 2 {
		if _, err := k.Unwrap(t.Context(), ref, 2, res[i].Wrapped); err != nil {
			t.Fatalf("Unwrap of re-wrapped item %d: %v", i, err)
		}
	}
	var batchCalls int
	for _, c := range obs.get() {
		if c.op == kmsmw.OpRewrapBatch {
			batchCalls++
		}
	}
	if batchCalls != 3 {
		t.Fatalf("observer saw %d rewrap_batch calls, want 3 (one per try)", batchCalls)
	}
}

func TestRewrapBatchTransientItemExhausted(t *testing.T) {
	t.Parallel()
	fb, k, _, ref, items := batchSetup(t, func(n int, res []rekey.RewrapResult) []rekey.RewrapResult {
		res[0] = rekey.RewrapResult{Err: errDown}
		return res
	})
	res, err := k.RewrapBatch(t.Context(), ref, 2, items)
	if !rekey.IsTransient(err) || res != nil {
		t.Fatalf("RewrapBatch = %v, %v; want no results and a transient error", res, err)
	}
	if got := int(fb.calls.Load()); got != fast.Attempts {
		t.Fatalf("backend saw %d batch calls, want %d", got, fast.Attempts)
	}
}

func TestRewrapBatchWrongResultCount(t *testing.T) {
	t.Parallel()
	fb, k, _, ref, items := batchSetup(t, func(n int, res []rekey.RewrapResult) []rekey.RewrapResult {
		return res[:len(res)-1]
	})
	_, err := k.RewrapBatch(t.Context(), ref, 2, items)
	if err == nil || rekey.IsTransient(err) {
		t.Fatalf("RewrapBatch = %v, want a permanent error for a short result list", err)
	}
	if got := fb.calls.Load(); got != 1 {
		t.Fatalf("backend saw %d batch calls, want 1", got)
	}
}

func TestOps(t *testing.T) {
	t.Parallel()
	ops := kmsmw.Ops()
	want := []string{"create_key", "current_version", "rotate_key", "wrap", "unwrap", "rewrap", "rewrap_batch", "retire_version", "destroy_version", "ping", "mac", "find_key", "delete_key"}
	if !slices.Equal(ops, want) {
		t.Fatalf("Ops() = %v, want %v", ops, want)
	}
	ops[0] = "changed"
	if kmsmw.Ops()[0] != "create_key" {
		t.Fatal("Ops returns a shared slice")
	}
}

func TestEveryOpIsObservedUnderItsName(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{Retry: fast}, nil)
	ctx := t.Context()
	k := f.k
	ref, err := k.CreateKey(ctx, "k2")
	if err != nil {
		t.Fatal(err)
	}
	w, err := k.Wrap(ctx, ref, 1, []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err = k.CurrentVersion(ctx, ref)
	must(err)
	_, err = k.RotateKey(ctx, ref)
	must(err)
	_, err = k.Unwrap(ctx, ref, 1, w)
	must(err)
	_, err = k.Rewrap(ctx, ref, 1, w, 2)
	must(err)
	_, err = k.RewrapBatch(ctx, ref, 2, []rekey.RewrapItem{{Version: 1, Wrapped: w}})
	must(err)
	must(k.RetireVersion(ctx, ref, 1))
	must(k.DestroyVersion(ctx, ref, 1))
	must(k.Ping(ctx))
	_, err = k.MAC(ctx, "p", []byte("d"))
	must(err)
	found, err := k.FindKey(ctx, "k2")
	must(err)
	if found != ref {
		t.Fatalf("FindKey = %q, want %q", found, ref)
	}
	var got []string
	for _, c := range f.obs.get() {
		if c.backend != "test" || c.result != kmsmw.ResultSuccess {
			t.Fatalf("observer saw %+v", c)
		}
		got = append(got, c.op)
	}
	want := []string{"create_key", "wrap", "current_version", "rotate_key", "unwrap", "rewrap", "rewrap_batch", "retire_version", "destroy_version", "ping", "mac", "find_key"}
	if !slices.Equal(got, want) {
		t.Fatalf("observer saw ops %v, want %v", got, want)
	}
}

package faultkms_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/faultkms"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/kmstest"
	"github.com/rekeyhq/rekey/retry"
)

func TestConformance(t *testing.T) {
	t.Run("memkms", func(t *testing.T) {
		kmstest.Run(t, func(t *testing.T) rekey.KMS {
			return faultkms.Wrap(memkms.New(), faultkms.Config{Seed: 1})
		})
	})
	t.Run("localkms", func(t *testing.T) {
		kmstest.Run(t, func(t *testing.T) rekey.KMS {
			k := faultkms.Wrap(newLocal(t), faultkms.Config{Seed: 1})
			t.Cleanup(func() { k.Close() })
			return k
		})
	})
	// Faults on the ops the middleware retries (all but CreateKey and
	// RotateKey, which it tries once): the middleware hides them all.
	t.Run("kmsmw over 20% faults", func(t *testing.T) {
		var (
			mu  sync.Mutex
			all []*faultkms.KMS
		)
		// Runs after every (parallel) subtest: the faults must have
		// happened for the run to prove anything.
		t.Cleanup(func() {
			var n int64
			for _, f := range all {
				n += totalFaults(f)
			}
			if n < 10 {
				t.Errorf("only %d faults were injected over the suite: it proved nothing", n)
			}
		})
		kmstest.Run(t, func(t *testing.T) rekey.KMS {
			f := faultkms.Wrap(memkms.New(), faultkms.Config{
				Seed: 2, ErrorRate: 0.2, LostReplyRate: 0.2,
				Ops: []string{kmsmw.OpCurrentVersion, kmsmw.OpWrap, kmsmw.OpUnwrap, kmsmw.OpRewrap, kmsmw.OpRewrapBatch,
					kmsmw.OpRetireVersion, kmsmw.OpDestroyVersion, kmsmw.OpPing, kmsmw.OpMAC},
			})
			mu.Lock()
			all = append(all, f)
			mu.Unlock()
			return kmsmw.Wrap(f, kmsmw.Options{Name: "fault", Retry: retry.Policy{Attempts: 30, Base: time.Microsecond, Max: 10 * time.Microsecond}})
		})
	})
}

func newLocal(t *testing.T) *localkms.Client {
	t.Helper()
	dir := t.TempDir()
	master := filepath.Join(dir, "master.key")
	if err := localkms.CreateMasterKeyFile(master); err != nil {
		t.Fatal(err)
	}
	c, err := localkms.New(t.Context(), localkms.Config{Keyring: filepath.Join(dir, "keyring"), MasterKeyFile: master, Create: true})
	if err != nil {
		t.Fatalf("localkms.New: %v", err)
	}
	return c
}

func totalFaults(k *faultkms.KMS) int64 {
	var n int64
	for _, s := range k.Stats() {
		n += s.Faults()
	}
	return n
}

// counted is a memkms that counts the calls that reached it, per memkms op.
type counted struct {
	*memkms.KMS
	mu sync.Mutex
	n  map[string]int
}

func newCounted() *counted {
	c := &counted{KMS: memkms.New(), n: map[string]int{}}
	c.Fail = func(op, ref string) error {
		c.mu.Lock()
		c.n[op]++
		c.mu.Unlock()
		return nil
	}
	return c
}

func (c *counted) calls(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[op]
}

var dek = bytes.Repeat([]byte{7}, 32)

func TestErrorRateIsHonoured(t *testing.T) {
	t.Parallel()
	inner := newCounted()
	ctx := t.Context()
	ref, err := inner.CreateKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	k := faultkms.Wrap(inner, faultkms.Config{Seed: 42, ErrorRate: 0.2})
	const n = 10000
	failed := 0
	for range n {
		_, err := k.Wrap(ctx, ref, 1, dek)
		if err == nil {
			continue
		}
		if !rekey.IsTransient(err) || !errors.Is(err, faultkms.ErrInjected) {
			t.Fatalf("Wrap = %v, want a transient ErrInjected", err)
		}
		failed++
	}
	// The seed is fixed, so the count is too; the bounds say it is 20%.
	if failed < 1800 || failed > 2200 {
		t.Fatalf("%d of %d calls failed, want about 20%%", failed, n)
	}
	st := k.Stats()[kmsmw.OpWrap]
	if st.Calls != n || st.Errors != int64(failed) || st.LostReplies != 0 || st.Throttled != 0 {
		t.Fatalf("Stats = %+v, want %d calls and %d errors", st, n, failed)
	}
	if got := inner.calls(memkms.OpWrap); got != n-failed {
		t.Fatalf("the backend saw %d wraps, want %d: an injected error must not reach it", got, n-failed)
	}
}

func TestLostReplyRateIsHonoured(t *testing.T) {
	t.Parallel()
	inner := newCounted()
	ctx := t.Context()
	ref, err := inner.CreateKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	w, err := inner.Wrap(ctx, ref, 1, dek)
	if err != nil {
		t.Fatal(err)
	}
	k := faultkms.Wrap(inner, faultkms.Config{Seed: 7, LostReplyRate: 0.3})
	const n = 5000
	lost := 0
	for range n {
		pt, err := k.Unwrap(ctx, ref, 1, w)
		switch {
		case err == nil:
			if !bytes.Equal(pt, dek) {
				t.Fatal("Unwrap returned another plaintext")
			}
		case rekey.IsTransient(err) && errors.Is(err, faultkms.ErrLostReply):
			if pt != nil {
				t.Fatal("a lost reply returned a plaintext")
			}
			lost++
		default:
			t.Fatalf("Unwrap = %v, want a transient ErrLostReply", err)
		}
	}
	if lost < 1350 || lost > 1650 {
		t.Fatalf("%d of %d replies lost, want about 30%%", lost, n)
	}
	if got := inner.calls(memkms.OpUnwrap); got != n {
		t.Fatalf("the backend saw %d unwraps, want all %d: a lost reply runs at the backend", got, n)
	}
	if st := k.Stats()[kmsmw.OpUnwrap]; st.LostReplies != int64(lost) || st.Calls != n || st.Errors != 0 {
		t.Fatalf("Stats = %+v, want %d lost of %d", st, lost, n)
	}
}

// A lost reply is lost only when the backend succeeded: its own errors
// come back as they are.
func TestLostReplyKeepsBackendErrors(t *testing.T) {
	t.Parallel()
	k := faultkms.Wrap(memkms.New(), faultkms.Config{Seed: 1, LostReplyRate: 1})
	if _, err := k.CurrentVersion(t.Context(), "memkms/none"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("CurrentVersion of an unknown key = %v, want ErrKeyNotFound", err)
	}
	if st := k.Stats()[kmsmw.OpCurrentVersion]; st.LostReplies != 0 || st.Calls != 1 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestDeterministicForASeed(t *testing.T) {
	t.Parallel()
	outcomes := func(seed int64) string {
		inner := memkms.New()
		ref, err := inner.CreateKey(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		k := faultkms.Wrap(inner, faultkms.Config{Seed: seed, ErrorRate: 0.25, LostReplyRate: 0.25})
		var b strings.Builder
		for range 200 {
			_, err := k.Wrap(t.Context(), ref, 1, dek)
			switch {
			case err == nil:
				b.WriteByte('.')
			case errors.Is(err, faultkms.ErrInjected):
				b.WriteByte('E')
			case errors.Is(err, faultkms.ErrLostReply):
				b.WriteByte('L')
			default:
				t.Fatalf("Wrap = %v", err)
			}
		}
		return b.String()
	}
	a, b, c := outcomes(11), outcomes(11), outcomes(12)
	if a != b {
		t.Fatalf("seed 11 gave two sequences:\n%s\n%s", a, b)
	}
	if a == c {
		t.Fatalf("seeds 11 and 12 gave the same sequence %s", a)
	}
	if !strings.Contains(a, "E") || !strings.Contains(a, "L") || !strings.Contains(a, ".") {
		t.Fatalf("sequence %s lacks an outcome", a)
	}
}

// A lost reply on a call that changes the backend really changed it.
func TestLostReplyRanTheInnerCall(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	lostAll := faultkms.Config{Seed: 3, LostReplyRate: 1}
	wantLost := func(t *testing.T, what string, err error) {
		t.Helper()
		if !rekey.IsTransient(err) || !errors.Is(err, faultkms.ErrLostReply) {
			t.Fatalf("%s = %v, want a transient ErrLostReply", what, err)
		}
	}
	t.Run("CreateKey", func(t *testing.T) {
		inner := memkms.New()
		k := faultkms.Wrap(inner, lostAll)
		ref, err := k.CreateKey(ctx, "made")
		wantLost(t, "CreateKey", err)
		if ref != "" {
			t.Fatalf("a lost reply returned ref %q", ref)
		}
		if v, err := inner.CurrentVersion(ctx, memkms.RefPrefix+"made"); err != nil || v != 1 {
			t.Fatalf("backend CurrentVersion after the lost create = %d, %v; want the key at version 1", v, err)
		}
		if _, err := inner.CreateKey(ctx, "made"); !errors.Is(err, rekey.ErrKeyExists) {
			t.Fatalf("creating it again = %v, want ErrKeyExists", err)
		}
	})
	t.Run("RotateKey", func(t *testing.T) {
		inner := memkms.New()
		ref, _ := inner.CreateKey(ctx, "k")
		k := faultkms.Wrap(inner, lostAll)
		v, err := k.RotateKey(ctx, ref)
		wantLost(t, "RotateKey", err)
		if v != 0 {
			t.Fatalf("a lost reply returned version %d", v)
		}
		if v, err := inner.CurrentVersion(ctx, ref); err != nil || v != 2 {
			t.Fatalf("backend CurrentVersion after the lost rotate = %d, %v; want 2", v, err)
		}
	})
	t.Run("Wrap", func(t *testing.T) {
		inner := newCounted()
		ref, _ := inner.CreateKey(ctx, "k")
		k := faultkms.Wrap(inner, lostAll)
		w, err := k.Wrap(ctx, ref, 1, dek)
		wantLost(t, "Wrap", err)
		if w != nil || inner.calls(memkms.OpWrap) != 1 {
			t.Fatalf("Wrap returned %x; the backend saw %d wraps, want 1", w, inner.calls(memkms.OpWrap))
		}
	})
	t.Run("Rewrap", func(t *testing.T) {
		inner := newCounted()
		ref, _ := inner.CreateKey(ctx, "k")
		w, _ := inner.Wrap(ctx, ref, 1, dek)
		inner.RotateKey(ctx, ref)
		k := faultkms.Wrap(inner, lostAll)
		out, err := k.Rewrap(ctx, ref, 1, w, 2)
		wantLost(t, "Rewrap", err)
		if out != nil || inner.calls(memkms.OpRewrap) != 1 {
			t.Fatalf("Rewrap returned %x; the backend saw %d re-wraps, want 1", out, inner.calls(memkms.OpRewrap))
		}
		res, err := k.RewrapBatch(ctx, ref, 2, []rekey.RewrapItem{{Version: 1, Wrapped: w}})
		wantLost(t, "RewrapBatch", err)
		if res != nil || inner.calls(memkms.OpRewrap) != 2 {
			t.Fatalf("RewrapBatch returned %v; the backend saw %d re-wrap calls, want 2", res, inner.calls(memkms.OpRewrap))
		}
	})
	t.Run("RetireVersion", func(t *testing.T) {
		inner := memkms.New()
		ref, _ := inner.CreateKey(ctx, "k")
		w, _ := inner.Wrap(ctx, ref, 1, dek)
		inner.RotateKey(ctx, ref)
		k := faultkms.Wrap(inner, lostAll)
		wantLost(t, "RetireVersion", k.RetireVersion(ctx, ref, 1))
		if _, err := inner.Unwrap(ctx, ref, 1, w); !errors.Is(err, rekey.ErrVersionDisabled) {
			t.Fatalf("unwrap under the version retired behind a lost reply = %v, want ErrVersionDisabled", err)
		}
	})
	t.Run("stats", func(t *testing.T) {
		inner := memkms.New()
		ref, _ := inner.CreateKey(ctx, "k")
		k := faultkms.Wrap(inner, lostAll)
		for range 3 {
			k.RotateKey(ctx, ref)
		}
		if st := k.Stats()[kmsmw.OpRotateKey]; st != (faultkms.OpStats{Calls: 3, LostReplies: 3}) {
			t.Fatalf("Stats = %+v, want 3 calls, 3 lost", st)
		}
		if v, _ := inner.CurrentVersion(ctx, ref); v != 4 {
			t.Fatalf("backend at version %d after 3 lost rotations, want 4", v)
		}
	})
}

// fakeClock is the throttle's clock, moved by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestThrottleAbove(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	inner := newCounted()
	ref, _ := inner.CreateKey(ctx, "k")
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	k := faultkms.Wrap(inner, faultkms.Config{Seed: 1, ThrottleAbove: 5, Now: clk.Now})
	burst := func() (ok, throttled int) {
		t.Helper()
		for range 10 {
			_, err := k.CurrentVersion(ctx, ref)
			switch {
			case err == nil:
				ok++
			case rekey.IsTransient(err) && errors.Is(err, faultkms.ErrThrottled) && errors.Is(err, rekey.ErrThrottled):
				if !strings.Contains(err.Error(), "throttled") {
					t.Fatalf("throttling error %q does not say throttled", err)
				}
				throttled++
			default:
				t.Fatalf("CurrentVersion = %v, want nil or a transient ErrThrottled", err)
			}
		}
		return ok, throttled
	}
	// 10 calls in one instant at 5/s: the burst of 5 passes.
	if ok, thr := burst(); ok != 5 || thr != 5 {
		t.Fatalf("at once: %d passed, %d throttled; want 5 and 5", ok, thr)
	}
	clk.Advance(400 * time.Millisecond) // 2 tokens back
	if ok, thr := burst(); ok != 2 || thr != 8 {
		t.Fatalf("after 400ms: %d passed, %d throttled; want 2 and 8", ok, thr)
	}
	clk.Advance(10 * time.Second) // refilled to the burst, no more
	if ok, thr := burst(); ok != 5 || thr != 5 {
		t.Fatalf("after 10s: %d passed, %d throttled; want 5 and 5", ok, thr)
	}
	if got := inner.calls(memkms.OpCurrent); got != 12 {
		t.Fatalf("the backend saw %d calls, want 12: a throttled call must not reach it", got)
	}
	if st := k.Stats()[kmsmw.OpCurrentVersion]; st.Calls != 30 || st.Throttled != 18 {
		t.Fatalf("Stats = %+v, want 30 calls, 18 throttled", st)
	}
}

// Below the rate nothing is throttled, on the real clock.
func TestThrottleBelowRatePasses(t *testing.T) {
	t.Parallel()
	inner := memkms.New()
	ref, _ := inner.CreateKey(t.Context(), "k")
	k := faultkms.Wrap(inner, faultkms.Config{ThrottleAbove: 1000})
	for range 20 {
		if _, err := k.CurrentVersion(t.Context(), ref); err != nil {
			t.Fatalf("CurrentVersion within the burst = %v", err)
		}
		time.Sleep(2 * time.Millisecond) // 500/s
	}
}

func TestOpsLimitsTheFaults(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	inner := memkms.New()
	ref, _ := inner.CreateKey(ctx, "k")
	w, _ := inner.Wrap(ctx, ref, 1, dek)
	k := faultkms.Wrap(inner, faultkms.Config{Seed: 1, ErrorRate: 1, LostReplyRate: 1, ThrottleAbove: 0.001, Ops: []string{kmsmw.OpWrap}})
	for range 10 {
		if _, err := k.Wrap(ctx, ref, 1, dek); !rekey.IsTransient(err) {
			t.Fatalf("faulted Wrap = %v, want a fault", err)
		}
		if pt, err := k.Unwrap(ctx, ref, 1, w); err != nil || !bytes.Equal(pt, dek) {
			t.Fatalf("Unwrap, not faulted = %v", err)
		}
	}
	st := k.Stats()
	if st[kmsmw.OpUnwrap] != (faultkms.OpStats{Calls: 10}) {
		t.Fatalf("unwrap stats = %+v, want 10 calls and no fault", st[kmsmw.OpUnwrap])
	}
	if w := st[kmsmw.OpWrap]; w.Calls != 10 || w.Faults() != 10 {
		t.Fatalf("wrap stats = %+v, want 10 calls, 10 faults", w)
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	inner := newCounted()
	ref, _ := inner.CreateKey(ctx, "k")
	k := faultkms.Wrap(inner, faultkms.Config{Seed: 5, Latency: 20 * time.Millisecond})
	start := time.Now()
	for range 10 {
		if _, err := k.CurrentVersion(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	// Ten uniform delays up to 20ms: with seed 5 they add up to over
	// 20ms (timers never fire early). No upper bound: a loaded machine
	// schedules late.
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("10 calls took %v, want at least 20ms of injected latency", d)
	}

	// A context that ends during the delay ends the call before the backend.
	slow := faultkms.Wrap(inner, faultkms.Config{Seed: 5, Latency: time.Hour})
	dctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	before := inner.calls(memkms.OpCurrent)
	if _, err := slow.CurrentVersion(dctx, ref); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CurrentVersion with a 10ms deadline and an hour of latency = %v, want DeadlineExceeded", err)
	}
	if inner.calls(memkms.OpCurrent) != before {
		t.Fatal("the call reached the backend after its context ended")
	}
}

// plain hides every optional interface of a memkms.
type plain struct{ rekey.KMS }

func TestCapabilitiesAreTheInnerOnes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	full := faultkms.Wrap(memkms.New(), faultkms.Config{})
	if c := full.Capabilities(); c != rekey.CapabilitiesOf(memkms.New()) || !c.BatchRewrap || !c.MAC {
		t.Fatalf("Capabilities over memkms = %+v", c)
	}
	k := faultkms.Wrap(plain{memkms.New()}, faultkms.Config{ErrorRate: 1})
	if c := k.Capabilities(); c != (rekey.Capabilities{}) {
		t.Fatalf("Capabilities over a plain KMS = %+v, want none", c)
	}
	// Through the middleware, as in a real stack.
	if c := rekey.CapabilitiesOf(kmsmw.Wrap(k, kmsmw.Options{})); c != (rekey.Capabilities{}) {
		t.Fatalf("kmsmw over faultkms over a plain KMS reports %+v, want none", c)
	}
	checks := map[string]error{}
	_, checks["Rewrap"] = k.Rewrap(ctx, "r", 1, []byte("x"), 2)
	_, checks["RewrapBatch"] = k.RewrapBatch(ctx, "r", 2, nil)
	checks["RetireVersion"] = k.RetireVersion(ctx, "r", 1)
	checks["DestroyVersion"] = k.DestroyVersion(ctx, "r", 1)
	checks["Ping"] = k.Ping(ctx)
	_, checks["MAC"] = k.MAC(ctx, "p", []byte("x"))
	for name, err := range checks {
		if !errors.Is(err, rekey.ErrUnsupported) || rekey.IsTransient(err) {
			t.Errorf("%s over a plain KMS = %v, want ErrUnsupported and no fault", name, err)
		}
	}
	if st := k.Stats(); len(st) != 0 {
		t.Fatalf("unsupported calls were counted: %+v", st)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	bad := map[string]faultkms.Config{
		"ErrorRate":     {ErrorRate: 1.5},
		"LostReplyRate": {LostReplyRate: -0.1},
		"Latency":       {Latency: -time.Second},
		"ThrottleAbove": {ThrottleAbove: -1},
		"Ops":           {Ops: []string{"wrapp"}},
	}
	for field, c := range bad {
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", c, err, field)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Wrap accepted %+v", c)
				}
			}()
			faultkms.Wrap(memkms.New(), c)
		}()
	}
	if err := (faultkms.Config{ErrorRate: 1, LostReplyRate: 0, Ops: kmsmw.Ops()}).Validate(); err != nil {
		t.Fatalf("Validate of a good config = %v", err)
	}
}

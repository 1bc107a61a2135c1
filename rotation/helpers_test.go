package rotation_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/retry"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/store/memstore"
	"github.com/rekeyhq/rekey/store/retrystore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// T is what the helpers need of a test: *testing.T, *testing.B and
// *rapid.T all have it.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// clock is an injected clock tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock {
	return &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testPolicy: a 30-day period, due within 7 days, 2 days of grace.
func testPolicy() rekey.Policy {
	return rekey.Policy{RotationPeriod: 30 * rekey.Day, RotateWithin: 7 * rekey.Day, NotifyWithin: 14 * rekey.Day, Grace: 2 * rekey.Day}
}

// env is the bundle every test starts from: a memstore, a memkms, a clock,
// and the plaintext of every DEK the test created (to check that each
// still unwraps to what it was).
type env struct {
	ctx     context.Context
	store   rekey.Store
	kms     rekey.KMS
	backend string          // the backend's name in Config.Backends
	mstore  *memstore.Store // the fakes, for fault injection (nil on SQLite)
	mkms    *memkms.KMS
	clock   *clock
	logs    *syncBuffer
	mu      sync.Mutex
	plain   map[string][]byte // dek id -> plaintext
	owners  atomic.Int64
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func setup(t T) *env {
	t.Helper()
	c := newClock()
	st := memstore.New()
	st.Now = c.Now
	k := memkms.New()
	return &env{ctx: context.Background(), store: st, kms: k, backend: "mem", mstore: st, mkms: k,
		clock: c, logs: &syncBuffer{}, plain: map[string][]byte{}}
}

// fastRetry is the middleware's retry policy in tests: quick, bounded.
var fastRetry = retry.Policy{Attempts: 4, Base: time.Millisecond, Max: 4 * time.Millisecond}

// engine returns an engine on the env with a unique owner; mod adjusts
// the config. As in production, the engine sees the store and the backend
// through the middleware (retrystore, kmsmw), which retries transient
// faults; the engine itself retries only rule 2's RotateKey.
func (e *env) engine(t T, mod ...func(*rotation.Config)) *rotation.Engine {
	t.Helper()
	cfg := rotation.Config{
		Store:       retrystore.Wrap(e.store, fastRetry),
		Backends:    map[string]rekey.KMS{e.backend: kmsmw.Wrap(e.kms, kmsmw.Options{Name: e.backend, Retry: fastRetry})},
		Logger:      slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:         e.clock.Now,
		Owner:       fmt.Sprintf("worker-%d", e.owners.Add(1)),
		BatchSize:   10,
		Concurrency: 4,
		RotateRetry: fastRetry,
		RangeSize:   -1, // one worker's plain pass; ranges_test.go shares
	}
	for _, m := range mod {
		m(&cfg)
	}
	eng, err := rotation.New(cfg)
	if err != nil {
		t.Fatalf("rotation.New: %v", err)
	}
	return eng
}

// createKey creates a root key in the KMS and the store, version 1 active,
// expiring a full period from now.
func (e *env) createKey(t T, name string, p rekey.Policy) rekey.Key {
	t.Helper()
	ref, err := e.kms.CreateKey(e.ctx, name)
	if err != nil {
		t.Fatalf("kms create %s: %v", name, err)
	}
	now := e.clock.Now()
	k := rekey.Key{Name: name, Backend: e.backend, BackendRef: ref, ActiveVersion: 1, ExpiresAt: now.Add(p.RotationPeriod), Policy: p, CreatedAt: now, UpdatedAt: now}
	v := rekey.KeyVersion{Key: name, Version: 1, State: rekey.VersionActive, CreatedAt: now, ActivatedAt: now}
	if err := e.store.CreateKey(e.ctx, k, v, rekey.AuditEvent{Time: now, Type: rekey.AuditKeyCreated, Key: name, Actor: "test"}); err != nil {
		t.Fatalf("store create %s: %v", name, err)
	}
	return e.key(t, name)
}

func (e *env) key(t T, name string) rekey.Key {
	t.Helper()
	k, err := e.store.GetKey(e.ctx, name)
	if err != nil {
		t.Fatalf("get key %s: %v", name, err)
	}
	return k
}

// addDEKs creates n DEKs of key under its active version, as an
// application would, and returns their ids.
func (e *env) addDEKs(t T, key string, n int) []string {
	t.Helper()
	ids, err := e.tryAddDEKs(t, key, n)
	if err != nil {
		t.Fatalf("insert DEKs: %v", err)
	}
	return ids
}

// tryAddDEKs is addDEKs returning the store's refusal (the DEKs are then
// forgotten).
func (e *env) tryAddDEKs(t T, key string, n int) ([]string, error) {
	t.Helper()
	k := e.key(t, key)
	deks := make([]rekey.DEK, n)
	ids := make([]string, n)
	pts := make([][]byte, n)
	for i := range deks {
		pt := make([]byte, 32)
		rand.Read(pt)
		w, err := e.kms.Wrap(e.ctx, k.BackendRef, k.ActiveVersion, pt)
		if err != nil {
			t.Fatalf("wrap: %v", err)
		}
		ids[i] = rekey.NewID()
		pts[i] = pt
		deks[i] = rekey.DEK{ID: ids[i], Key: key, Version: k.ActiveVersion, Wrapped: w}
	}
	if err := e.store.InsertDEKs(e.ctx, deks); err != nil {
		return nil, err
	}
	e.mu.Lock()
	for i, id := range ids {
		e.plain[id] = pts[i]
	}
	e.mu.Unlock()
	return ids, nil
}

// addCorruptDEK stores a DEK whose wrapped bytes do not authenticate.
func (e *env) addCorruptDEK(t T, key string) string {
	t.Helper()
	k := e.key(t, key)
	pt := make([]byte, 32)
	w, err := e.kms.Wrap(e.ctx, k.BackendRef, k.ActiveVersion, pt)
	if err != nil {
		t.Fatal(err)
	}
	w[len(w)-1] ^= 0xff
	id := rekey.NewID()
	if err := e.store.InsertDEKs(e.ctx, []rekey.DEK{{ID: id, Key: key, Version: k.ActiveVersion, Wrapped: w}}); err != nil {
		t.Fatal(err)
	}
	return id
}

// moveDEKs re-wraps the given DEKs under version (an older one), as a
// leftover of an earlier, partial rotation would be.
func (e *env) moveDEKs(t T, key string, version int, ids []string) {
	t.Helper()
	k := e.key(t, key)
	l, err := e.store.AcquireLease(e.ctx, key, "test-mover", time.Minute, e.clock.Now())
	if err != nil {
		t.Fatalf("lease: %v", err)
	}
	var swaps []rekey.DEKSwap
	for _, id := range ids {
		d, err := e.store.GetDEK(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		w, err := e.kms.Wrap(e.ctx, k.BackendRef, version, e.plaintext(id))
		if err != nil {
			t.Fatal(err)
		}
		swaps = append(swaps, rekey.DEKSwap{ID: id, OldWrapped: d.Wrapped, NewWrapped: w, NewVersion: version})
	}
	if lost, err := e.store.SwapDEKs(e.ctx, swaps, l); err != nil || len(lost) > 0 {
		t.Fatalf("move DEKs: lost %v, %v", lost, err)
	}
	if err := e.store.ReleaseLease(e.ctx, l); err != nil {
		t.Fatal(err)
	}
}

func (e *env) plaintext(id string) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.plain[id]
}

// allDEKs lists every DEK of key.
func (e *env) allDEKs(t T, key string) []rekey.DEK {
	t.Helper()
	var out []rekey.DEK
	after := ""
	for {
		page, err := e.store.ListDEKs(e.ctx, rekey.DEKQuery{Key: key, After: after, Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].ID
	}
}

// checkDEKs checks that every DEK of key this test created unwraps, under
// the version it names, to its plaintext; corrupt ones are listed in skip.
func (e *env) checkDEKs(t T, key string, skip ...string) {
	t.Helper()
	k := e.key(t, key)
	for _, d := range e.allDEKs(t, key) {
		if slices.Contains(skip, d.ID) {
			continue
		}
		pt, err := e.kms.Unwrap(e.ctx, k.BackendRef, d.Version, d.Wrapped)
		if err != nil {
			t.Fatalf("dek %s (v%d) does not unwrap: %v", d.ID, d.Version, err)
		}
		if want := e.plaintext(d.ID); want != nil && !bytes.Equal(pt, want) {
			t.Fatalf("dek %s unwraps to another plaintext", d.ID)
		}
	}
}

// versionsOf returns how many DEKs of key are on each version.
func (e *env) counts(t T, key string) map[int]int64 {
	t.Helper()
	c, err := e.store.CountDEKs(e.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) versions(t T, key string) map[int]rekey.KeyVersion {
	t.Helper()
	vs, err := e.store.ListVersions(e.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]rekey.KeyVersion{}
	for _, v := range vs {
		out[v.Version] = v
	}
	return out
}

func (e *env) backendVersion(t T, key string) int {
	t.Helper()
	v, err := e.kms.CurrentVersion(e.ctx, e.key(t, key).BackendRef)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *env) audit(t T, key string) []rekey.AuditEvent {
	t.Helper()
	evs, err := e.store.ListAudit(e.ctx, rekey.AuditQuery{Key: key, Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// auditTypes returns the audit event types of key in order, with runs of
// rewrap.progress collapsed into one.
func (e *env) auditTypes(t T, key string) []rekey.AuditType {
	t.Helper()
	var out []rekey.AuditType
	for _, ev := range e.audit(t, key) {
		if n := len(out); n > 0 && ev.Type == rekey.AuditRewrapProgress && out[n-1] == ev.Type {
			continue
		}
		out = append(out, ev.Type)
	}
	return out
}

func (e *env) countAudit(t T, key string, typ rekey.AuditType) int {
	t.Helper()
	n := 0
	for _, ev := range e.audit(t, key) {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

func (e *env) rotations(t T, key string) []rekey.Rotation {
	t.Helper()
	rs, err := e.store.ListRotations(e.ctx, rekey.RotationQuery{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func (e *env) openRotations(t T, key string) []rekey.Rotation {
	t.Helper()
	rs, err := e.store.ListRotations(e.ctx, rekey.RotationQuery{Key: key, OpenOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// makeDue moves the clock to where key is due.
func (e *env) makeDue(t T, key string) {
	t.Helper()
	k := e.key(t, key)
	if d := k.ExpiresAt.Sub(e.clock.Now()) - k.Policy.RotateWithin; d > 0 {
		e.clock.Advance(d + time.Second)
	}
	if !e.key(t, key).Due(e.clock.Now()) {
		t.Fatal("key not due after moving the clock")
	}
}

func keyReport(t T, rep rotation.CycleReport, key string) rotation.KeyReport {
	t.Helper()
	for _, kr := range rep.Keys {
		if kr.Key == key {
			return kr
		}
	}
	t.Fatalf("no report for key %s in %+v", key, rep)
	return rotation.KeyReport{}
}

func fp(spec string) func(*rotation.Config) {
	return func(c *rotation.Config) { c.Failpoints = failpoint.MustParse(spec) }
}

// onHit returns a test hook that runs fn at the n-th hit of point.
func onHit(point string, n int, fn func() error) func(string) error {
	var hits atomic.Int64
	return func(name string) error {
		if name == point && hits.Add(1) == int64(n) {
			return fn()
		}
		return nil
	}
}

var errTest = errors.New("test")

func transient(err error) error { return &rekey.UnreachableError{Service: "kms:test", Err: err} }

// onlyKMS hides a backend's optional capabilities (the engine then
// unwraps and wraps itself) and counts calls in flight.
type onlyKMS struct {
	rekey.KMS
	inFlight, maxInFlight atomic.Int64
	mu                    sync.Mutex
	unwrapped             []int         // versions unwrapped, in call order
	delay                 time.Duration // each Unwrap lasts at least this long (calls in flight overlap)
}

func (k *onlyKMS) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	n := k.inFlight.Add(1)
	defer k.inFlight.Add(-1)
	for {
		m := k.maxInFlight.Load()
		if n <= m || k.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	k.mu.Lock()
	k.unwrapped = append(k.unwrapped, version)
	k.mu.Unlock()
	if k.delay > 0 {
		time.Sleep(k.delay)
	}
	return k.KMS.Unwrap(ctx, ref, version, wrapped)
}

// RetireVersion and DestroyVersion pass through: onlyKMS hides re-wrap,
// not retirement.
func (k *onlyKMS) RetireVersion(ctx context.Context, ref string, version int) error {
	return k.KMS.(rekey.VersionRetirer).RetireVersion(ctx, ref, version)
}

func (k *onlyKMS) DestroyVersion(ctx context.Context, ref string, version int) error {
	return k.KMS.(rekey.VersionRetirer).DestroyVersion(ctx, ref, version)
}

package worker_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/store/memstore"
	"github.com/rekeyhq/rekey/worker"
)

// fakeClock is a Clock whose time moves only when the test says, and whose
// After fires only when the test fires it.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	fire  chan time.Time
	waits atomic.Int64
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), fire: make(chan time.Time)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(time.Duration) <-chan time.Time {
	c.waits.Add(1)
	return c.fire
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// tick ends the worker's wait for its next cycle.
func (c *fakeClock) tick(t *testing.T) {
	t.Helper()
	select {
	case c.fire <- c.Now():
	case <-time.After(10 * time.Second):
		t.Fatal("the worker is not waiting for its next cycle")
	}
}

type bundle struct {
	ctx    context.Context
	store  *memstore.Store
	kms    *memkms.KMS
	kr     *rekey.Keyring
	clock  *fakeClock
	logs   *syncBuffer
	cycles chan rotation.CycleReport
	gauge  *gauge
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

type gauge struct {
	mu    sync.Mutex
	calls []bool
}

func (g *gauge) SetAuditChainValid(ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, ok)
}

func (g *gauge) last() (bool, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.calls) == 0 {
		return false, 0
	}
	return g.calls[len(g.calls)-1], len(g.calls)
}

func setup(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{ctx: context.Background(), store: memstore.New(), kms: memkms.New(), clock: newFakeClock(),
		logs: &syncBuffer{}, cycles: make(chan rotation.CycleReport, 16), gauge: &gauge{}}
	b.kr = rekey.NewKeyring(b.store, map[string]rekey.KMS{"mem": b.kms}, rekey.WithClock(b.clock.Now))
	return b
}

func (b *bundle) engine(t *testing.T, owner string, batch int) *rotation.Engine {
	t.Helper()
	eng, err := rotation.New(rotation.Config{Store: b.store, Backends: map[string]rekey.KMS{"mem": b.kms},
		Now: b.clock.Now, Owner: owner, BatchSize: batch, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

func (b *bundle) worker(t *testing.T, eng *rotation.Engine) *worker.Worker {
	t.Helper()
	keeper := &audit.Keeper{Store: b.store, MACer: b.kms, KeyID: "mem/" + audit.Purpose,
		AnchorPath: filepath.Join(t.TempDir(), "audit.anchor"), StoreID: "mem", Now: b.clock.Now}
	// What setup.System.Close does after the commands that wrote the
	// events so far: a trail with events but neither checkpoint nor anchor
	// does not verify.
	if err := keeper.Checkpoint(b.ctx); err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{
		Engine: eng, Store: b.store, Clock: b.clock, Gauge: b.gauge,
		Audit:      keeper,
		Logger:     slog.New(slog.NewJSONHandler(b.logs, nil)),
		AfterCycle: func(r rotation.CycleReport) { b.cycles <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (b *bundle) nextCycle(t *testing.T) rotation.CycleReport {
	t.Helper()
	select {
	case r := <-b.cycles:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no cycle finished")
	}
	return rotation.CycleReport{}
}

func policy() rekey.Policy {
	return rekey.Policy{RotationPeriod: time.Hour, RotateWithin: 10 * time.Minute, NotifyWithin: 20 * time.Minute, Grace: time.Minute}
}

// The worker runs a cycle at start and then one each time its clock says
// the interval is over: a key becomes due on the fake clock and rotates on
// the next tick, with no real sleep. Its audit events reach the log, the
// trail is checkpointed and the chain gauge is set.
func TestWorkerCyclesOnItsClock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.kr.CreateKey(b.ctx, "k", "mem", policy()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.kr.NewDEKs(b.ctx, "k", "", 25); err != nil {
		t.Fatal(err)
	}
	w := b.worker(t, b.engine(t, "w1", 10))
	if err := w.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Stop(b.ctx)
	if r := b.nextCycle(t); !r.OK() || len(r.Keys) != 1 || r.Keys[0].Outcome != rotation.OutcomeIdle {
		t.Fatalf("first cycle = %+v, want k idle (not due)", r)
	}
	if ok, n := b.gauge.last(); !ok || n == 0 {
		t.Fatalf("chain gauge = %v after %d verifications, want valid", ok, n)
	}
	b.clock.advance(55 * time.Minute) // within rotate_within of expiry
	b.clock.tick(t)
	r := b.nextCycle(t)
	if !r.OK() || r.Keys[0].Outcome != rotation.OutcomeRotated || r.Keys[0].Rewrapped != 25 {
		t.Fatalf("second cycle = %+v, want k rotated with 25 DEKs", r)
	}
	k, err := b.store.GetKey(b.ctx, "k")
	if err != nil || k.ActiveVersion != 2 {
		t.Fatalf("key = %+v, %v", k, err)
	}
	if got := b.logs.String(); !strings.Contains(got, `"msg":"audit_event"`) || !strings.Contains(got, `"event_type":"rotation.completed"`) {
		t.Errorf("the audit events did not reach the log:\n%s", got)
	}
	head, err := audit.HeadSeq(b.ctx, b.store)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := b.store.LastAuditCheckpoint(b.ctx)
	if err != nil || cp.Seq != head {
		t.Fatalf("last checkpoint = %+v, %v; want the head %d", cp, err, head)
	}
	if err := w.Stop(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(b.ctx); err != nil {
		t.Fatalf("restart after Stop: %v", err)
	}
	b.nextCycle(t)
}

// Rule 9 on the loop that ships: stopping the worker mid re-wrap returns
// after the batch was checkpointed and the lease released; another worker
// resumes at once and finishes.
func TestWorkerGracefulStop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.kr.CreateKey(b.ctx, "k", "mem", policy()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.kr.NewDEKs(b.ctx, "k", "", 60); err != nil {
		t.Fatal(err)
	}
	b.clock.advance(55 * time.Minute)
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	var rewraps atomic.Int64
	b.kms.Fail = func(op, ref string) error {
		// SIGTERM arrives while the second batch is at the backend (two calls per batch: 20 DEKs in two chunks).
		if op == memkms.OpRewrap && rewraps.Add(1) == 3 {
			cancel()
		}
		return nil
	}
	w := b.worker(t, b.engine(t, "w1", 20))
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil on a graceful stop", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	b.kms.Fail = nil
	open, err := b.store.OpenRotation(b.ctx, "k")
	if err != nil {
		t.Fatalf("open rotation after stop: %v", err)
	}
	counts, err := b.store.CountDEKs(b.ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if open.Done == 0 || open.Done >= 60 || counts[2] != open.Done {
		t.Fatalf("after stop: rotation done %d, DEKs on v2 %d: the checkpoint and the DEKs must agree, mid-way", open.Done, counts[2])
	}
	evs, err := b.store.ListAudit(b.ctx, rekey.AuditQuery{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type == rekey.AuditRotationFailed {
			t.Fatalf("a graceful stop was audited as a failure: %+v", e)
		}
	}
	if _, err := b.store.GetLease(b.ctx, "k"); !errors.Is(err, rekey.ErrLeaseNotFound) {
		t.Fatalf("lease after stop: %v, want released", err)
	}
	rep := b.engine(t, "w2", 20).RunCycle(b.ctx)
	if !rep.OK() || rep.Keys[0].Outcome != rotation.OutcomeRotated {
		t.Fatalf("resume by another worker = %+v", rep)
	}
	if counts, _ := b.store.CountDEKs(b.ctx, "k"); counts[2] != 60 {
		t.Fatalf("counts after resume = %v", counts)
	}
}

func TestWorkerConfig(t *testing.T) {
	t.Parallel()
	if _, err := worker.New(worker.Config{}); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("New without engine: %v", err)
	}
	b := setup(t)
	w := b.worker(t, b.engine(t, "w1", 10))
	if err := w.Stop(b.ctx); err != nil {
		t.Errorf("Stop of a worker never started: %v", err)
	}
	if err := w.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(b.ctx); err == nil {
		t.Error("a second Start succeeded")
	}
	b.nextCycle(t)
	if err := w.Stop(b.ctx); err != nil {
		t.Fatal(err)
	}
}

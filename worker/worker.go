// Package worker is the rotation daemon as a library: the loop that `rekey
// run` runs, and that an application can run in-process. A Worker runs a
// cycle of the rotation engine at start and then every interval; after each
// cycle it forwards the new audit events to the log, checkpoints the audit
// trail, and re-verifies the whole chain at start and every VerifyEvery.
// Stopping it (Stop, or the context given to Run ending) lets the key in
// progress checkpoint its batch and release its lease.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/rotation"
)

// Defaults of Config.
const (
	DefaultInterval    = time.Minute
	DefaultVerifyEvery = time.Hour
)

// Clock is the worker's time: Now for timestamps and After for the wait
// between cycles. Tests pass a fake one to run cycles without sleeping.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ChainGauge receives the result of each audit chain verification
// (rekey_audit_chain_valid); *metrics.Metrics is one.
type ChainGauge interface {
	SetAuditChainValid(ok bool)
}

// Config configures a Worker. Engine and Store are required.
type Config struct {
	// Engine runs the cycles.
	Engine *rotation.Engine
	// Store is the engine's store: the audit trail is read from it.
	Store rekey.Store
	// Audit checkpoints and verifies the trail; nil means the events are
	// only forwarded to the log.
	Audit *audit.Keeper
	// Gauge receives each verification's result; nil means none.
	Gauge ChainGauge
	// Reconcile runs once at start, before the first cycle (creating and
	// reconciling declared keys); its error is logged, the worker goes on.
	Reconcile func(ctx context.Context) error
	// Interval is the time between cycles; 0 means DefaultInterval.
	Interval time.Duration
	// VerifyEvery is how often the whole chain is re-verified; 0 means
	// DefaultVerifyEvery.
	VerifyEvery time.Duration
	// Clock is the time source; nil means the real clock.
	Clock Clock
	// Logger receives the worker's JSON log; nil discards it.
	Logger *slog.Logger
	// AfterCycle, when set, is called with each cycle's report once its
	// audit bookkeeping is done (tests and embedding applications).
	AfterCycle func(rotation.CycleReport)
	// AuditSeq is the last audit event already forwarded to the log (events
	// after it are forwarded by the first cycle); 0 forwards the whole
	// trail on the first cycle.
	AuditSeq int64
}

// Worker runs rotation cycles on a timer. Its methods are safe for
// concurrent use.
type Worker struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	auditSeq   int64
	cpSeq      int64 // the last checkpoint forwarded to the log
	auditErr   error // why the last verification did not pass; nil when it did
	lastVerify time.Time
	started    bool
	cancel     context.CancelFunc
	done       chan struct{}
	last       rotation.CycleReport
	cycles     int
	trigger    chan struct{}
}

// New returns a Worker for cfg. It returns an error matching
// rekey.ErrInvalidArgument when Engine or Store is missing or a duration is
// negative.
func New(cfg Config) (*Worker, error) {
	if cfg.Engine == nil || cfg.Store == nil {
		return nil, fmt.Errorf("%w: worker: Config.Engine and Config.Store are required", rekey.ErrInvalidArgument)
	}
	if cfg.Interval < 0 || cfg.VerifyEvery < 0 {
		return nil, fmt.Errorf("%w: worker: Interval and VerifyEvery must not be negative", rekey.ErrInvalidArgument)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.VerifyEvery == 0 {
		cfg.VerifyEvery = DefaultVerifyEvery
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Worker{cfg: cfg, log: cfg.Logger, auditSeq: cfg.AuditSeq, trigger: make(chan struct{}, 1)}, nil
}

// Run runs the worker until ctx ends: reconciliation and a chain
// verification at start, a cycle at once and then one every Interval. It
// returns nil once ctx has ended and the key in progress was checkpointed
// and its lease released (rule 9). A failing cycle does not stop it.
func (w *Worker) Run(ctx context.Context) error {
	w.startup(ctx)
	for {
		w.cycle(ctx)
		select {
		case <-ctx.Done():
			w.log.Info("rotation worker stopped")
			return nil
		case <-w.cfg.Clock.After(w.cfg.Interval):
		case <-w.trigger:
		}
	}
}

// RunOnce runs what `rekey run --once` does: reconciliation, a chain
// verification, one cycle and its audit bookkeeping. It returns the
// cycle's report; a context that ended during the cycle gives a report
// with Interrupted set.
func (w *Worker) RunOnce(ctx context.Context) rotation.CycleReport {
	w.startup(ctx)
	return w.cycle(ctx)
}

// Start runs Run in a goroutine until Stop is called or ctx ends. It
// returns an error if the worker is running already.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return errors.New("worker: already started")
	}
	ctx, cancel := context.WithCancel(ctx)
	w.started, w.cancel, w.done = true, cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		_ = w.Run(ctx)
	}()
	return nil
}

// Stop stops a worker started with Start and waits until the key in
// progress has checkpointed its batch and released its lease, or ctx ends
// (then it returns ctx's error; the worker still stops in the background).
// Stopping a worker that is not running is a no-op.
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	if !w.started {
		w.mu.Unlock()
		return nil
	}
	cancel, done := w.cancel, w.done
	w.mu.Unlock()
	cancel()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	w.mu.Lock()
	w.started = false
	w.mu.Unlock()
	return nil
}

// Trigger makes a running worker start its next cycle now instead of at
// the end of the interval (a no-op when one is already pending).
func (w *Worker) Trigger() {
	select {
	case w.trigger <- struct{}{}:
	default:
	}
}

// LastReport returns the report of the last finished cycle and how many
// cycles have finished.
func (w *Worker) LastReport() (rotation.CycleReport, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.cycles
}

// AuditProblem returns nil when the last verification of the audit trail
// passed, else why it did not (an error matching audit.ErrInvalidChain for
// a trail that failed; another for one that could not be verified, such as
// with the MAC backend down). While it is not nil the worker writes no
// checkpoint, re-verifies every cycle, and keeps rekey_audit_chain_valid
// at 0. It is nil before the first verification.
func (w *Worker) AuditProblem() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.auditErr
}

// startup reconciles declared keys and verifies the audit chain.
func (w *Worker) startup(ctx context.Context) {
	w.log.Info("rotation worker starting", "owner", w.cfg.Engine.Owner(), "check_interval", w.cfg.Interval.String())
	if w.cfg.Reconcile != nil {
		if err := w.cfg.Reconcile(ctx); err != nil {
			// A declared key that cannot be reconciled is that key's
			// problem: the others still rotate.
			w.log.Error("reconciling declared keys", "error", err.Error())
		}
	}
	if cp, err := w.cfg.Store.LastAuditCheckpoint(ctx); err == nil {
		// The newest checkpoint is forwarded again at start, so that the
		// log has the head a restarted worker begins from.
		w.mu.Lock()
		w.cpSeq = cp.Seq - 1
		w.mu.Unlock()
	}
	w.verifyAudit(ctx)
}

// cycle runs one engine cycle and then the audit bookkeeping, even when a
// stop ended the cycle: it is short, and the events of the interrupted
// rotation deserve their checkpoint.
func (w *Worker) cycle(ctx context.Context) rotation.CycleReport {
	r := w.cfg.Engine.RunCycle(ctx)
	w.auditBookkeeping(context.WithoutCancel(ctx))
	w.mu.Lock()
	w.last = r
	w.cycles++
	w.mu.Unlock()
	if w.cfg.AfterCycle != nil {
		w.cfg.AfterCycle(r)
	}
	return r
}

// auditBookkeeping sends new audit events to the JSON log (for a SIEM),
// re-verifies the chain when due (every cycle while the last verification
// did not pass), checkpoints the chain head only while the trail verifies,
// and forwards every new checkpoint to the log.
func (w *Worker) auditBookkeeping(ctx context.Context) {
	w.mu.Lock()
	since := w.auditSeq
	w.mu.Unlock()
	if seq, err := audit.LogSince(ctx, w.log, w.cfg.Store, since); err != nil {
		w.log.Error("forwarding audit events to the log", "error", err.Error())
	} else {
		w.mu.Lock()
		w.auditSeq = seq
		w.mu.Unlock()
	}
	if w.cfg.Audit == nil {
		return
	}
	w.mu.Lock()
	due := w.auditErr != nil || w.cfg.Clock.Now().Sub(w.lastVerify) >= w.cfg.VerifyEvery
	w.mu.Unlock()
	if due {
		w.verifyAudit(ctx)
	}
	if bad := w.AuditProblem(); bad != nil {
		w.log.Error("audit checkpoint skipped: the audit trail did not verify, and no checkpoint may vouch for it", "error", bad.Error())
	} else if err := w.cfg.Audit.Checkpoint(ctx); err != nil {
		w.log.Error("audit checkpoint refused", "error", err.Error())
		w.mu.Lock()
		w.auditErr = err
		w.mu.Unlock()
		if w.cfg.Gauge != nil {
			w.cfg.Gauge.SetAuditChainValid(false)
		}
	}
	w.forwardCheckpoints(ctx)
}

// forwardCheckpoints logs every checkpoint made since the last one
// forwarded, by this process or another sharing the store: a copy of each
// lives outside the home.
func (w *Worker) forwardCheckpoints(ctx context.Context) {
	w.mu.Lock()
	since := w.cpSeq
	w.mu.Unlock()
	seq, err := audit.TailCheckpoints(ctx, w.cfg.Store, since, func(cp rekey.AuditCheckpoint) error {
		audit.LogCheckpoint(w.log, cp)
		return nil
	})
	if err != nil {
		w.log.Error("forwarding audit checkpoints to the log", "error", err.Error())
	}
	w.mu.Lock()
	w.cpSeq = seq
	w.mu.Unlock()
}

// verifyAudit verifies the whole chain and sets the gauge: 1 only when
// every check ran and passed. A verification that could not check
// everything (the MAC backend down, no MAC key) sets 0 and logs an ERROR
// saying why, never "verified".
func (w *Worker) verifyAudit(ctx context.Context) {
	if w.cfg.Audit == nil {
		return
	}
	res, err := w.cfg.Audit.Verify(ctx)
	var bad error
	switch {
	case err != nil:
		bad = fmt.Errorf("the audit chain could not be verified: %w", err)
		w.log.Error("audit chain could not be verified", "error", err.Error())
	case !res.Valid:
		bad = &audit.InvalidChainError{Problem: *res.FirstBad}
		w.log.Error("audit chain INVALID", "first_bad", res.FirstBad.String())
	case res.Unverifiable != "":
		bad = fmt.Errorf("the audit chain could not be verified: %s", res.Unverifiable)
		w.log.Error("audit chain could not be verified", "error", res.Unverifiable)
	default:
		w.log.Info("audit chain verified", "events", res.Events, "checkpoints", res.Checkpoints)
	}
	w.mu.Lock()
	w.lastVerify = w.cfg.Clock.Now()
	w.auditErr = bad
	w.mu.Unlock()
	if w.cfg.Gauge != nil {
		w.cfg.Gauge.SetAuditChainValid(bad == nil)
	}
}

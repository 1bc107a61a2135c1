package rotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/retry"
)

// Defaults of Config.
const (
	DefaultBatchSize   = 1000
	DefaultConcurrency = 8
	DefaultLeaseTTL    = 30 * time.Second
)

// maxFailedDEKs is how many failed DEK ids a rotation keeps (Rotation.FailedDEKs).
const maxFailedDEKs = 100

// writeTimeout bounds a write that must complete once started (a batch's
// swap and checkpoint, a lease release) although the caller was cancelled.
const writeTimeout = 30 * time.Second

// Config configures an Engine. Store is required; zero values elsewhere
// take the documented defaults.
type Config struct {
	// Store holds keys, versions, rotations, leases and the audit trail.
	Store rekey.Store
	// DEKs is where the DEKs live; nil means Store. When it also has a
	// GetDEK(ctx, id) method, lost compare-and-swaps are re-read one by
	// one; otherwise they are left to the next sweep, which re-lists them.
	DEKs rekey.DEKSource
	// Sources are tables of the application's own databases that hold
	// DEKs too (see Source): counted, re-wrapped and gating retirement
	// like DEKs.
	Sources []Source
	// Backends maps a backend name (Key.Backend) to its KMS.
	Backends map[string]rekey.KMS
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock for due dates, grace, expiry and leases; nil is
	// time.Now.
	Now func() time.Time
	// Owner names this worker in leases, rotations and audit events;
	// empty means DefaultOwner() (hostname-pid). A lease held by an owner
	// of that form, from this host, whose process no longer exists (a
	// crash, kill -9) is taken over at once instead of at its expiry;
	// host names must then be unique among the workers sharing a store,
	// else set a unique Owner per worker. Leases of any other owner are
	// only taken over when they expire.
	Owner string
	// BatchSize is how many DEKs one re-wrap batch lists, re-wraps and
	// swaps (one checkpoint each); 0 means 1000.
	BatchSize int
	// Concurrency bounds the backend calls of re-wraps in flight in this
	// engine, across its range workers and read-ahead; 0 means 8.
	Concurrency int
	// RangeSize is how many DEKs one range of a shared re-wrap holds: a
	// rotation with at least two ranges' worth of DEKs is split into id
	// ranges that every worker sharing the store re-wraps at once, each
	// under a lease of its own (rekey.RangeSharer). 0 means
	// max(2×BatchSize, DEKs/64); a negative value never splits.
	RangeSize int
	// RangeWorkers is how many ranges of a shared re-wrap of rekey's own
	// DEKs this engine re-wraps at once, each under its own lease, with its
	// own read-ahead. 0 means the store's rekey.ConcurrentWriter (2 for
	// PostgreSQL), 1 for a store without it (SQLite, one writer at a
	// time). Ranges of DEK sources go one at a time.
	RangeWorkers int
	// LeaseTTL is the lifetime of a key lease; it is renewed every TTL/3.
	// 0 means 30s.
	LeaseTTL time.Duration
	// RotateRetry bounds rule 2's loop, the one retry the engine keeps:
	// when RotateKey fails transiently the failed call may still have
	// rotated, so the engine waits a backoff and looks at CurrentVersion
	// again before asking once more. Every other retry (and the rate
	// limit) belongs to the middleware the backends and the store are
	// wrapped in where they are opened (kms/kmsmw, store/retrystore); the
	// engine never retries a call itself. Zero values take the policy's
	// defaults (5 rounds, backoff from 200ms).
	RotateRetry retry.Policy
	// Failpoints, when set, injects crashes and errors (see package
	// failpoint).
	Failpoints *failpoint.Set
	// DeclaredBackends maps a key name to the backend the configuration
	// declares it on (keys: ... backend:). A key stored on another
	// backend is moved to the declared one by the next cycle, as a move
	// rotation (rekey.ReasonMove) that is logged, audited and shown by
	// Plan beforehand; never by rewriting the key's backend. Keys not in
	// the map, and declared backends that are not configured, are left
	// alone.
	DeclaredBackends map[string]string
	// Observer receives what only the engine knows (rotation outcomes,
	// re-wrapped DEKs, cycles); nil means none. Everything else the
	// metrics read from the store, and the backend calls from kms/kmsmw.
	Observer Observer
}

// Result values passed to Observer.RotationFinished.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
)

// Observer receives what only the engine knows; the metrics read the rest
// (progress, versions, blocked retirements) from the store at scrape time,
// and backend calls are counted by the KMS middleware. Methods are called
// from the engine's goroutines, concurrently, and must not block.
type Observer interface {
	// RotationFinished is called when a rotation of key reached done
	// (result "success") or failed this time (result "failure"); d is how
	// long this process drove it. A rotation stopped by a graceful stop
	// or a lost lease reports neither.
	RotationFinished(key, result string, d time.Duration)
	// DEKsRewrapped adds n DEKs re-wrapped under a newer version of key
	// (by a rotation or by a retirement sweep).
	DEKsRewrapped(key string, n int)
	// CycleDone is called at the end of every cycle; ok is false when a
	// key failed or the keys could not be listed.
	CycleDone(at time.Time, ok bool)
}

// NopObserver is an Observer that does nothing; embed it to implement only
// some methods.
type NopObserver struct{}

// RotationFinished does nothing.
func (NopObserver) RotationFinished(string, string, time.Duration) {}

// DEKsRewrapped does nothing.
func (NopObserver) DEKsRewrapped(string, int) {}

// CycleDone does nothing.
func (NopObserver) CycleDone(time.Time, bool) {}

var _ Observer = NopObserver{}

// Engine runs rotations. It is safe for concurrent use; several engines
// (in one process or many) may share a store, and the store's leases and
// guarded writes keep them from stepping on each other.
type Engine struct {
	cfg   Config
	store rekey.Store
	deks  rekey.DEKSource
	log   *slog.Logger
	obs   Observer
	owner string

	// calls holds a token per backend call of a re-wrap in flight, at most
	// cfg.Concurrency: the bound holds across range workers and read-ahead.
	calls chan struct{}

	// testHook, when set (tests only), runs at every failpoint before the
	// failpoint set; an error it returns is injected there.
	testHook func(name string) error

	mu sync.Mutex
	// blocked remembers the DEK count last audited as retirement.blocked
	// per version, so that a still-blocked version is audited when its
	// count changes rather than every cycle.
	blocked map[versionRef]int64
	// unknownSeen is the last logged UnknownKeys, to log changes only.
	unknownSeen string
	// disabled remembers compromised versions this process already
	// disabled at the backend (RetireVersion is idempotent; this only
	// saves calls).
	disabled map[versionRef]bool
	// destroyBlocked: the last refusal to delete a moved key on its old
	// backend this process audited, by version (see leftbehind.go).
	destroyBlocked map[versionRef]string
}

type versionRef struct {
	key     string
	version int
}

// New returns an Engine for cfg. It returns an error wrapping
// rekey.ErrInvalidArgument when Store is missing or a number is negative.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("%w: rotation: Config.Store is required", rekey.ErrInvalidArgument)
	}
	if cfg.BatchSize < 0 || cfg.Concurrency < 0 || cfg.LeaseTTL < 0 || cfg.RangeWorkers < 0 {
		return nil, fmt.Errorf("%w: rotation: BatchSize, Concurrency, RangeWorkers and LeaseTTL must not be negative", rekey.ErrInvalidArgument)
	}
	if cfg.DEKs == nil {
		cfg.DEKs = cfg.Store
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Owner == "" {
		cfg.Owner = DefaultOwner()
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.RangeWorkers == 0 {
		cfg.RangeWorkers = 1
		if cw, ok := cfg.Store.(rekey.ConcurrentWriter); ok {
			cfg.RangeWorkers = max(cw.ConcurrentWrites(), 1)
		}
	}
	if cfg.Observer == nil {
		cfg.Observer = NopObserver{}
	}
	return &Engine{
		cfg:            cfg,
		store:          cfg.Store,
		deks:           cfg.DEKs,
		log:            cfg.Logger,
		obs:            cfg.Observer,
		owner:          cfg.Owner,
		calls:          make(chan struct{}, cfg.Concurrency),
		blocked:        make(map[versionRef]int64),
		disabled:       make(map[versionRef]bool),
		destroyBlocked: make(map[versionRef]string),
	}, nil
}

// Owner returns the worker id the engine writes into leases and audit
// events.
func (e *Engine) Owner() string { return e.owner }

// RangeWorkers is how many ranges of a shared re-wrap the engine works at
// once: Config.RangeWorkers, or the store's choice when that was 0.
func (e *Engine) RangeWorkers() int { return e.cfg.RangeWorkers }

func (e *Engine) now() time.Time { return rekey.NormalizeTime(e.cfg.Now()) }

// hit passes through a failpoint.
func (e *Engine) hit(name string) error {
	if h := e.testHook; h != nil {
		if err := h(name); err != nil {
			return err
		}
	}
	return e.cfg.Failpoints.Hit(name)
}

// event returns an audit event of type t for key, stamped now and signed by
// this worker.
func (e *Engine) event(t rekey.AuditType, key string) rekey.AuditEvent {
	return rekey.AuditEvent{Time: e.now(), Type: t, Key: key, Actor: e.owner}
}

// rotationEvent returns an audit event of type t about rotation r.
func (e *Engine) rotationEvent(t rekey.AuditType, r rekey.Rotation) rekey.AuditEvent {
	ev := e.event(t, r.Key)
	ev.FromVersion = r.FromVersion
	ev.ToVersion = r.ToVersion
	ev.RotationID = r.ID
	ev.DEKs = r.Done
	ev.Reason = reasonText(r)
	return ev
}

func reasonText(r rekey.Rotation) string {
	if r.Note == "" {
		return string(r.Reason)
	}
	return string(r.Reason) + ": " + r.Note
}

// backend is a key's KMS with its optional capabilities resolved once.
// The KMS is typically wrapped in middleware (rate limit, retry, metrics)
// that implements every optional interface; rekey.CapabilitiesOf says
// which ones the backend behind it really has, and only those are set.
type backend struct {
	name      string
	ref       string
	kms       rekey.KMS
	rewrapper rekey.Rewrapper
	batch     rekey.BatchRewrapper
	retirer   rekey.VersionRetirer
	finder    rekey.KeyFinder
	native    rekey.NativeRewrapper // for native DEK sources (Source.Native)
	deleter   rekey.KeyDeleter
	// rt resolves every version of the key to the backend holding it: a
	// key moved to another backend has versions on both (see move.go).
	rt *router
}

// backendFor returns k's backend, with a router for its versions.
func (e *Engine) backendFor(k rekey.Key) (*backend, error) {
	b, err := e.backendNamed(k.Name, k.Backend, k.BackendRef)
	if err != nil {
		return nil, err
	}
	b.rt = e.newRouter(k.Name, b)
	return b, nil
}

// dekGetter is the optional single-row read of a DEKSource (the Store has it).
type dekGetter interface {
	GetDEK(ctx context.Context, id string) (rekey.DEK, error)
}

// isFenced reports whether err means this worker lost the key's lease.
func isFenced(err error) bool { return errors.Is(err, rekey.ErrFenced) }

// truncate shortens an error text for the audit trail.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

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
	// Concurrency bounds the backend calls in flight per batch; 0 means 8.
	Concurrency int
	// LeaseTTL is the lifetime of a key lease; it is renewed every TTL/3.
	// 0 means 30s.
	LeaseTTL time.Duration
	// Retry is the policy for transient (rekey.IsTransient) errors.
	Retry RetryPolicy
	// Failpoints, when set, injects crashes and errors (see package
	// failpoint).
	Failpoints *failpoint.Set
	// Observer receives metrics hooks; nil means none.
	Observer Observer
	// KMSRateLimit caps the requests per second this engine sends to each
	// backend (a batch re-wrap is one request); 0 means no cap beyond the
	// backend's own.
	KMSRateLimit float64
}

// RetryPolicy says how transient errors are retried: exponential backoff
// with full jitter (a random sleep in (0, min(Max, Base·2^n)]), at most
// Attempts tries in all, abandoned when the context ends.
type RetryPolicy struct {
	Attempts int           // tries in all, the first included; 0 means 5
	Base     time.Duration // ceiling of the first backoff; 0 means 200ms
	Max      time.Duration // largest backoff ceiling; 0 means 10s
	NoJitter bool          // sleep the whole ceiling (deterministic tests)
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = 5
	}
	if p.Base <= 0 {
		p.Base = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 10 * time.Second
	}
	if p.Max < p.Base {
		p.Max = p.Base
	}
	return p
}

// Result values passed to Observer.RotationFinished and Observer.KMSCall.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
)

// Observer receives what the metrics need. Methods are called from the
// engine's goroutines, concurrently, and must not block.
type Observer interface {
	// RotationStarted is called when the engine starts or resumes driving
	// a rotation of key.
	RotationStarted(key string)
	// RotationFinished is called when that rotation reached done (result
	// "success") or failed this time (result "failure"); a rotation
	// stopped by a graceful stop or a lost lease reports neither.
	RotationFinished(key, result string, d time.Duration)
	// DEKsRewrapped adds n DEKs re-wrapped under a new version of key.
	DEKsRewrapped(key string, n int)
	// Progress reports the re-wrap progress of key's rotation, 0..1.
	Progress(key string, ratio float64)
	// KMSCall reports one backend call: op is current_version,
	// rotate_key, wrap, unwrap, rewrap, rewrap_batch, retire_version or
	// destroy_version; result is "success" or "failure".
	KMSCall(backend, op, result string, d time.Duration)
	// RetirementBlocked reports whether retiring version of key is
	// blocked by DEKs that still reference it.
	RetirementBlocked(key string, version int, blocked bool)
	// CycleDone is called at the end of every cycle; ok is false when a
	// key failed.
	CycleDone(at time.Time, ok bool)
}

// NopObserver is an Observer that does nothing; embed it to implement only
// some methods.
type NopObserver struct{}

// RotationStarted does nothing.
func (NopObserver) RotationStarted(string) {}

// RotationFinished does nothing.
func (NopObserver) RotationFinished(string, string, time.Duration) {}

// DEKsRewrapped does nothing.
func (NopObserver) DEKsRewrapped(string, int) {}

// Progress does nothing.
func (NopObserver) Progress(string, float64) {}

// KMSCall does nothing.
func (NopObserver) KMSCall(string, string, string, time.Duration) {}

// RetirementBlocked does nothing.
func (NopObserver) RetirementBlocked(string, int, bool) {}

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

	// testHook, when set (tests only), runs at every failpoint before the
	// failpoint set; an error it returns is injected there.
	testHook func(name string) error

	mu sync.Mutex
	// blocked remembers the DEK count last audited as retirement.blocked
	// per version, so that a still-blocked version is audited when its
	// count changes rather than every cycle.
	blocked map[versionRef]int64
	// disabled remembers compromised versions this process already
	// disabled at the backend (RetireVersion is idempotent; this only
	// saves calls).
	disabled map[versionRef]bool
	// limiters holds one rate limiter per backend name (KMSRateLimit).
	limiters map[string]*rateLimiter
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
	if cfg.BatchSize < 0 || cfg.Concurrency < 0 || cfg.LeaseTTL < 0 || cfg.KMSRateLimit < 0 {
		return nil, fmt.Errorf("%w: rotation: BatchSize, Concurrency, LeaseTTL and KMSRateLimit must not be negative", rekey.ErrInvalidArgument)
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
	cfg.Retry = cfg.Retry.withDefaults()
	if cfg.Observer == nil {
		cfg.Observer = NopObserver{}
	}
	return &Engine{
		cfg:      cfg,
		store:    cfg.Store,
		deks:     cfg.DEKs,
		log:      cfg.Logger,
		obs:      cfg.Observer,
		owner:    cfg.Owner,
		blocked:  make(map[versionRef]int64),
		disabled: make(map[versionRef]bool),
		limiters: make(map[string]*rateLimiter),
	}, nil
}

// Owner returns the worker id the engine writes into leases and audit
// events.
func (e *Engine) Owner() string { return e.owner }

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
type backend struct {
	name      string
	ref       string
	kms       rekey.KMS
	rewrapper rekey.Rewrapper
	batch     rekey.BatchRewrapper
	retirer   rekey.VersionRetirer
}

func (e *Engine) backendFor(k rekey.Key) (*backend, error) {
	kms, ok := e.cfg.Backends[k.Backend]
	if !ok || kms == nil {
		return nil, fmt.Errorf("key %s: backend %q is not configured: add it under backends", k.Name, k.Backend)
	}
	b := &backend{name: k.Backend, ref: k.BackendRef, kms: kms}
	b.rewrapper, _ = kms.(rekey.Rewrapper)
	b.batch, _ = kms.(rekey.BatchRewrapper)
	b.retirer, _ = kms.(rekey.VersionRetirer)
	return b, nil
}

// kmsCall runs one backend operation with the retry policy, reporting each
// try to the observer.
func (e *Engine) kmsCall(ctx context.Context, b *backend, op string, fn func(context.Context) error) error {
	limit := e.limiterFor(b.name)
	return e.retry(ctx, func(ctx context.Context) error {
		if err := limit.wait(ctx); err != nil {
			return err
		}
		start := time.Now()
		err := fn(ctx)
		result := ResultSuccess
		if err != nil {
			result = ResultFailure
		}
		e.obs.KMSCall(b.name, op, result, time.Since(start))
		return err
	})
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

// Package kmsmw is the middleware every rekey.KMS backend is wrapped in,
// once, where backends are opened: a rate limit (golang.org/x/time/rate),
// retries of transient failures (package retry), one metrics hook per
// backend request, and one place that classifies transport errors as
// *rekey.UnreachableError. Backend packages then only speak their API, and
// every caller (the engine, the Keyring, the CLI, /readyz) gets the same
// limits, retries and metrics.
//
// Wrap a backend once: a wrapped backend wrapped again would nest retries.
package kmsmw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"syscall"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/retry"
)

// Op names: the op label of Observer.KMSCall (and of the
// rekey_kms_requests_total metric), one per backend method.
const (
	OpCreateKey      = "create_key"
	OpCurrentVersion = "current_version"
	OpRotateKey      = "rotate_key"
	OpWrap           = "wrap"
	OpUnwrap         = "unwrap"
	OpRewrap         = "rewrap"
	OpRewrapBatch    = "rewrap_batch"
	OpRetireVersion  = "retire_version"
	OpDestroyVersion = "destroy_version"
	OpPing           = "ping"
	OpMAC            = "mac"
	OpFindKey        = "find_key"
	OpDeleteKey      = "delete_key"
)

// Ops returns every op name, in a fixed order (a new slice each call), for
// callers that pre-declare metric series.
func Ops() []string {
	return []string{
		OpCreateKey, OpCurrentVersion, OpRotateKey, OpWrap, OpUnwrap,
		OpRewrap, OpRewrapBatch, OpRetireVersion, OpDestroyVersion, OpPing, OpMAC, OpFindKey, OpDeleteKey,
	}
}

// Result values: the result label of Observer.KMSCall.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
	// ResultThrottled is a request the backend refused for its rate (the
	// error matches rekey.ErrThrottled); it lowers the request rate.
	ResultThrottled = "throttled"
)

// Observer receives one call per backend request (every try of a retried
// call; none for a call refused before it reached the backend, such as a
// rate-limit wait cut short by the context or an unsupported operation).
// backend is Options.Name, op one of the Op constants, result
// ResultSuccess, ResultThrottled or ResultFailure, and d the time the backend took (not the
// time spent waiting for the rate limiter). It must be safe for concurrent
// use and should return quickly.
type Observer interface {
	KMSCall(backend, op, result string, d time.Duration)
}

// Options configures Wrap. The zero value wraps with no rate limit, the
// default retry.Policy, no observer and no logging.
type Options struct {
	Name      string       // backend name (config key): metric label, error context
	RateLimit float64      // requests per second across all callers of this KMS; 0 = no limit
	Burst     int          // rate limiter burst; 0 means 1
	Retry     retry.Policy // for transient errors of retryable ops
	Observer  Observer     // nil = none
	Logger    *slog.Logger // nil = discard
	// Usage, when set, counts this backend's wraps in rekey's store and
	// refuses wraps past a key's max_encryptions, unless the backend
	// counts its own (a rekey.UsageCounter): see UsageOptions.
	Usage *UsageOptions

	// Now and Sleep are the rate limiter's clock; nil means the real
	// one (tests give a fake clock).
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
}

// KMS is a rekey.KMS wrapped in the middleware. It implements rekey.KMS
// and every optional interface (Rewrapper, BatchRewrapper, VersionRetirer,
// Pinger, MACer); Capabilities reports which of them the inner backend
// really offers, and an optional method the inner backend lacks returns an
// error matching rekey.ErrUnsupported without reaching it. It is safe for
// concurrent use when the inner backend is. Inner (or the function
// Unwrap) gives the inner backend back.
//
// Every request waits for the rate limiter first (every try; a batch
// re-wrap is one request). The rate adapts to throttling: a request the
// backend refuses for its rate (an error matching rekey.ErrThrottled)
// lowers it by DecreaseFactor (once per congestion event), and each second
// without throttling adds IncreasePerSecond of the ceiling back, up to
// Options.RateLimit. With no RateLimit, the first throttling starts a
// limit at the rate the backend was accepting (times DecreaseFactor), and
// recovery stops at that observed rate. Transient failures (rekey.IsTransient, after
// classification) are retried with Options.Retry, except for CreateKey and
// RotateKey, which are tried once: a lost reply could hide a key or version
// that was made, and a second try would make another. Errors are those of
// the inner backend, with transport failures turned into
// *rekey.UnreachableError (Service "kms:"+Name).
type KMS struct {
	inner   rekey.KMS
	caps    rekey.Capabilities
	name    string
	service string
	ad      *adaptive
	rps     float64 // Options.RateLimit
	retry   retry.Policy
	obs     Observer // never nil
	log     *slog.Logger
	usage   *usage // nil: the middleware does not count wraps
}

var (
	_ rekey.KMS                = (*KMS)(nil)
	_ rekey.Rewrapper          = (*KMS)(nil)
	_ rekey.BatchRewrapper     = (*KMS)(nil)
	_ rekey.VersionRetirer     = (*KMS)(nil)
	_ rekey.Pinger             = (*KMS)(nil)
	_ rekey.MACer              = (*KMS)(nil)
	_ rekey.CapabilityReporter = (*KMS)(nil)
	_ io.Closer                = (*KMS)(nil)
	_ rekey.UsageCounter       = (*KMS)(nil)
)

// Wrap returns inner wrapped in the middleware configured by o. inner must
// not be nil. The inner backend's capabilities are resolved once, here.
func Wrap(inner rekey.KMS, o Options) *KMS {
	k := &KMS{
		inner:   inner,
		caps:    rekey.CapabilitiesOf(inner),
		name:    o.Name,
		service: "kms:" + o.Name,
		retry:   o.Retry,
		obs:     o.Observer,
		log:     o.Logger,
	}
	if k.obs == nil {
		k.obs = nopObserver{}
	}
	if _, counts := inner.(rekey.UsageCounter); !counts {
		k.usage = newUsage(o.Name, o.Usage)
	}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	if o.RateLimit > 0 {
		k.rps = o.RateLimit
	}
	now, sleep := o.Now, o.Sleep
	if now == nil {
		now = time.Now
	}
	if sleep == nil {
		sleep = sleepCtx
	}
	k.ad = newAdaptive(k.rps, o.Burst, now, sleep)
	return k
}

type nopObserver struct{}

func (nopObserver) KMSCall(string, string, string, time.Duration) {}

// Inner returns the inner backend, for callers that need a method beyond
// the rekey interfaces. Calls made on it bypass the middleware. (It cannot
// be called Unwrap: rekey.KMS has an Unwrap method of its own.)
func (k *KMS) Inner() rekey.KMS { return k.inner }

// Unwrap returns the backend inside k when k is a *KMS (a wrapped
// backend), else k itself.
func Unwrap(k rekey.KMS) rekey.KMS {
	if w, ok := k.(*KMS); ok {
		return w.inner
	}
	return k
}

// RateLimit returns the request rate (per second) the wrapper holds the
// backend to, Options.RateLimit; 0 means no limit.
func (k *KMS) RateLimit() float64 { return k.rps }

// CurrentRate returns the request rate in force now: RateLimit, lowered
// after throttling and on its way back; 0 means no limit (none configured
// and no throttling seen).
func (k *KMS) CurrentRate() float64 { return k.ad.rateNow() }

// Name returns Options.Name.
func (k *KMS) Name() string { return k.name }

// Capabilities implements rekey.CapabilityReporter: the optional
// interfaces the inner backend really offers (rekey.CapabilitiesOf(inner)).
func (k *KMS) Capabilities() rekey.Capabilities { return k.caps }

// Close closes the inner backend when it is an io.Closer, and returns nil
// otherwise.
func (k *KMS) Close() error {
	if c, ok := k.inner.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// CreateKey implements rekey.KMS. It is tried once, never retried.
func (k *KMS) CreateKey(ctx context.Context, name string) (string, error) {
	var ref string
	err := k.once(ctx, OpCreateKey, func(ctx context.Context) (err error) {
		ref, err = k.inner.CreateKey(ctx, name)
		return err
	})
	return ref, err
}

// CurrentVersion implements rekey.KMS, retrying transient failures.
func (k *KMS) CurrentVersion(ctx context.Context, ref string) (int, error) {
	var v int
	err := k.retried(ctx, OpCurrentVersion, func(ctx context.Context) (err error) {
		v, err = k.inner.CurrentVersion(ctx, ref)
		return err
	})
	return v, err
}

// RotateKey implements rekey.KMS. It is tried once, never retried: after a
// transient failure the caller must look at CurrentVersion again before it
// rotates again.
func (k *KMS) RotateKey(ctx context.Context, ref string) (int, error) {
	var v int
	err := k.once(ctx, OpRotateKey, func(ctx context.Context) (err error) {
		v, err = k.inner.RotateKey(ctx, ref)
		return err
	})
	return v, err
}

// Wrap implements rekey.KMS, retrying transient failures.
func (k *KMS) Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	var out []byte
	err := k.retriedCounted(ctx, OpWrap, ref, version, 1, func(ctx context.Context) (err error) {
		out, err = k.inner.Wrap(ctx, ref, version, plaintext)
		return err
	})
	return out, err
}

// Unwrap implements rekey.KMS, retrying transient failures.
func (k *KMS) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	var out []byte
	err := k.retried(ctx, OpUnwrap, func(ctx context.Context) (err error) {
		out, err = k.inner.Unwrap(ctx, ref, version, wrapped)
		return err
	})
	return out, err
}

// Rewrap implements rekey.Rewrapper, retrying transient failures. It
// returns an error matching rekey.ErrUnsupported when the inner backend is
// not a Rewrapper.
func (k *KMS) Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	rw, ok := k.inner.(rekey.Rewrapper)
	if !ok || !k.caps.Rewrap {
		return nil, k.unsupported(OpRewrap)
	}
	var out []byte
	err := k.retriedCounted(ctx, OpRewrap, ref, toVersion, 1, func(ctx context.Context) (err error) {
		out, err = rw.Rewrap(ctx, ref, fromVersion, wrapped, toVersion)
		return err
	})
	return out, err
}

// RewrapBatch implements rekey.BatchRewrapper. The batch is one request
// and is retried as a whole while the call fails transiently or any item's
// Err is transient. When the retries are spent on a transient item error,
// it returns no results and that error (rekey.IsTransient holds). A backend
// that returns another number of results than items gives an error (not
// transient). It returns an error matching rekey.ErrUnsupported when the
// inner backend is not a BatchRewrapper.
func (k *KMS) RewrapBatch(ctx context.Context, ref string, toVersion int, items []rekey.RewrapItem) ([]rekey.RewrapResult, error) {
	brw, ok := k.inner.(rekey.BatchRewrapper)
	if !ok || !k.caps.BatchRewrap {
		return nil, k.unsupported(OpRewrapBatch)
	}
	var results []rekey.RewrapResult
	err := k.retriedCounted(ctx, OpRewrapBatch, ref, toVersion, len(items), func(ctx context.Context) error {
		res, err := brw.RewrapBatch(ctx, ref, toVersion, items)
		if err != nil {
			return err
		}
		if len(res) != len(items) {
			return fmt.Errorf("kms %s: re-wrap batch: backend returned %d results for %d items", k.name, len(res), len(items))
		}
		for i := range res {
			if res[i].Err == nil {
				continue
			}
			res[i].Err = k.classify(ctx, res[i].Err)
			if rekey.IsTransient(res[i].Err) {
				return fmt.Errorf("re-wrap batch item %d of %d: %w", i+1, len(items), res[i].Err)
			}
		}
		results = res
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// RetireVersion implements rekey.VersionRetirer, retrying transient
// failures (it is idempotent). It returns an error matching
// rekey.ErrUnsupported when the inner backend is not a VersionRetirer.
func (k *KMS) RetireVersion(ctx context.Context, ref string, version int) error {
	vr, ok := k.inner.(rekey.VersionRetirer)
	if !ok || !k.caps.RetireVersion {
		return k.unsupported(OpRetireVersion)
	}
	return k.retried(ctx, OpRetireVersion, func(ctx context.Context) error {
		return vr.RetireVersion(ctx, ref, version)
	})
}

// DestroyVersion implements rekey.VersionRetirer, retrying transient
// failures (it is idempotent). It returns an error matching
// rekey.ErrUnsupported when the inner backend is not a VersionRetirer.
func (k *KMS) DestroyVersion(ctx context.Context, ref string, version int) error {
	vr, ok := k.inner.(rekey.VersionRetirer)
	if !ok || !k.caps.RetireVersion {
		return k.unsupported(OpDestroyVersion)
	}
	return k.retried(ctx, OpDestroyVersion, func(ctx context.Context) error {
		return vr.DestroyVersion(ctx, ref, version)
	})
}

// Ping implements rekey.Pinger. It is tried once, not retried: it is a
// health check (/readyz, status), whose caller wants the backend's own
// answer now (a sealed Vault, a wrong PIN), not a timeout after retries.
// It returns an error matching rekey.ErrUnsupported when the inner backend
// is not a Pinger.
func (k *KMS) Ping(ctx context.Context) error {
	p, ok := k.inner.(rekey.Pinger)
	if !ok || !k.caps.Ping {
		return k.unsupported(OpPing)
	}
	return k.once(ctx, OpPing, p.Ping)
}

// MAC implements rekey.MACer, retrying transient failures. It returns an
// error matching rekey.ErrUnsupported when the inner backend is not a
// MACer.
func (k *KMS) MAC(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	m, ok := k.inner.(rekey.MACer)
	if !ok || !k.caps.MAC {
		return nil, k.unsupported(OpMAC)
	}
	var out []byte
	err := k.retried(ctx, OpMAC, func(ctx context.Context) (err error) {
		out, err = m.MAC(ctx, purpose, data)
		return err
	})
	return out, err
}

// FindKey implements rekey.KeyFinder, retrying transient failures (it
// only reads). It returns an error matching rekey.ErrUnsupported when the
// inner backend is not a KeyFinder.
func (k *KMS) FindKey(ctx context.Context, name string) (string, error) {
	f, ok := k.inner.(rekey.KeyFinder)
	if !ok || !k.caps.FindKey {
		return "", k.unsupported(OpFindKey)
	}
	var ref string
	err := k.retried(ctx, OpFindKey, func(ctx context.Context) (err error) {
		ref, err = f.FindKey(ctx, name)
		return err
	})
	return ref, err
}

// DeleteKey implements rekey.KeyDeleter, retrying transient failures
// (DeleteKey is idempotent). It returns an error matching
// rekey.ErrUnsupported when the inner backend is not a KeyDeleter.
func (k *KMS) DeleteKey(ctx context.Context, ref string) error {
	d, ok := k.inner.(rekey.KeyDeleter)
	if !ok || !k.caps.DeleteKey {
		return k.unsupported(OpDeleteKey)
	}
	return k.retried(ctx, OpDeleteKey, func(ctx context.Context) error {
		return d.DeleteKey(ctx, ref)
	})
}

func (k *KMS) unsupported(op string) error {
	return fmt.Errorf("kms %s: %s: %w", k.name, op, rekey.ErrUnsupported)
}

// retried runs one request with the retry policy.
func (k *KMS) retried(ctx context.Context, op string, fn func(context.Context) error) error {
	return k.retriedCounted(ctx, op, "", 0, 0, fn)
}

// retriedCounted is retried for a call that wraps n times under version
// of ref: before each try (a failed try may have encrypted at the
// backend) the wraps are counted (countWraps), outside the request's
// metrics; a refusal (the key's limit) is not retried.
func (k *KMS) retriedCounted(ctx context.Context, op, ref string, version, n int, fn func(context.Context) error) error {
	attempt := 0
	return k.retry.Do(ctx, func(ctx context.Context) error {
		attempt++
		if err := k.countWraps(ctx, ref, version, n); err != nil {
			return err
		}
		err := k.try(ctx, op, fn)
		if err != nil && rekey.IsTransient(err) {
			k.log.LogAttrs(ctx, slog.LevelDebug, "kms request failed transiently",
				slog.String("backend", k.name), slog.String("op", op),
				slog.Int("attempt", attempt), slog.String("error", err.Error()))
		}
		return err
	})
}

// once runs one request, a single try.
func (k *KMS) once(ctx context.Context, op string, fn func(context.Context) error) error {
	return k.try(ctx, op, fn)
}

// try is one backend request: rate limit, call, classify, observe.
func (k *KMS) try(ctx context.Context, op string, fn func(context.Context) error) error {
	gen, err := k.wait(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	err = k.classify(ctx, fn(ctx))
	result := ResultSuccess
	switch {
	case err == nil:
		k.ad.success()
	case errors.Is(err, rekey.ErrThrottled):
		result = ResultThrottled
		if r, lowered := k.ad.throttled(gen); lowered {
			k.log.LogAttrs(ctx, slog.LevelInfo, "kms throttled the request rate: lowering it",
				slog.String("backend", k.name), slog.String("op", op), slog.Float64("rate_per_s", r))
		}
	default:
		result = ResultFailure
	}
	k.obs.KMSCall(k.name, op, result, time.Since(start))
	return err
}

// wait blocks until the rate limiter lets one request through. It fails
// when ctx ends first, or at once when ctx's deadline would pass before
// the request's turn (the error then matches context.DeadlineExceeded).
func (k *KMS) wait(ctx context.Context) (uint64, error) {
	gen, err := k.ad.wait(ctx)
	if err == nil {
		return gen, nil
	}
	if ctx.Err() != nil {
		return 0, fmt.Errorf("kms %s: waiting for the rate limit: %w", k.name, context.Cause(ctx))
	}
	// The deadline would pass before our turn.
	return 0, fmt.Errorf("kms %s: waiting for the rate limit: %w (%v)", k.name, context.DeadlineExceeded, err)
}

// sentinels are the errors a backend reports on purpose; they pass
// classification unchanged.
var sentinels = []error{
	rekey.ErrKeyNotFound, rekey.ErrKeyExists, rekey.ErrVersionNotFound,
	rekey.ErrVersionDisabled, rekey.ErrInvalidCiphertext, rekey.ErrWrongKey,
	rekey.ErrWrongVersion, rekey.ErrUsageLimit, rekey.ErrUnsupported,
	rekey.ErrInvalidArgument, rekey.ErrConflict, rekey.ErrStale,
}

// classify is the one place where a backend's error is sorted: nil stays
// nil; an error that already is (or wraps) an *rekey.UnreachableError or a
// rekey sentinel passes unchanged; the end of the caller's context passes
// unchanged; a transport failure (net.Error, *url.Error,
// io.ErrUnexpectedEOF, a connection reset, refused or broken, a deadline
// that is not the caller's) becomes an *rekey.UnreachableError for
// "kms:"+Name. Anything else passes unchanged and is not retried.
func (k *KMS) classify(ctx context.Context, err error) error {
	if err == nil || rekey.IsTransient(err) {
		return err
	}
	if errors.Is(err, rekey.ErrThrottled) {
		return &rekey.UnreachableError{Service: k.service, Err: err} // retry later, more slowly
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return err
		}
	}
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return err // the caller's context ended: not the backend's fault
	}
	if isTransport(err) {
		return &rekey.UnreachableError{Service: k.service, Err: err}
	}
	return err
}

// isTransport reports whether err is a failure to reach the backend or to
// get its whole answer.
func isTransport(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true // a deadline of the backend's client, not the caller's
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var ue *url.Error
	return errors.As(err, &ue)
}

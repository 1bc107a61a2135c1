// Package faultkms wraps any rekey.KMS in seeded fault injection, for
// torture tests: injected transient errors, random latency, throttling
// above a request rate, and lost replies ("the call succeeded at the
// backend but its reply never arrived"). It is a test tool; nothing in
// rekey's production wiring uses it.
//
// In a test stack it sits inside the middleware, as a flaky cloud KMS
// would, so that kms/kmsmw's retries (and the engine's rule 2) see its
// faults:
//
//	k := kmsmw.Wrap(faultkms.Wrap(inner, faultkms.Config{Seed: seed, ErrorRate: 0.2}), kmsmw.Options{…})
//
// Every fault it injects is an *rekey.UnreachableError (rekey.IsTransient
// holds), whose chain matches ErrInjected, ErrThrottled or ErrLostReply.
package faultkms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
)

// Service is the Service of the *rekey.UnreachableError faults.
const Service = "kms:fault"

// The faults, matched with errors.Is. Each is returned inside an
// *rekey.UnreachableError, so it is transient.
var (
	// ErrInjected is an injected failure: the inner backend was not
	// called.
	ErrInjected = errors.New("faultkms: injected backend failure (the call did not reach the backend)")
	// ErrThrottled is a throttling refusal (Config.ThrottleAbove): the
	// inner backend was not called.
	// It also matches rekey.ErrThrottled, as a real backend's throttling
	// does, so that kmsmw's adaptive rate reacts to it.
	ErrThrottled error = throttledError{"faultkms: throttled: request rate above the backend's limit (the call did not reach the backend)"}
	// ErrLostReply is a lost reply: the inner backend ran the call and
	// succeeded, and its result was dropped.
	ErrLostReply = errors.New("faultkms: reply lost (the call did run at the backend)")
)

// throttledError is ErrThrottled's type: it matches rekey.ErrThrottled too.
type throttledError struct{ msg string }

func (e throttledError) Error() string        { return e.msg }
func (e throttledError) Is(target error) bool { return target == rekey.ErrThrottled }

// Config says which faults to inject. The zero Config injects none: the
// wrapper then passes every call on unchanged (and counts it).
type Config struct {
	// Seed seeds the random source that decides every fault; equal seeds
	// and equal call sequences give equal faults.
	Seed int64
	// ErrorRate is the probability, in [0, 1], that a call fails with
	// ErrInjected without reaching the inner backend.
	ErrorRate float64
	// Latency is the most a call is delayed (uniformly at random in
	// [0, Latency]) before it reaches the inner backend; 0 means none. A
	// context that ends during the delay ends the call with its cause.
	Latency time.Duration
	// ThrottleAbove is a request rate (per second); calls above it (a
	// token bucket of that rate whose burst is the rate rounded up, at
	// least 1) fail with ErrThrottled without reaching the inner backend
	// and without using a token. 0 means no throttling.
	ThrottleAbove float64
	// LostReplyRate is the probability, in [0, 1], that a call the inner
	// backend completed successfully returns ErrLostReply instead of its
	// result (a plaintext result is zeroed first). A call the inner
	// backend failed returns the inner error unchanged.
	LostReplyRate float64
	// Ops lists the faulted operations by kmsmw's op names
	// (kmsmw.OpWrap, …); nil means every op. Calls of the other ops pass
	// unchanged and are counted only.
	Ops []string
	// Now is the clock of the throttle; nil means time.Now.
	Now func() time.Time
}

// Validate returns an error naming the first field out of range: a rate
// outside [0, 1] or NaN, a negative Latency or ThrottleAbove, or an op
// name that is not one of kmsmw.Ops().
func (c Config) Validate() error {
	for _, r := range []struct {
		name string
		v    float64
	}{{"ErrorRate", c.ErrorRate}, {"LostReplyRate", c.LostReplyRate}} {
		if math.IsNaN(r.v) || r.v < 0 || r.v > 1 {
			return fmt.Errorf("faultkms: Config.%s is %v: it is a probability, give a value from 0 to 1", r.name, r.v)
		}
	}
	if c.Latency < 0 {
		return fmt.Errorf("faultkms: Config.Latency is %v: give 0 (none) or a positive maximum", c.Latency)
	}
	if math.IsNaN(c.ThrottleAbove) || math.IsInf(c.ThrottleAbove, 0) || c.ThrottleAbove < 0 {
		return fmt.Errorf("faultkms: Config.ThrottleAbove is %v: give 0 (no throttling) or a positive rate per second", c.ThrottleAbove)
	}
	known := kmsmw.Ops()
	for _, op := range c.Ops {
		if !slices.Contains(known, op) {
			return fmt.Errorf("faultkms: Config.Ops: unknown op %q: use kmsmw's op names %v", op, known)
		}
	}
	return nil
}

// OpStats counts what happened to the calls of one op.
type OpStats struct {
	Calls       int64 // calls received (faulted or not)
	Errors      int64 // failed with ErrInjected
	LostReplies int64 // ran at the inner backend, then failed with ErrLostReply
	Throttled   int64 // failed with ErrThrottled
}

// Faults returns the calls that failed by injection of any kind.
func (s OpStats) Faults() int64 { return s.Errors + s.LostReplies + s.Throttled }

// KMS is a rekey.KMS with faults injected in front of an inner backend.
// It implements rekey.KMS and every optional interface (Rewrapper,
// BatchRewrapper, VersionRetirer, Pinger, MACer); Capabilities reports the
// inner backend's, and an optional method the inner backend lacks returns
// an error matching rekey.ErrUnsupported without a fault or a count. It is
// safe for concurrent use when the inner backend is. Its faults are
// deterministic for a seed and a call order; concurrent callers make the
// order, and so the faults, vary.
type KMS struct {
	inner    rekey.KMS
	caps     rekey.Capabilities
	cfg      Config
	faulted  map[string]bool // nil: every op
	throttle *rate.Limiter   // nil: none
	now      func() time.Time

	mu    sync.Mutex // guards rng and stats
	rng   *rand.Rand
	stats map[string]*OpStats
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
)

// Wrap returns inner with the faults of cfg injected. inner must not be
// nil, and cfg must pass Validate: Wrap panics otherwise (it is a test
// tool, and a misconfigured torture must not pass quietly).
func Wrap(inner rekey.KMS, cfg Config) *KMS {
	if inner == nil {
		panic("faultkms: Wrap: inner backend is nil")
	}
	if err := cfg.Validate(); err != nil {
		panic(err.Error())
	}
	k := &KMS{
		inner: inner,
		caps:  rekey.CapabilitiesOf(inner),
		cfg:   cfg,
		now:   cfg.Now,
		rng:   rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5eed_fa17)),
		stats: make(map[string]*OpStats),
	}
	// Native re-wraps (rekey.NativeRewrapper) are not passed through:
	// say so rather than offer what a call could not reach.
	k.caps.NativeRewrap = false
	if k.now == nil {
		k.now = time.Now
	}
	if cfg.Ops != nil {
		k.faulted = make(map[string]bool, len(cfg.Ops))
		for _, op := range cfg.Ops {
			k.faulted[op] = true
		}
	}
	if cfg.ThrottleAbove > 0 {
		k.throttle = rate.NewLimiter(rate.Limit(cfg.ThrottleAbove), max(1, int(math.Ceil(cfg.ThrottleAbove))))
	}
	return k
}

// Inner returns the wrapped backend; calls made on it inject nothing.
func (k *KMS) Inner() rekey.KMS { return k.inner }

// Config returns the configuration Wrap was given.
func (k *KMS) Config() Config { return k.cfg }

// Capabilities implements rekey.CapabilityReporter: the optional
// interfaces the inner backend offers (rekey.CapabilitiesOf(inner)).
func (k *KMS) Capabilities() rekey.Capabilities { return k.caps }

// Stats returns a copy of the counters, by op name; an op never called is
// absent.
func (k *KMS) Stats() map[string]OpStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]OpStats, len(k.stats))
	for op, s := range k.stats {
		out[op] = *s
	}
	return out
}

// Close closes the inner backend when it is an io.Closer, and returns nil
// otherwise.
func (k *KMS) Close() error {
	if c, ok := k.inner.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// draws are the random numbers one faulted call uses. Every faulted call
// takes all three, whatever it uses, so that a call sequence maps to
// faults the same way whatever the configuration's rates.
type draws struct {
	latency, fail, lost float64
}

// before counts a call of op and decides its faults up to the inner call:
// it returns the lost-reply draw, or the fault to return instead of
// calling the inner backend.
func (k *KMS) before(ctx context.Context, op string) (lost bool, err error) {
	faulted := k.faulted == nil || k.faulted[op]
	k.mu.Lock()
	s := k.stats[op]
	if s == nil {
		s = &OpStats{}
		k.stats[op] = s
	}
	s.Calls++
	if !faulted {
		k.mu.Unlock()
		return false, nil
	}
	d := draws{k.rng.Float64(), k.rng.Float64(), k.rng.Float64()}
	if k.throttle != nil && !k.throttle.AllowN(k.now(), 1) {
		s.Throttled++
		k.mu.Unlock()
		return false, fault(op, ErrThrottled)
	}
	failNow := d.fail < k.cfg.ErrorRate
	if failNow {
		s.Errors++
	}
	k.mu.Unlock()

	if k.cfg.Latency > 0 {
		if err := sleep(ctx, time.Duration(d.latency*float64(k.cfg.Latency))); err != nil {
			return false, err
		}
	}
	if failNow {
		return false, fault(op, ErrInjected)
	}
	return d.lost < k.cfg.LostReplyRate, nil
}

// lose counts a lost reply of op and returns its fault.
func (k *KMS) lose(op string) error {
	k.mu.Lock()
	k.stats[op].LostReplies++
	k.mu.Unlock()
	return fault(op, ErrLostReply)
}

func fault(op string, err error) error {
	return &rekey.UnreachableError{Service: Service, Err: fmt.Errorf("%s: %w", op, err)}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

func (k *KMS) unsupported(op string) error {
	return fmt.Errorf("faultkms: %s: %w", op, rekey.ErrUnsupported)
}

// call runs fn, the inner call of op, with op's faults. lost reports that
// fn succeeded and its reply was then lost (err is the fault): the caller
// drops (and zeroes) what fn returned.
func (k *KMS) call(ctx context.Context, op string, fn func() error) (lost bool, err error) {
	lose, err := k.before(ctx, op)
	if err != nil {
		return false, err
	}
	if err := fn(); err != nil {
		return false, err
	}
	if lose {
		return true, k.lose(op)
	}
	return false, nil
}

// CreateKey implements rekey.KMS. After a lost reply the key exists at
// the inner backend.
func (k *KMS) CreateKey(ctx context.Context, name string) (string, error) {
	var ref string
	if _, err := k.call(ctx, kmsmw.OpCreateKey, func() (err error) {
		ref, err = k.inner.CreateKey(ctx, name)
		return err
	}); err != nil {
		return "", err
	}
	return ref, nil
}

// CurrentVersion implements rekey.KMS.
func (k *KMS) CurrentVersion(ctx context.Context, ref string) (int, error) {
	var v int
	if _, err := k.call(ctx, kmsmw.OpCurrentVersion, func() (err error) {
		v, err = k.inner.CurrentVersion(ctx, ref)
		return err
	}); err != nil {
		return 0, err
	}
	return v, nil
}

// RotateKey implements rekey.KMS. After a lost reply the new version
// exists at the inner backend.
func (k *KMS) RotateKey(ctx context.Context, ref string) (int, error) {
	var v int
	if _, err := k.call(ctx, kmsmw.OpRotateKey, func() (err error) {
		v, err = k.inner.RotateKey(ctx, ref)
		return err
	}); err != nil {
		return 0, err
	}
	return v, nil
}

// Wrap implements rekey.KMS.
func (k *KMS) Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	var out []byte
	if _, err := k.call(ctx, kmsmw.OpWrap, func() (err error) {
		out, err = k.inner.Wrap(ctx, ref, version, plaintext)
		return err
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// Unwrap implements rekey.KMS. The plaintext of a lost reply is zeroed
// before it is dropped.
func (k *KMS) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	var out []byte
	lost, err := k.call(ctx, kmsmw.OpUnwrap, func() (err error) {
		out, err = k.inner.Unwrap(ctx, ref, version, wrapped)
		return err
	})
	if lost {
		clear(out)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Rewrap implements rekey.Rewrapper. It returns an error matching
// rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	rw, ok := k.inner.(rekey.Rewrapper)
	if !ok || !k.caps.Rewrap {
		return nil, k.unsupported(kmsmw.OpRewrap)
	}
	var out []byte
	if _, err := k.call(ctx, kmsmw.OpRewrap, func() (err error) {
		out, err = rw.Rewrap(ctx, ref, fromVersion, wrapped, toVersion)
		return err
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// RewrapBatch implements rekey.BatchRewrapper. A fault is for the whole
// call; per-item errors are the inner backend's. It returns an error
// matching rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) RewrapBatch(ctx context.Context, ref string, toVersion int, items []rekey.RewrapItem) ([]rekey.RewrapResult, error) {
	brw, ok := k.inner.(rekey.BatchRewrapper)
	if !ok || !k.caps.BatchRewrap {
		return nil, k.unsupported(kmsmw.OpRewrapBatch)
	}
	var out []rekey.RewrapResult
	if _, err := k.call(ctx, kmsmw.OpRewrapBatch, func() (err error) {
		out, err = brw.RewrapBatch(ctx, ref, toVersion, items)
		return err
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// RetireVersion implements rekey.VersionRetirer. It returns an error
// matching rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) RetireVersion(ctx context.Context, ref string, version int) error {
	vr, ok := k.inner.(rekey.VersionRetirer)
	if !ok || !k.caps.RetireVersion {
		return k.unsupported(kmsmw.OpRetireVersion)
	}
	_, err := k.call(ctx, kmsmw.OpRetireVersion, func() error { return vr.RetireVersion(ctx, ref, version) })
	return err
}

// DestroyVersion implements rekey.VersionRetirer. It returns an error
// matching rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) DestroyVersion(ctx context.Context, ref string, version int) error {
	vr, ok := k.inner.(rekey.VersionRetirer)
	if !ok || !k.caps.RetireVersion {
		return k.unsupported(kmsmw.OpDestroyVersion)
	}
	_, err := k.call(ctx, kmsmw.OpDestroyVersion, func() error { return vr.DestroyVersion(ctx, ref, version) })
	return err
}

// Ping implements rekey.Pinger. It returns an error matching
// rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) Ping(ctx context.Context) error {
	p, ok := k.inner.(rekey.Pinger)
	if !ok || !k.caps.Ping {
		return k.unsupported(kmsmw.OpPing)
	}
	_, err := k.call(ctx, kmsmw.OpPing, func() error { return p.Ping(ctx) })
	return err
}

// MAC implements rekey.MACer. It returns an error matching
// rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) MAC(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	m, ok := k.inner.(rekey.MACer)
	if !ok || !k.caps.MAC {
		return nil, k.unsupported(kmsmw.OpMAC)
	}
	var out []byte
	if _, err := k.call(ctx, kmsmw.OpMAC, func() (err error) {
		out, err = m.MAC(ctx, purpose, data)
		return err
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteKey implements rekey.KeyDeleter. It returns an error matching
// rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) DeleteKey(ctx context.Context, ref string) error {
	d, ok := k.inner.(rekey.KeyDeleter)
	if !ok || !k.caps.DeleteKey {
		return k.unsupported(kmsmw.OpDeleteKey)
	}
	_, err := k.call(ctx, kmsmw.OpDeleteKey, func() error { return d.DeleteKey(ctx, ref) })
	return err
}

// FindKey implements rekey.KeyFinder. It returns an error matching
// rekey.ErrUnsupported when the inner backend does not offer it.
func (k *KMS) FindKey(ctx context.Context, name string) (string, error) {
	f, ok := k.inner.(rekey.KeyFinder)
	if !ok || !k.caps.FindKey {
		return "", k.unsupported(kmsmw.OpFindKey)
	}
	var ref string
	if _, err := k.call(ctx, kmsmw.OpFindKey, func() (err error) {
		ref, err = f.FindKey(ctx, name)
		return err
	}); err != nil {
		return "", err
	}
	return ref, nil
}

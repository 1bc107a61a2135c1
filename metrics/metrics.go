// Package metrics exports rekey's Prometheus metrics (the names, types and
// labels of DESIGN.md, "Metrics") on a registry the caller passes in. It
// never touches the global registry.
//
// A *Metrics is fed from two sides:
//   - the rotation engine calls its Observer methods (RotationStarted,
//     RotationFinished, DEKsRewrapped, Progress, KMSCall, RetirementBlocked,
//     CycleDone) as things happen: counters, histograms, the worker's
//     dead-man's switch;
//   - Refresh reads the store and sets the gauges that describe state (active
//     version, expiry, DEKs per version and state, retirement blocked,
//     rotation progress), so that they are right after a restart and agree
//     with the store whichever replica did the work.
//
// Init pre-creates the counter series whose labels are known at start, at 0,
// so that rate() and increase() see the first event.
//
// Labels hold only key names, version numbers, version states, backend
// names, backend operations and results — never key material.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekeyhq/rekey"
)

// Metric names: the contract of DESIGN.md.
const (
	NameRotationFailures   = "rekey_rotation_failures_total"
	NameRotations          = "rekey_rotations_total"
	NameRotationDuration   = "rekey_rotation_duration_seconds"
	NameKeyExpiry          = "rekey_key_expiry_timestamp_seconds"
	NameKeyVersion         = "rekey_key_version"
	NameDEKs               = "rekey_deks"
	NameRewrappedDEKs      = "rekey_rewrapped_deks_total"
	NameRotationProgress   = "rekey_rotation_progress_ratio"
	NameRetirementBlocked  = "rekey_retirement_blocked"
	NameKMSRequests        = "rekey_kms_requests_total"
	NameKMSRequestDuration = "rekey_kms_request_duration_seconds"
	NameWorkerLastCycle    = "rekey_worker_last_cycle_timestamp_seconds"
	NameWorkerLastSuccess  = "rekey_worker_last_success_timestamp_seconds"
	NameAuditChainValid    = "rekey_audit_chain_valid"
	NameBackendInfo        = "rekey_backend_info" // extension: backend name -> type
)

const (
	resultSuccess = "success" // rotation.ResultSuccess
	resultFailure = "failure" // rotation.ResultFailure
	stateUnknown  = "unknown" // the state label of DEKs on a version the store does not list
)

// DefaultKMSOps returns the backend operations the rotation engine reports
// through KMSCall (rotation.Observer's documentation lists them). Init uses
// them when it is given none.
func DefaultKMSOps() []string {
	return []string{
		"current_version", "rotate_key", "wrap", "unwrap", "rewrap",
		"rewrap_batch", "retire_version", "destroy_version",
	}
}

// RotationDurationBuckets are the upper bounds (seconds) of
// rekey_rotation_duration_seconds: a rotation takes seconds for a few DEKs
// and hours for tens of millions.
func RotationDurationBuckets() []float64 {
	return []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400}
}

// KMSDurationBuckets are the upper bounds (seconds) of
// rekey_kms_request_duration_seconds: from an in-process keyring (well under
// a millisecond) to a slow cloud KMS call with retries inside the SDK.
func KMSDurationBuckets() []float64 {
	return []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
}

// Metrics holds rekey's collectors. Its methods are safe for concurrent use
// and never block on anything but a short internal lock; the Observer
// methods never panic on odd label values (they drop the sample instead).
//
// *Metrics has the method set of rotation.Observer, so it can be passed as
// the engine's Observer.
type Metrics struct {
	rotationFailures  *prometheus.CounterVec
	rotations         *prometheus.CounterVec
	rotationDuration  *prometheus.HistogramVec
	keyExpiry         *prometheus.GaugeVec
	keyVersion        *prometheus.GaugeVec
	deks              *prometheus.GaugeVec
	rewrapped         *prometheus.CounterVec
	progress          *prometheus.GaugeVec
	retirementBlocked *prometheus.GaugeVec
	kmsRequests       *prometheus.CounterVec
	kmsDuration       *prometheus.HistogramVec
	lastCycle         prometheus.Gauge
	lastSuccess       prometheus.Gauge
	auditValid        *prometheus.GaugeVec // no labels: exported only once set
	backendInfo       *prometheus.GaugeVec

	mu   sync.Mutex
	keys map[string]*keySeries // keys with series, and what Refresh set for them
}

// keySeries remembers the label values of one key's per-version series, so
// that Refresh can delete those that no longer match the store.
type keySeries struct {
	deks    map[dekLabels]bool // (version, state) of rekey_deks
	blocked map[string]bool    // version of rekey_retirement_blocked
}

type dekLabels struct{ version, state string }

// New creates rekey's collectors and registers them on reg. A nil reg means
// a private registry nobody scrapes (the metrics are kept, not exported).
// It returns an error, and leaves reg as it was, when a collector cannot be
// registered — for instance because New was already called with reg
// (prometheus.AlreadyRegisteredError is in the chain).
func New(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		rotationFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameRotationFailures,
			Help: "Rotations of the key that failed (each failed attempt counts; the rotation resumes next cycle).",
		}, []string{"key"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameRotations,
			Help: "Rotation attempts of the key that ended, by result (success: the rotation reached done; failure: it failed this time).",
		}, []string{"key", "result"}),
		rotationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameRotationDuration,
			Help:    "Time the engine spent driving a rotation of the key to done, in the attempt that finished it.",
			Buckets: RotationDurationBuckets(),
		}, []string{"key"}),
		keyExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: NameKeyExpiry,
			Help: "Unix time at which the active version's rotation period ends (0 if the store has none).",
		}, []string{"key"}),
		keyVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: NameKeyVersion,
			Help: "Active version of the key.",
		}, []string{"key"}),
		deks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: NameDEKs,
			Help: "DEKs wrapped under each version of the key; state is the version's state.",
		}, []string{"key", "version", "state"}),
		rewrapped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameRewrappedDEKs,
			Help: "DEKs re-wrapped under a newer version of the key.",
		}, []string{"key"}),
		progress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: NameRotationProgress,
			Help: "Re-wrap progress of the key's open rotation, 0..1 ((done+failed)/total); 0 when none is open.",
		}, []string{"key"}),
		retirementBlocked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: NameRetirementBlocked,
			Help: "1 when the version should retire (grace over, or compromised) but DEKs still reference it; else 0.",
		}, []string{"key", "version"}),
		kmsRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameKMSRequests,
			Help: "Calls to a KMS/HSM backend, by backend name, operation and result.",
		}, []string{"backend", "op", "result"}),
		kmsDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameKMSRequestDuration,
			Help:    "Duration of calls to a KMS/HSM backend, by backend name and operation.",
			Buckets: KMSDurationBuckets(),
		}, []string{"backend", "op"}),
		lastCycle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: NameWorkerLastCycle,
			Help: "Unix time at which the worker last finished a cycle (0: none since the process started).",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: NameWorkerLastSuccess,
			Help: "Unix time at which the worker last finished a cycle in which no key failed (0: none since the process started).",
		}),
		auditValid: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: NameAuditChainValid,
			Help: "1 when the last verification of the audit hash chain passed, 0 when it failed; absent until the first verification.",
		}, nil),
		backendInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: NameBackendInfo,
			Help: "Always 1: the type of each configured backend (join on backend).",
		}, []string{"backend", "type"}),
		keys: map[string]*keySeries{},
	}
	collectors := []prometheus.Collector{
		m.rotationFailures, m.rotations, m.rotationDuration, m.keyExpiry,
		m.keyVersion, m.deks, m.rewrapped, m.progress, m.retirementBlocked,
		m.kmsRequests, m.kmsDuration, m.lastCycle, m.lastSuccess,
		m.auditValid, m.backendInfo,
	}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("metrics: register rekey collectors: %w", err)
		}
	}
	return m, nil
}

// Init pre-creates every series whose labels are known at start: for each
// key, rekey_rotations_total{result="success"|"failure"},
// rekey_rotation_failures_total and rekey_rewrapped_deks_total at 0 (and an
// empty rekey_rotation_duration_seconds); for each backend × op × result,
// rekey_kms_requests_total at 0 (and an empty duration histogram per
// backend × op); rekey_backend_info{backend,type} for each backend. backends
// maps a backend name to its type ("local", "awskms", ...). ops nil means
// DefaultKMSOps. Init may be called again (after a config change); it only
// adds series. Keys created later get their series from Refresh or from the
// first Observer call that names them.
func (m *Metrics) Init(keys []string, backends map[string]string, ops []string) {
	if len(ops) == 0 {
		ops = DefaultKMSOps()
	}
	for _, k := range keys {
		m.ensureKey(k)
	}
	for name, typ := range backends {
		if g, err := m.backendInfo.GetMetricWithLabelValues(name, typ); err == nil {
			g.Set(1)
		}
		for _, op := range ops {
			for _, result := range []string{resultSuccess, resultFailure} {
				_, _ = m.kmsRequests.GetMetricWithLabelValues(name, op, result)
			}
			_, _ = m.kmsDuration.GetMetricWithLabelValues(name, op)
		}
	}
}

// ensureKey creates key's counters at 0 (a no-op for those that exist) and
// remembers the key, so that Refresh deletes its series once the store no
// longer has it.
func (m *Metrics) ensureKey(key string) {
	m.mu.Lock()
	_, known := m.keys[key]
	if !known {
		m.keys[key] = &keySeries{deks: map[dekLabels]bool{}, blocked: map[string]bool{}}
	}
	m.mu.Unlock()
	if known {
		return
	}
	for _, result := range []string{resultSuccess, resultFailure} {
		_, _ = m.rotations.GetMetricWithLabelValues(key, result)
	}
	_, _ = m.rotationFailures.GetMetricWithLabelValues(key)
	_, _ = m.rewrapped.GetMetricWithLabelValues(key)
	_, _ = m.rotationDuration.GetMetricWithLabelValues(key)
}

// RotationStarted implements rotation.Observer: it makes sure key's
// counters exist.
func (m *Metrics) RotationStarted(key string) { m.ensureKey(key) }

// RotationFinished implements rotation.Observer. It counts the attempt in
// rekey_rotations_total{result}; a failure (any result but "success") also
// counts in rekey_rotation_failures_total; a success observes d in
// rekey_rotation_duration_seconds and sets the progress back to 0 (no
// rotation is open any more).
func (m *Metrics) RotationFinished(key, result string, d time.Duration) {
	m.ensureKey(key)
	if result != resultSuccess {
		result = resultFailure
	}
	if c, err := m.rotations.GetMetricWithLabelValues(key, result); err == nil {
		c.Inc()
	}
	if result == resultFailure {
		if c, err := m.rotationFailures.GetMetricWithLabelValues(key); err == nil {
			c.Inc()
		}
		return
	}
	if h, err := m.rotationDuration.GetMetricWithLabelValues(key); err == nil {
		h.Observe(d.Seconds())
	}
	if g, err := m.progress.GetMetricWithLabelValues(key); err == nil {
		g.Set(0)
	}
}

// DEKsRewrapped implements rotation.Observer: it adds n (when positive) to
// rekey_rewrapped_deks_total{key}.
func (m *Metrics) DEKsRewrapped(key string, n int) {
	if n <= 0 {
		return
	}
	m.ensureKey(key)
	if c, err := m.rewrapped.GetMetricWithLabelValues(key); err == nil {
		c.Add(float64(n))
	}
}

// Progress implements rotation.Observer: it sets
// rekey_rotation_progress_ratio{key}, clamped to 0..1 (NaN counts as 0).
func (m *Metrics) Progress(key string, ratio float64) {
	m.ensureKey(key)
	if g, err := m.progress.GetMetricWithLabelValues(key); err == nil {
		g.Set(clampRatio(ratio))
	}
}

// KMSCall implements rotation.Observer: it counts the call in
// rekey_kms_requests_total{backend,op,result} (any result but "success"
// counts as "failure") and observes d in
// rekey_kms_request_duration_seconds{backend,op}.
func (m *Metrics) KMSCall(backend, op, result string, d time.Duration) {
	if result != resultSuccess {
		result = resultFailure
	}
	if c, err := m.kmsRequests.GetMetricWithLabelValues(backend, op, result); err == nil {
		c.Inc()
	}
	if h, err := m.kmsDuration.GetMetricWithLabelValues(backend, op); err == nil {
		h.Observe(d.Seconds())
	}
}

// RetirementBlocked implements rotation.Observer: it sets
// rekey_retirement_blocked{key,version} to 1 or 0.
func (m *Metrics) RetirementBlocked(key string, version int, blocked bool) {
	m.ensureKey(key)
	v := strconv.Itoa(version)
	g, err := m.retirementBlocked.GetMetricWithLabelValues(key, v)
	if err != nil {
		return
	}
	g.Set(boolFloat(blocked))
	m.mu.Lock()
	if ks := m.keys[key]; ks != nil {
		ks.blocked[v] = true
	}
	m.mu.Unlock()
}

// CycleDone implements rotation.Observer: it sets
// rekey_worker_last_cycle_timestamp_seconds to at, and
// rekey_worker_last_success_timestamp_seconds too when ok.
func (m *Metrics) CycleDone(at time.Time, ok bool) {
	ts := unixSeconds(at)
	m.lastCycle.Set(ts)
	if ok {
		m.lastSuccess.Set(ts)
	}
}

// SetAuditChainValid sets rekey_audit_chain_valid from the result of the
// last verification of the audit chain. The gauge is absent until the first
// call, so that a process that has not verified yet does not report an
// invalid chain.
func (m *Metrics) SetAuditChainValid(ok bool) {
	if g, err := m.auditValid.GetMetricWithLabelValues(); err == nil {
		g.Set(boolFloat(ok))
	}
}

// keySnapshot is what Refresh read from the store about one key.
type keySnapshot struct {
	key      rekey.Key
	versions []rekey.KeyVersion
	counts   map[int]int64
	open     *rekey.Rotation
}

// Refresh sets the state gauges from the store s, as of now:
// rekey_key_version, rekey_key_expiry_timestamp_seconds,
// rekey_rotation_progress_ratio ((done+failed)/total of the open rotation,
// 0 when none), and for each version rekey_deks{key,version,state} and
// rekey_retirement_blocked{key,version} (1 for a pending_retirement version
// whose retire_after has passed, or a compromised version with no open
// rotation, while DEKs still reference it). Series of versions that left a
// state, and every series of a key the store no longer has, are deleted.
//
// Refresh reads the store before it changes anything. If listing the keys
// fails it returns that error and changes nothing; if reading one key
// fails, that key's series are left as they were, the other keys are
// refreshed, and the errors are returned joined.
func (m *Metrics) Refresh(ctx context.Context, s rekey.Store, now time.Time) error {
	keys, err := s.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("metrics: refresh: list keys: %w", err)
	}
	var (
		errs    []error
		snaps   []keySnapshot
		inStore = make(map[string]bool, len(keys))
	)
	for _, k := range keys {
		inStore[k.Name] = true
		snap, err := readKey(ctx, s, k)
		if err != nil {
			errs = append(errs, fmt.Errorf("metrics: refresh key %s: %w", k.Name, err))
			continue
		}
		snaps = append(snaps, snap)
	}
	for _, snap := range snaps {
		m.ensureKey(snap.key.Name)
		m.applyKey(snap, now)
	}
	m.deleteKeysNotIn(inStore)
	return errors.Join(errs...)
}

func readKey(ctx context.Context, s rekey.Store, k rekey.Key) (keySnapshot, error) {
	snap := keySnapshot{key: k}
	var err error
	if snap.versions, err = s.ListVersions(ctx, k.Name); err != nil {
		return snap, fmt.Errorf("list versions: %w", err)
	}
	if snap.counts, err = s.CountDEKs(ctx, k.Name); err != nil {
		return snap, fmt.Errorf("count DEKs: %w", err)
	}
	r, err := s.OpenRotation(ctx, k.Name)
	switch {
	case err == nil:
		snap.open = &r
	case errors.Is(err, rekey.ErrRotationNotFound):
	default:
		return snap, fmt.Errorf("open rotation: %w", err)
	}
	return snap, nil
}

// applyKey sets one key's gauges from snap and deletes its per-version
// series that snap no longer has. It holds m.mu throughout (it does no I/O),
// so that concurrent Refresh calls apply whole snapshots one at a time.
func (m *Metrics) applyKey(snap keySnapshot, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := snap.key
	setGauge(m.keyVersion, float64(k.ActiveVersion), k.Name)
	setGauge(m.keyExpiry, unixSeconds(k.ExpiresAt), k.Name)
	ratio := 0.0
	if r := snap.open; r != nil && r.Total > 0 {
		ratio = clampRatio(float64(r.Done+r.Failed) / float64(r.Total))
	}
	setGauge(m.progress, ratio, k.Name)

	deks := make(map[dekLabels]bool, len(snap.versions))
	blocked := make(map[string]bool, len(snap.versions))
	listed := make(map[int]bool, len(snap.versions))
	for _, v := range snap.versions {
		listed[v.Version] = true
		ver := strconv.Itoa(v.Version)
		n := snap.counts[v.Version]
		l := dekLabels{ver, string(v.State)}
		deks[l] = true
		setGauge(m.deks, float64(n), k.Name, l.version, l.state)
		blocked[ver] = true
		setGauge(m.retirementBlocked, boolFloat(retirementBlocked(v, n, snap.open != nil, now)), k.Name, ver)
	}
	// DEKs on a version the store does not list should not exist; show them
	// rather than hide them.
	for version, n := range snap.counts {
		if listed[version] || n == 0 {
			continue
		}
		l := dekLabels{strconv.Itoa(version), stateUnknown}
		deks[l] = true
		setGauge(m.deks, float64(n), k.Name, l.version, l.state)
	}

	ks := m.keys[k.Name]
	if ks == nil { // deleted meanwhile by a concurrent Refresh
		ks = &keySeries{}
		m.keys[k.Name] = ks
	}
	for l := range ks.deks {
		if !deks[l] {
			m.deks.DeleteLabelValues(k.Name, l.version, l.state)
		}
	}
	for ver := range ks.blocked {
		if !blocked[ver] {
			m.retirementBlocked.DeleteLabelValues(k.Name, ver)
		}
	}
	ks.deks, ks.blocked = deks, blocked
}

// retirementBlocked reports whether version v, referenced by n DEKs, should
// have left them behind by now: a pending_retirement version whose grace is
// over, or a compromised version once no rotation is re-wrapping it away.
func retirementBlocked(v rekey.KeyVersion, n int64, rotationOpen bool, now time.Time) bool {
	if n <= 0 {
		return false
	}
	switch v.State {
	case rekey.VersionPendingRetirement:
		return !v.RetireAfter.After(now)
	case rekey.VersionCompromised:
		return !rotationOpen
	}
	return false
}

// deleteKeysNotIn deletes every series of the keys this Metrics knows that
// are not in inStore.
func (m *Metrics) deleteKeysNotIn(inStore map[string]bool) {
	m.mu.Lock()
	var gone []string
	for k := range m.keys {
		if !inStore[k] {
			gone = append(gone, k)
			delete(m.keys, k)
		}
	}
	m.mu.Unlock()
	for _, k := range gone {
		l := prometheus.Labels{"key": k}
		m.rotationFailures.DeletePartialMatch(l)
		m.rotations.DeletePartialMatch(l)
		m.rotationDuration.DeletePartialMatch(l)
		m.keyExpiry.DeletePartialMatch(l)
		m.keyVersion.DeletePartialMatch(l)
		m.deks.DeletePartialMatch(l)
		m.rewrapped.DeletePartialMatch(l)
		m.progress.DeletePartialMatch(l)
		m.retirementBlocked.DeletePartialMatch(l)
	}
}

func setGauge(v *prometheus.GaugeVec, x float64, labels ...string) {
	if g, err := v.GetMetricWithLabelValues(labels...); err == nil {
		g.Set(x)
	}
}

func clampRatio(r float64) float64 {
	switch {
	case math.IsNaN(r) || r < 0:
		return 0
	case r > 1:
		return 1
	}
	return r
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// unixSeconds returns t as fractional Unix seconds, 0 for the zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixMilli()) / 1e3
}

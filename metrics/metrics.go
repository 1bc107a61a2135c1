// Package metrics exports rekey's Prometheus metrics (the names, types and
// labels of DESIGN.md, "Metrics") on a registry the caller passes in. It
// never touches the global registry.
//
// A *Metrics is one prometheus.Collector with two kinds of series:
//   - state, read from the store at scrape time: every scrape reads one
//     snapshot (ListKeys, then for each key ListVersions, CountDEKs and
//     OpenRotation) and emits rekey_key_version,
//     rekey_key_expiry_timestamp_seconds, rekey_deks,
//     rekey_rotation_progress_ratio and rekey_retirement_blocked as const
//     metrics. Nothing is remembered between scrapes, so a key that left the
//     store leaves the gauges with it, and a restarted process (or another
//     replica) reports what the store says. The rules are the root
//     package's: rekey.Rotation.Progress and rekey.DecideVersion.
//   - events, fed by the engine, the KMS middleware and the worker through
//     RotationFinished, DEKsRewrapped, KMSCall, CycleDone and
//     SetAuditChainValid: counters, histograms and the worker's dead-man's
//     switch, each with one writer.
//
// Every counter series whose labels are known exists from the first scrape
// at 0, so that rate() and increase() see the first event: the per-backend
// kms series are made by New, the per-key rotation series by each scrape
// for every key of the snapshot (before the counters are collected).
//
// Labels hold only key names, version numbers, version states, backend
// names, backend operations and results — never key material.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/status"
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
	NameKeyEncryptions     = "rekey_key_encryptions"
	NameKeyMaxEncryptions  = "rekey_key_max_encryptions"
	NameKeyUsageRatio      = "rekey_key_usage_ratio"
)

const (
	resultSuccess = "success" // rotation.ResultSuccess
	resultFailure = "failure" // rotation.ResultFailure
	// resultThrottled is kmsmw.ResultThrottled: a backend request refused
	// for its rate.
	resultThrottled = "throttled"
	stateUnknown    = "unknown" // the state label of DEKs on a version the store does not list
)

// scrapeTimeout bounds the store reads of one scrape: a store that hangs
// costs that scrape its state gauges, not the whole /metrics endpoint.
const scrapeTimeout = 10 * time.Second

// DefaultKMSOps returns the backend operations reported through KMSCall:
// the same names as kmsmw.Ops() (this package does not import kmsmw; pass
// kmsmw.Ops() as Options.KMSOps to follow it exactly). New uses them when
// Options.KMSOps is nil.
func DefaultKMSOps() []string {
	return []string{
		"create_key", "current_version", "rotate_key", "wrap", "unwrap",
		"rewrap", "rewrap_batch", "retire_version", "destroy_version", "ping", "mac", "find_key", "delete_key",
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

// Options configures New.
type Options struct {
	// Store is read at scrape time for the state gauges. Nil means no state
	// gauges (the event metrics are still exported).
	Store rekey.Store
	// Now is the clock of the retirement decision; nil means time.Now.
	Now func() time.Time
	// Backends are the backend names whose kms series New creates at 0.
	Backends []string
	// KMSOps are the operation names of those series; nil means
	// DefaultKMSOps().
	KMSOps []string
	// Logger receives store errors met at scrape time; nil discards them.
	Logger *slog.Logger
}

// Metrics holds rekey's collectors. Its methods are safe for concurrent use
// and never block; they never panic on odd label values (they drop the
// sample instead).
//
// *Metrics has the method set of rotation.Observer (RotationFinished,
// DEKsRewrapped, CycleDone) and of kmsmw.Observer (KMSCall), and it is the
// prometheus.Collector that New registers.
type Metrics struct {
	store  rekey.Store
	now    func() time.Time
	logger *slog.Logger

	rotationFailures *prometheus.CounterVec
	rotations        *prometheus.CounterVec
	rotationDuration *prometheus.HistogramVec
	rewrapped        *prometheus.CounterVec
	kmsRequests      *prometheus.CounterVec
	kmsDuration      *prometheus.HistogramVec
	lastCycle        prometheus.Gauge
	lastSuccess      prometheus.Gauge
	auditValid       *prometheus.GaugeVec // no labels: exported only once set

	keyExpiry  *prometheus.Desc
	keyVersion *prometheus.Desc
	deks       *prometheus.Desc
	progress   *prometheus.Desc
	blocked    *prometheus.Desc
	usage      usageDescs
	backends   atomic.Pointer[map[string]rekey.KMS] // wrap counts (usage.go)
	sources    atomic.Pointer[SourceCountsFunc]     // DEK source rows (blocked.go)
}

var _ prometheus.Collector = (*Metrics)(nil)

// New creates rekey's metrics and registers them on reg as one collector.
// A nil reg means a private registry nobody scrapes (the metrics are kept,
// not exported). It creates rekey_kms_requests_total{backend,op,result} at
// 0 for each result (success, failure, throttled) (and an empty rekey_kms_request_duration_seconds{backend,op}) for each
// of o.Backends × o.KMSOps. It returns an error, and leaves reg as it was,
// when the collector cannot be registered — for instance because New was
// already called with reg (prometheus.AlreadyRegisteredError is in the
// chain).
func New(reg prometheus.Registerer, o Options) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		store:  o.Store,
		now:    o.Now,
		logger: o.Logger,
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
		rewrapped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameRewrappedDEKs,
			Help: "DEKs re-wrapped under a newer version of the key.",
		}, []string{"key"}),
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
		keyExpiry: prometheus.NewDesc(NameKeyExpiry,
			"Unix time at which the active version's rotation period ends (0 if the store has none).",
			[]string{"key"}, nil),
		keyVersion: prometheus.NewDesc(NameKeyVersion,
			"Active version of the key.",
			[]string{"key"}, nil),
		deks: prometheus.NewDesc(NameDEKs,
			"DEKs wrapped under each version of the key; state is the version's state.",
			[]string{"key", "version", "state"}, nil),
		progress: prometheus.NewDesc(NameRotationProgress,
			"Re-wrap progress of the key's open rotation, 0..1 ((done+failed)/total, 1 once committed); 0 when none is open.",
			[]string{"key"}, nil),
		blocked: prometheus.NewDesc(NameRetirementBlocked,
			"1 when the version should retire (grace over, or compromised) but DEKs still reference it and no rotation is re-wrapping them; else 0.",
			[]string{"key", "version"}, nil),
	}
	m.usage = newUsageDescs()
	if m.now == nil {
		m.now = time.Now
	}
	if m.logger == nil {
		m.logger = slog.New(slog.DiscardHandler)
	}
	ops := o.KMSOps
	if ops == nil {
		ops = DefaultKMSOps()
	}
	for _, name := range o.Backends {
		for _, op := range ops {
			for _, result := range []string{resultSuccess, resultFailure, resultThrottled} {
				_, _ = m.kmsRequests.GetMetricWithLabelValues(name, op, result)
			}
			_, _ = m.kmsDuration.GetMetricWithLabelValues(name, op)
		}
	}
	if err := reg.Register(m); err != nil {
		return nil, fmt.Errorf("metrics: register rekey collector: %w", err)
	}
	return m, nil
}

// eventCollectors are the collectors with a writer (the engine, the KMS
// middleware, the worker).
func (m *Metrics) eventCollectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.rotationFailures, m.rotations, m.rotationDuration, m.rewrapped,
		m.kmsRequests, m.kmsDuration, m.lastCycle, m.lastSuccess, m.auditValid,
	}
}

// Describe implements prometheus.Collector: every metric of the package.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.eventCollectors() {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{m.keyExpiry, m.keyVersion, m.deks, m.progress, m.blocked, m.usage.encryptions, m.usage.max, m.usage.ratio} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It reads one snapshot of the
// store, makes sure every key of it has its counters (at 0 when new), then
// emits the event metrics and the state gauges of the snapshot. When the
// store cannot be read, the error is logged and this scrape has no state
// gauges; the event metrics are still emitted.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	var snap []keySnapshot
	if m.store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
		var err error
		snap, err = readSnapshot(ctx, m.store)
		if err == nil {
			m.readUsage(ctx, snap)
			m.readSourceCounts(ctx, snap)
		}
		cancel()
		if err != nil {
			m.logger.Error("metrics: reading the store at scrape time; the state gauges are left out of this scrape", "error", err.Error())
			snap = nil
		}
	}
	for _, ks := range snap {
		m.ensureKey(ks.key.Name)
	}
	for _, c := range m.eventCollectors() {
		c.Collect(ch)
	}
	now := m.now()
	for _, ks := range snap {
		m.collectKey(ch, ks, now)
	}
}

// keySnapshot is what one scrape read from the store about one key.
type keySnapshot struct {
	key      rekey.Key
	versions []rekey.KeyVersion
	counts   map[int]int64
	open     *rekey.Rotation
	wraps    map[int]int64        // wrap counts of the versions counted (usage.go)
	sources  []status.SourceCount // the key's rows in the DEK sources (blocked.go)
}

// readSnapshot reads every key of s. A key deleted between ListKeys and
// its other reads is left out; any other error fails the whole snapshot,
// so that a scrape never shows half the store.
func readSnapshot(ctx context.Context, s rekey.Store) ([]keySnapshot, error) {
	keys, err := s.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	out := make([]keySnapshot, 0, len(keys))
	for _, k := range keys {
		ks, err := readKey(ctx, s, k)
		switch {
		case errors.Is(err, rekey.ErrKeyNotFound):
			continue
		case err != nil:
			return nil, fmt.Errorf("key %s: %w", k.Name, err)
		}
		out = append(out, ks)
	}
	return out, nil
}

func readKey(ctx context.Context, s rekey.Store, k rekey.Key) (keySnapshot, error) {
	ks := keySnapshot{key: k}
	var err error
	if ks.versions, err = s.ListVersions(ctx, k.Name); err != nil {
		return ks, fmt.Errorf("list versions: %w", err)
	}
	if ks.counts, err = s.CountDEKs(ctx, k.Name); err != nil {
		return ks, fmt.Errorf("count DEKs: %w", err)
	}
	r, err := s.OpenRotation(ctx, k.Name)
	switch {
	case err == nil:
		ks.open = &r
	case errors.Is(err, rekey.ErrRotationNotFound):
	default:
		return ks, fmt.Errorf("open rotation: %w", err)
	}
	return ks, nil
}

// collectKey emits the state gauges of one key.
func (m *Metrics) collectKey(ch chan<- prometheus.Metric, ks keySnapshot, now time.Time) {
	k := ks.key
	m.emit(ch, m.keyVersion, float64(k.ActiveVersion), k.Name)
	m.emit(ch, m.keyExpiry, unixSeconds(k.ExpiresAt), k.Name)
	ratio := 0.0
	if ks.open != nil {
		ratio = ks.open.Progress()
	}
	m.emit(ch, m.progress, ratio, k.Name)

	listed := make(map[int]bool, len(ks.versions))
	for _, v := range ks.versions {
		listed[v.Version] = true
		ver := strconv.Itoa(v.Version)
		n := ks.counts[v.Version]
		m.emit(ch, m.deks, float64(n), k.Name, ver, string(v.State))
		d := rekey.DecideVersion(rekey.VersionFacts{Key: k, Version: v, DEKs: status.BlockingDEKs(n, ks.sources, v.Version), RotationOpen: ks.open != nil}, now)
		m.emit(ch, m.blocked, boolFloat(d.RetirementBlocked()), k.Name, ver)
	}
	m.collectUsage(ch, ks)
	// DEKs on a version the store does not list should not exist; show them
	// rather than hide them.
	for version, n := range ks.counts {
		if !listed[version] && n != 0 {
			m.emit(ch, m.deks, float64(n), k.Name, strconv.Itoa(version), stateUnknown)
		}
	}
}

// emit sends one gauge; a label value Prometheus refuses (not UTF-8) drops
// the sample rather than failing the scrape.
func (m *Metrics) emit(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	c, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v, labels...)
	if err != nil {
		m.logger.Warn("metrics: sample dropped", "metric", d.String(), "error", err.Error())
		return
	}
	ch <- c
}

// ensureKey creates key's counters at 0; a no-op for those that exist.
func (m *Metrics) ensureKey(key string) {
	for _, result := range []string{resultSuccess, resultFailure} {
		_, _ = m.rotations.GetMetricWithLabelValues(key, result)
	}
	_, _ = m.rotationFailures.GetMetricWithLabelValues(key)
	_, _ = m.rewrapped.GetMetricWithLabelValues(key)
	_, _ = m.rotationDuration.GetMetricWithLabelValues(key)
}

// RotationFinished implements rotation.Observer. It counts the attempt in
// rekey_rotations_total{result}; a failure (any result but "success") also
// counts in rekey_rotation_failures_total; a success observes d in
// rekey_rotation_duration_seconds.
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

// KMSCall implements kmsmw.Observer: it counts the call in
// rekey_kms_requests_total{backend,op,result} ("success", "throttled";
// any other result counts as "failure") and observes d in
// rekey_kms_request_duration_seconds{backend,op}.
func (m *Metrics) KMSCall(backend, op, result string, d time.Duration) {
	if result != resultSuccess && result != resultThrottled {
		result = resultFailure
	}
	if c, err := m.kmsRequests.GetMetricWithLabelValues(backend, op, result); err == nil {
		c.Inc()
	}
	if h, err := m.kmsDuration.GetMetricWithLabelValues(backend, op); err == nil {
		h.Observe(d.Seconds())
	}
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

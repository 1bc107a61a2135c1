package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/metrics"
	"github.com/rekeyhq/rekey/store/memstore"
)

// rotationObserver and kmsObserver are rotation.Observer and
// kmsmw.Observer, declared again here because sibling packages do not
// import each other: if those interfaces change, these copies must follow
// and the checks below say whether *Metrics still fits.
type rotationObserver interface {
	RotationFinished(key, result string, d time.Duration)
	DEKsRewrapped(key string, n int)
	CycleDone(at time.Time, ok bool)
}

type kmsObserver interface {
	KMSCall(backend, op, result string, d time.Duration)
}

var (
	_ rotationObserver     = (*metrics.Metrics)(nil)
	_ kmsObserver          = (*metrics.Metrics)(nil)
	_ prometheus.Collector = (*metrics.Metrics)(nil)
)

// contractNames are the metric names of DESIGN.md, "Metrics".
var contractNames = []string{
	"rekey_rotation_failures_total",
	"rekey_rotations_total",
	"rekey_rotation_duration_seconds",
	"rekey_key_expiry_timestamp_seconds",
	"rekey_key_version",
	"rekey_deks",
	"rekey_rewrapped_deks_total",
	"rekey_rotation_progress_ratio",
	"rekey_retirement_blocked",
	"rekey_kms_requests_total",
	"rekey_kms_request_duration_seconds",
	"rekey_worker_last_cycle_timestamp_seconds",
	"rekey_worker_last_success_timestamp_seconds",
	"rekey_audit_chain_valid",
	"rekey_key_encryptions",
	// Not in DESIGN.md: the limit and the active version's ratio, for the
	// usage alert.
	"rekey_key_max_encryptions",
	"rekey_key_usage_ratio",
}

type bundle struct {
	reg *prometheus.Registry
	m   *metrics.Metrics
	log *syncBuffer // what the metrics logged
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
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

// setup registers a Metrics over o on a pedantic registry (it checks every
// collected metric against its description) and records its log.
func setup(t *testing.T, o metrics.Options) bundle {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	buf := &syncBuffer{}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(buf, nil))
	}
	m, err := metrics.New(reg, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return bundle{reg: reg, m: m, log: buf}
}

func (b bundle) gather(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func (b bundle) names(t *testing.T) []string {
	t.Helper()
	var out []string
	for name := range b.gather(t) {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// series returns the series of name whose labels equal labels exactly.
func (b bundle) series(t *testing.T, name string, labels map[string]string) (*dto.Metric, bool) {
	t.Helper()
	mf, ok := b.gather(t)[name]
	if !ok {
		return nil, false
	}
	for _, m := range mf.GetMetric() {
		if labelsOf(m) == fmtLabels(labels) {
			return m, true
		}
	}
	return nil, false
}

// value returns the value of a counter or gauge series, failing the test if
// the series does not exist.
func (b bundle) value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	m, ok := b.series(t, name, labels)
	if !ok {
		t.Fatalf("%s%s: no such series; have %v", name, fmtLabels(labels), b.seriesOf(t, name))
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s%s is neither a counter nor a gauge", name, fmtLabels(labels))
	return 0
}

func (b bundle) wantValue(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	if got := b.value(t, name, labels); got != want {
		t.Errorf("%s%s = %v, want %v", name, fmtLabels(labels), got, want)
	}
}

func (b bundle) wantAbsent(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	if _, ok := b.series(t, name, labels); ok {
		t.Errorf("%s%s exists, want it absent", name, fmtLabels(labels))
	}
}

// seriesOf lists the label sets of name's series, sorted.
func (b bundle) seriesOf(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	for _, m := range b.gather(t)[name].GetMetric() {
		out = append(out, labelsOf(m))
	}
	sort.Strings(out)
	return out
}

func labelsOf(m *dto.Metric) string {
	l := map[string]string{}
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return fmtLabels(l)
}

func fmtLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, l[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

type L = map[string]string

// stateNames are the metrics read from the store at scrape time.
var stateNames = []string{
	"rekey_deks",
	"rekey_key_expiry_timestamp_seconds",
	"rekey_key_version",
	"rekey_retirement_blocked",
	"rekey_rotation_progress_ratio",
}

func TestEveryContractMetricIsExported(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(90*rekey.Day))
	b := setup(t, metrics.Options{Store: st, Backends: []string{"local"}})
	b.m.SetBackends(map[string]rekey.KMS{"local": kmsmw.Wrap(memkms.New(), kmsmw.Options{Name: "local", Usage: &kmsmw.UsageOptions{Counter: st}})})

	// The first scrape has everything but the audit gauge, which waits
	// for the first verification.
	want := slices.DeleteFunc(slices.Clone(contractNames), func(n string) bool { return n == "rekey_audit_chain_valid" })
	sort.Strings(want)
	if got := b.names(t); !slices.Equal(got, want) {
		t.Errorf("the first scrape has\n  %v\nwant\n  %v", got, want)
	}
	b.m.SetAuditChainValid(true)
	want = slices.Clone(contractNames)
	sort.Strings(want)
	if got := b.names(t); !slices.Equal(got, want) {
		t.Errorf("after SetAuditChainValid the registry has\n  %v\nwant (DESIGN.md)\n  %v", got, want)
	}
}

func TestMetricTypesAndLabels(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(rekey.Day))
	b := setup(t, metrics.Options{Store: st, Backends: []string{"local"}})
	b.m.SetAuditChainValid(true)
	b.m.SetBackends(map[string]rekey.KMS{"local": kmsmw.Wrap(memkms.New(), kmsmw.Options{Name: "local", Usage: &kmsmw.UsageOptions{Counter: st}})})

	want := map[string]struct {
		typ    dto.MetricType
		labels string
	}{
		"rekey_rotation_failures_total":               {dto.MetricType_COUNTER, "key"},
		"rekey_rotations_total":                       {dto.MetricType_COUNTER, "key,result"},
		"rekey_rotation_duration_seconds":             {dto.MetricType_HISTOGRAM, "key"},
		"rekey_key_expiry_timestamp_seconds":          {dto.MetricType_GAUGE, "key"},
		"rekey_key_version":                           {dto.MetricType_GAUGE, "key"},
		"rekey_deks":                                  {dto.MetricType_GAUGE, "key,state,version"},
		"rekey_rewrapped_deks_total":                  {dto.MetricType_COUNTER, "key"},
		"rekey_rotation_progress_ratio":               {dto.MetricType_GAUGE, "key"},
		"rekey_retirement_blocked":                    {dto.MetricType_GAUGE, "key,version"},
		"rekey_kms_requests_total":                    {dto.MetricType_COUNTER, "backend,op,result"},
		"rekey_kms_request_duration_seconds":          {dto.MetricType_HISTOGRAM, "backend,op"},
		"rekey_worker_last_cycle_timestamp_seconds":   {dto.MetricType_GAUGE, ""},
		"rekey_worker_last_success_timestamp_seconds": {dto.MetricType_GAUGE, ""},
		"rekey_audit_chain_valid":                     {dto.MetricType_GAUGE, ""},
		"rekey_key_encryptions":                       {dto.MetricType_GAUGE, "key,version"},
		"rekey_key_max_encryptions":                   {dto.MetricType_GAUGE, "key"},
		"rekey_key_usage_ratio":                       {dto.MetricType_GAUGE, "key"},
	}
	got := b.gather(t)
	if len(got) != len(want) {
		t.Errorf("%d families gathered, want %d", len(got), len(want))
	}
	for name, mf := range got {
		w, ok := want[name]
		if !ok {
			t.Errorf("unexpected metric %s", name)
			continue
		}
		if mf.GetType() != w.typ {
			t.Errorf("%s is a %v, want %v", name, mf.GetType(), w.typ)
		}
		for _, m := range mf.GetMetric() {
			var names []string
			for _, lp := range m.GetLabel() {
				names = append(names, lp.GetName())
			}
			sort.Strings(names)
			if got := strings.Join(names, ","); got != w.labels {
				t.Errorf("%s has labels %q, want %q", name, got, w.labels)
			}
		}
	}

	// The names follow Prometheus' conventions (units, _total, help).
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestCollectorIsConsistent: the collector describes exactly what it
// collects, with no duplicate or inconsistent descriptors, whatever the
// store holds and whatever the observers were told. The pedantic registry
// of setup (which holds only the collector) fails Gather otherwise, and
// promlint checks what it gathered — what testutil.CollectAndLint does,
// without the module testutil needs.
func TestCollectorIsConsistent(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(-time.Hour))
	createKey(t, st, "orders", now.Add(rekey.Day))
	insertDEKs(t, st, "payments", 1, 3)
	rotateTo2(t, st, "payments", now, now.Add(90*rekey.Day), now.Add(-time.Minute), 3, 1, 1)
	b := setup(t, metrics.Options{Store: strayDEKs{st}, Backends: []string{"local", "aws"}})
	b.m.RotationFinished("payments", "success", time.Minute)
	b.m.RotationFinished("ghost", "failure", time.Second) // a key the store does not have
	b.m.KMSCall("other", "wrap", "weird", time.Millisecond)
	b.m.CycleDone(now, true)
	b.m.SetAuditChainValid(true)

	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatalf("pedantic Gather: %v", err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "7", "state": "unknown"}, 1)
}

// strayDEKs counts one DEK of "payments" on version 7, which the store
// does not list (it should never happen; the gauges show it as "unknown").
type strayDEKs struct{ rekey.Store }

func (s strayDEKs) CountDEKs(ctx context.Context, key string) (map[int]int64, error) {
	n, err := s.Store.CountDEKs(ctx, key)
	if err == nil && key == "payments" {
		n[7] = 1
	}
	return n, err
}

func TestCountersAtZeroFromTheFirstScrape(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	keys := []string{"orders", "payments"}
	for _, k := range keys {
		createKey(t, st, k, now.Add(rekey.Day))
	}
	backends := []string{"local", "aws"}
	b := setup(t, metrics.Options{Store: st, Backends: backends})

	for _, k := range keys {
		b.wantValue(t, "rekey_rotations_total", L{"key": k, "result": "success"}, 0)
		b.wantValue(t, "rekey_rotations_total", L{"key": k, "result": "failure"}, 0)
		b.wantValue(t, "rekey_rotation_failures_total", L{"key": k}, 0)
		b.wantValue(t, "rekey_rewrapped_deks_total", L{"key": k}, 0)
		if _, ok := b.series(t, "rekey_rotation_duration_seconds", L{"key": k}); !ok {
			t.Errorf("no rekey_rotation_duration_seconds series for %s", k)
		}
	}
	ops := metrics.DefaultKMSOps()
	for _, backend := range backends {
		for _, op := range ops {
			for _, result := range []string{"success", "failure", "throttled"} {
				b.wantValue(t, "rekey_kms_requests_total", L{"backend": backend, "op": op, "result": result}, 0)
			}
		}
	}
	if got, want := len(b.seriesOf(t, "rekey_kms_requests_total")), len(backends)*len(ops)*3; got != want {
		t.Errorf("rekey_kms_requests_total has %d series, want %d", got, want)
	}
	if got, want := len(b.seriesOf(t, "rekey_kms_request_duration_seconds")), len(backends)*len(ops); got != want {
		t.Errorf("rekey_kms_request_duration_seconds has %d series, want %d", got, want)
	}
	// Before the first cycle the dead-man's switch reads 0 ("never").
	b.wantValue(t, "rekey_worker_last_cycle_timestamp_seconds", L{}, 0)
	b.wantValue(t, "rekey_worker_last_success_timestamp_seconds", L{}, 0)

	// A key created later has its counters from the next scrape on.
	createKey(t, st, "ledger", now.Add(rekey.Day))
	b.wantValue(t, "rekey_rotations_total", L{"key": "ledger", "result": "failure"}, 0)

	// Explicit ops replace the defaults.
	b2 := setup(t, metrics.Options{Backends: []string{"local"}, KMSOps: []string{"wrap"}})
	if got, want := b2.seriesOf(t, "rekey_kms_requests_total"), []string{
		`{backend="local",op="wrap",result="failure"}`, `{backend="local",op="wrap",result="success"}`, `{backend="local",op="wrap",result="throttled"}`,
	}; !slices.Equal(got, want) {
		t.Errorf("with KMSOps [wrap]: %v, want %v", got, want)
	}
}

func TestObserverHooks(t *testing.T) {
	t.Parallel()
	b := setup(t, metrics.Options{Backends: []string{"local"}})

	b.m.DEKsRewrapped("payments", 1000)
	b.m.DEKsRewrapped("payments", 24)
	b.m.DEKsRewrapped("payments", 0)
	b.m.DEKsRewrapped("payments", -3)
	b.wantValue(t, "rekey_rewrapped_deks_total", L{"key": "payments"}, 1024)

	b.m.RotationFinished("payments", "failure", 3*time.Second)
	b.wantValue(t, "rekey_rotations_total", L{"key": "payments", "result": "failure"}, 1)
	b.wantValue(t, "rekey_rotation_failures_total", L{"key": "payments"}, 1)

	b.m.RotationFinished("payments", "success", 90*time.Second)
	b.wantValue(t, "rekey_rotations_total", L{"key": "payments", "result": "success"}, 1)
	b.wantValue(t, "rekey_rotation_failures_total", L{"key": "payments"}, 1)
	h, _ := b.series(t, "rekey_rotation_duration_seconds", L{"key": "payments"})
	if got := h.GetHistogram().GetSampleCount(); got != 1 {
		t.Errorf("rotation duration sample count = %d, want 1 (successes only)", got)
	}
	if got := h.GetHistogram().GetSampleSum(); got != 90 {
		t.Errorf("rotation duration sum = %v, want 90", got)
	}

	// A key met after start gets all its counters on first sight.
	b.m.RotationFinished("orders", "failure", time.Second)
	b.wantValue(t, "rekey_rotations_total", L{"key": "orders", "result": "success"}, 0)
	b.wantValue(t, "rekey_rotation_failures_total", L{"key": "orders"}, 1)

	b.m.KMSCall("local", "rewrap", "success", 2*time.Millisecond)
	b.m.KMSCall("local", "rewrap", "success", 4*time.Millisecond)
	b.m.KMSCall("local", "rotate_key", "failure", time.Second)
	b.m.KMSCall("local", "rotate_key", "timeout", time.Second) // counts as a failure
	b.m.KMSCall("local", "rewrap", "throttled", time.Millisecond)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rewrap", "result": "throttled"}, 1)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rewrap", "result": "success"}, 2)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rotate_key", "result": "failure"}, 2)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rotate_key", "result": "success"}, 0)
	h, _ = b.series(t, "rekey_kms_request_duration_seconds", L{"backend": "local", "op": "rewrap"})
	if got := h.GetHistogram().GetSampleCount(); got != 3 {
		t.Errorf("kms duration sample count = %d, want 3", got)
	}

	at := time.Unix(1_700_000_000, 500_000_000)
	b.m.CycleDone(at, true)
	b.wantValue(t, "rekey_worker_last_cycle_timestamp_seconds", L{}, 1_700_000_000.5)
	b.wantValue(t, "rekey_worker_last_success_timestamp_seconds", L{}, 1_700_000_000.5)
	b.m.CycleDone(at.Add(time.Minute), false)
	b.wantValue(t, "rekey_worker_last_cycle_timestamp_seconds", L{}, 1_700_000_060.5)
	b.wantValue(t, "rekey_worker_last_success_timestamp_seconds", L{}, 1_700_000_000.5)

	if _, ok := b.series(t, "rekey_audit_chain_valid", L{}); ok {
		t.Error("rekey_audit_chain_valid exists before any verification")
	}
	b.m.SetAuditChainValid(false)
	b.wantValue(t, "rekey_audit_chain_valid", L{}, 0)
	b.m.SetAuditChainValid(true)
	b.wantValue(t, "rekey_audit_chain_valid", L{}, 1)

	// Without a store there are no state gauges at all.
	for _, name := range stateNames {
		if _, ok := b.gather(t)[name]; ok {
			t.Errorf("%s exported without a store", name)
		}
	}
}

func TestHooksAndScrapesAreSafeConcurrently(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(rekey.Day))
	b := setup(t, metrics.Options{Store: st, Backends: []string{"local"}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				b.m.DEKsRewrapped("payments", 1)
				b.m.KMSCall("local", "rewrap", "success", time.Millisecond)
				b.m.CycleDone(now, true)
				if _, err := b.reg.Gather(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.wantValue(t, "rekey_rewrapped_deks_total", L{"key": "payments"}, 800)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rewrap", "result": "success"}, 800)
}

func TestRegisterTwiceFails(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg, metrics.Options{}); err != nil {
		t.Fatal(err)
	}
	before, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m, err := metrics.New(reg, metrics.Options{})
	if err == nil || m != nil {
		t.Fatalf("second New on one registry = %v, %v; want nil and an error", m, err)
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Errorf("error %v does not wrap prometheus.AlreadyRegisteredError", err)
	}
	after, err := reg.Gather()
	if err != nil {
		t.Fatalf("registry broken after the failed New: %v", err)
	}
	if len(after) != len(before) {
		t.Errorf("registry has %d families after the failed New, %d before", len(after), len(before))
	}
}

func TestRegisterClashLeavesRegistryAsItWas(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	squatter := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "rekey_worker_last_cycle_timestamp_seconds",
		Help: "Unix time at which the worker last finished a cycle (0: none since the process started).",
	})
	reg.MustRegister(squatter)
	if _, err := metrics.New(reg, metrics.Options{}); err == nil {
		t.Fatal("New succeeded over a clashing collector")
	}
	// Nothing of the failed New is left registered: once the squatter is
	// gone, New works on the same registry.
	reg.Unregister(squatter)
	if _, err := metrics.New(reg, metrics.Options{}); err != nil {
		t.Errorf("New after the clash was removed: %v (the failed New left collectors behind)", err)
	}
}

func TestNewWithNilRegisterer(t *testing.T) {
	t.Parallel()
	m, err := metrics.New(nil, metrics.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.RotationFinished("payments", "success", time.Second)
	// The private registry keeps the collector; it can still be gathered
	// elsewhere.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	b := bundle{reg: reg, m: m}
	b.wantValue(t, "rekey_rotations_total", L{"key": "payments", "result": "success"}, 1)
}

// ---- state gauges read from the store at scrape time ----

func newStore(t *testing.T) *memstore.Store {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	return st
}

func createKey(t *testing.T, st *memstore.Store, name string, expires time.Time) {
	t.Helper()
	err := st.CreateKey(context.Background(),
		rekey.Key{Name: name, Backend: "local", BackendRef: name, ActiveVersion: 1, ExpiresAt: expires, Policy: rekey.DefaultPolicy()},
		rekey.KeyVersion{Key: name, Version: 1, State: rekey.VersionActive, ExpiresAt: expires})
	if err != nil {
		t.Fatalf("CreateKey %s: %v", name, err)
	}
}

func insertDEKs(t *testing.T, st *memstore.Store, key string, version, n int) {
	t.Helper()
	deks := make([]rekey.DEK, n)
	for i := range deks {
		deks[i] = rekey.DEK{ID: fmt.Sprintf("%s-v%d-%04d", key, version, i), Key: key, Version: version, Wrapped: []byte{byte(i), 1, 2, 3}}
	}
	if err := st.InsertDEKs(context.Background(), deks); err != nil {
		t.Fatalf("InsertDEKs: %v", err)
	}
}

// rotateTo2 commits a rotation of key from version 1 to 2 (version 1 becomes
// pending_retirement with retireAfter) and leaves it open, in state
// committed, with the given counters. It returns the rotation and lease.
func rotateTo2(t *testing.T, st *memstore.Store, key string, now, expires, retireAfter time.Time, total, done, failed int64) (rekey.Rotation, rekey.Lease) {
	t.Helper()
	ctx := context.Background()
	lease, err := st.AcquireLease(ctx, key, "worker-1", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	r := rekey.Rotation{ID: "rot-" + key, Key: key, FromVersion: 1, Reason: rekey.ReasonScheduled, StartedAt: now}
	if err := st.CreateRotation(ctx, r, lease); err != nil {
		t.Fatal(err)
	}
	r.State, r.ToVersion, r.Total, r.Done, r.Failed = rekey.RotationCommitted, 2, total, done, failed
	err = st.AdvanceRotation(ctx, rekey.RotationUpdate{
		Rotation:   r,
		FromState:  rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Version: 2},
		Activate:   &rekey.Activation{Version: 2, ExpiresAt: expires, Previous: 1, RetireAfter: retireAfter},
	}, lease)
	if err != nil {
		t.Fatal(err)
	}
	return r, lease
}

// startRewrap opens a rotation of key in state rewrapping with the given
// counters.
func startRewrap(t *testing.T, st *memstore.Store, key string, now time.Time, total, done, failed int64) {
	t.Helper()
	ctx := context.Background()
	lease, err := st.AcquireLease(ctx, key, "worker-1", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	r := rekey.Rotation{ID: "rot-" + key, Key: key, FromVersion: 1, Reason: rekey.ReasonScheduled, StartedAt: now}
	if err := st.CreateRotation(ctx, r, lease); err != nil {
		t.Fatal(err)
	}
	r.State, r.ToVersion, r.Total, r.Done, r.Failed = rekey.RotationRewrapping, 2, total, done, failed
	if err := st.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Version: 2}}, lease); err != nil {
		t.Fatal(err)
	}
}

func TestScrapeReadsTheStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newStore(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := now
	var mu sync.Mutex
	b := setup(t, metrics.Options{Store: st, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }})
	setClock := func(t time.Time) { mu.Lock(); clock = t; mu.Unlock() }

	createKey(t, st, "payments", now.Add(-time.Hour))
	createKey(t, st, "orders", now.Add(30*rekey.Day))
	insertDEKs(t, st, "payments", 1, 3)
	insertDEKs(t, st, "orders", 1, 4)
	expires := now.Add(90 * rekey.Day)
	// payments: rotation 1→2 committed (progress 1) and version 1's grace
	// is over while DEKs still reference it — but the open rotation
	// re-wraps them, so it is not blocked yet.
	r, lease := rotateTo2(t, st, "payments", now, expires, now.Add(-time.Minute), 3, 1, 1)
	insertDEKs(t, st, "payments", 2, 2)
	// orders: re-wrapping, 1 done and 1 failed of 4.
	startRewrap(t, st, "orders", now, 4, 1, 1)

	b.wantValue(t, "rekey_key_version", L{"key": "payments"}, 2)
	b.wantValue(t, "rekey_key_version", L{"key": "orders"}, 1)
	b.wantValue(t, "rekey_key_expiry_timestamp_seconds", L{"key": "payments"}, float64(expires.Unix()))
	b.wantValue(t, "rekey_key_expiry_timestamp_seconds", L{"key": "orders"}, float64(now.Add(30*rekey.Day).Unix()))
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "pending_retirement"}, 3)
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "2", "state": "active"}, 2)
	b.wantValue(t, "rekey_deks", L{"key": "orders", "version": "1", "state": "active"}, 4)
	b.wantValue(t, "rekey_deks", L{"key": "orders", "version": "2", "state": "created"}, 0)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 1)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "orders"}, 0.5)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "2"}, 0)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "orders", "version": "1"}, 0)

	// The rotation ends with the DEKs still on version 1 (they could not
	// be unwrapped): blocked once the grace is over, not before.
	r.State = rekey.RotationDone
	if err := st.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationCommitted}, lease); err != nil {
		t.Fatal(err)
	}
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 1)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 0)
	setClock(now.Add(-2 * time.Minute))
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)
	setClock(now)

	// The DEKs move to version 2 and version 1 retires: the
	// pending_retirement series goes, the retired one appears.
	var swaps []rekey.DEKSwap
	deks, err := st.ListDEKs(ctx, rekey.DEKQuery{Key: "payments", Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deks {
		swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: append([]byte{9}, d.Wrapped...), NewVersion: 2})
	}
	if lost, err := st.SwapDEKs(ctx, swaps, lease); err != nil || len(lost) > 0 {
		t.Fatalf("SwapDEKs: lost %v, %v", lost, err)
	}
	err = st.ChangeVersionState(ctx, rekey.VersionChange{
		Key: "payments", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement},
		To: rekey.VersionRetired, RequireUnused: true, At: now,
	}, &lease)
	if err != nil {
		t.Fatal(err)
	}
	b.wantAbsent(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "pending_retirement"})
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "retired"}, 0)
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "2", "state": "active"}, 5)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)
}

// switchable is a store whose content the test replaces between scrapes,
// to show a key leaving the store (the Store interface deletes no key).
type switchable struct{ rekey.Store }

func TestKeyLeavingTheStoreLeavesTheGauges(t *testing.T) {
	t.Parallel()
	now := time.Now()
	old := newStore(t)
	createKey(t, old, "payments", now.Add(rekey.Day))
	createKey(t, old, "orders", now.Add(rekey.Day))
	insertDEKs(t, old, "orders", 1, 4)
	sw := &switchable{old}
	b := setup(t, metrics.Options{Store: sw})
	b.wantValue(t, "rekey_deks", L{"key": "orders", "version": "1", "state": "active"}, 4)
	b.m.DEKsRewrapped("orders", 5)

	cur := newStore(t)
	createKey(t, cur, "payments", now.Add(rekey.Day))
	sw.Store = cur
	for _, name := range stateNames {
		for _, m := range b.gather(t)[name].GetMetric() {
			if strings.Contains(labelsOf(m), `key="orders"`) {
				t.Errorf("%s%s survived the key's removal", name, labelsOf(m))
			}
		}
	}
	b.wantValue(t, "rekey_key_version", L{"key": "payments"}, 1)
	// Counters count what happened: they stay.
	b.wantValue(t, "rekey_rewrapped_deks_total", L{"key": "orders"}, 5)
}

// TestRestartReadsTheSameValues: a new process (a new Metrics on a new
// registry) over the same store exports the same state at its first
// scrape, with nothing fed to it.
func TestRestartReadsTheSameValues(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(-time.Hour))
	insertDEKs(t, st, "payments", 1, 3)
	startRewrap(t, st, "payments", now, 3, 1, 0)
	first := setup(t, metrics.Options{Store: st})
	first.m.DEKsRewrapped("payments", 1)
	second := setup(t, metrics.Options{Store: st})
	for _, name := range stateNames {
		a, b := first.seriesOf(t, name), second.seriesOf(t, name)
		if !slices.Equal(a, b) || len(a) == 0 {
			t.Errorf("%s: first process %v, restarted %v", name, a, b)
		}
		for _, m := range first.gather(t)[name].GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			second.wantValue(t, name, l, m.GetGauge().GetValue())
		}
	}
	second.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 1.0/3.0)
	second.wantValue(t, "rekey_rewrapped_deks_total", L{"key": "payments"}, 0)
}

func TestCompromisedVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newStore(t)
	now := time.Now()
	b := setup(t, metrics.Options{Store: st})
	createKey(t, st, "payments", now.Add(-time.Hour))
	insertDEKs(t, st, "payments", 1, 2)
	r, lease := rotateTo2(t, st, "payments", now, now.Add(rekey.Day), now.Add(rekey.Day), 2, 0, 0)
	err := st.ChangeVersionState(ctx, rekey.VersionChange{
		Key: "payments", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement},
		To: rekey.VersionCompromised, At: now,
	}, &lease)
	if err != nil {
		t.Fatal(err)
	}
	// While the rotation re-wraps them away, the DEKs are not "blocked".
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "compromised"}, 2)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)
	// The rotation is done and two DEKs are still there (corrupt): blocked.
	r.State = rekey.RotationDone
	if err := st.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationCommitted}, lease); err != nil {
		t.Fatal(err)
	}
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 1)
}

// TestStoreErrorAtScrape: a store that cannot be read costs the scrape its
// state gauges — never half of them — and is logged; the counters and the
// worker gauges still come, and the next good scrape has everything back.
func TestStoreErrorAtScrape(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "orders", now.Add(rekey.Day))
	createKey(t, st, "payments", now.Add(rekey.Day))
	b := setup(t, metrics.Options{Store: st, Backends: []string{"local"}})
	b.m.CycleDone(now, true)
	b.wantValue(t, "rekey_key_version", L{"key": "orders"}, 1)
	down := &rekey.UnreachableError{Service: "store:memory", Err: errors.New("down")}

	for _, op := range []string{"ListKeys", "ListVersions", "CountDEKs", "OpenRotation"} {
		st.Fail = func(o string) error {
			if o == op {
				return down
			}
			return nil
		}
		got := b.gather(t)
		for _, name := range stateNames {
			if _, ok := got[name]; ok {
				t.Errorf("%s down: %s still exported", op, name)
			}
		}
		b.wantValue(t, "rekey_rotations_total", L{"key": "orders", "result": "success"}, 0)
		b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "wrap", "result": "success"}, 0)
		b.wantValue(t, "rekey_worker_last_cycle_timestamp_seconds", L{}, unixMilli(now))
		if log := b.log.String(); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "down") || !strings.Contains(log, strings.ToLower(op[:4])) {
			t.Errorf("%s down: log = %q", op, log)
		}
	}
	st.Fail = nil
	b.wantValue(t, "rekey_key_version", L{"key": "payments"}, 1)
}

func unixMilli(t time.Time) float64 { return float64(t.UnixMilli()) / 1e3 }

// TestNoKeyMaterialInLabels checks that every label value is one of the
// kinds the package documents: key names, versions, states, backend names,
// ops, results.
func TestNoKeyMaterialInLabels(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(rekey.Day))
	insertDEKs(t, st, "payments", 1, 3)
	b := setup(t, metrics.Options{Store: st, Backends: []string{"local"}})
	allowed := map[string]bool{"payments": true, "local": true, "success": true, "failure": true, "throttled": true, "1": true, "active": true}
	for _, op := range metrics.DefaultKMSOps() {
		allowed[op] = true
	}
	for name, mf := range b.gather(t) {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "le" {
					continue
				}
				if !allowed[lp.GetValue()] {
					t.Errorf("%s: label %s=%q is not a name, version, state, op or result", name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// TestUsageGauges: the wrap count of each usable version, the key's limit
// and the active version's ratio, read at scrape time.
func TestUsageGauges(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	ctx := context.Background()
	err := st.CreateKey(ctx,
		rekey.Key{Name: "payments", Backend: "vaultish", BackendRef: "ref-1", ActiveVersion: 1, ExpiresAt: time.Now().Add(rekey.Day),
			Policy: rekey.Policy{RotationPeriod: 2 * rekey.Day, MaxEncryptions: 1000}},
		rekey.KeyVersion{Key: "payments", Version: 1, State: rekey.VersionActive})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.ReserveWraps(ctx, rekey.WrapReservation{Backend: "vaultish", Ref: "ref-1", Version: 1, N: 900}); err != nil {
		t.Fatal(err)
	}
	b := setup(t, metrics.Options{Store: st, Backends: []string{"vaultish"}})
	b.m.SetBackends(map[string]rekey.KMS{"vaultish": kmsmw.Wrap(memkms.New(), kmsmw.Options{Name: "vaultish", Usage: &kmsmw.UsageOptions{Counter: st}})})
	got := b.gather(t)
	value := func(name string) float64 {
		t.Helper()
		mf := got[name]
		if mf == nil || len(mf.GetMetric()) != 1 {
			t.Fatalf("%s: %v, want one sample", name, mf)
		}
		return mf.GetMetric()[0].GetGauge().GetValue()
	}
	if v := value("rekey_key_encryptions"); v != 900 {
		t.Errorf("rekey_key_encryptions = %v, want 900", v)
	}
	if v := value("rekey_key_max_encryptions"); v != 1000 {
		t.Errorf("rekey_key_max_encryptions = %v, want 1000", v)
	}
	if v := value("rekey_key_usage_ratio"); v != 0.9 {
		t.Errorf("rekey_key_usage_ratio = %v, want 0.9", v)
	}
}

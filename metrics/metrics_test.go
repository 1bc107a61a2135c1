package metrics_test

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/rekeyhq/rekey/metrics"
	"github.com/rekeyhq/rekey/store/memstore"
)

// observer is rotation.Observer, declared again here because sibling
// packages do not import each other: if the engine's interface changes, this
// copy must follow and the check below says whether *Metrics still fits.
type observer interface {
	RotationStarted(key string)
	RotationFinished(key, result string, d time.Duration)
	DEKsRewrapped(key string, n int)
	Progress(key string, ratio float64)
	KMSCall(backend, op, result string, d time.Duration)
	RetirementBlocked(key string, version int, blocked bool)
	CycleDone(at time.Time, ok bool)
}

var _ observer = (*metrics.Metrics)(nil)

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
}

// extensionNames are metrics this package adds beyond the contract.
var extensionNames = []string{"rekey_backend_info"}

type bundle struct {
	reg *prometheus.Registry
	m   *metrics.Metrics
}

func setup(t *testing.T) bundle {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return bundle{reg: reg, m: m}
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
		t.Errorf("%s%s exists, want it deleted", name, fmtLabels(labels))
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

func TestEveryContractMetricIsExported(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.m.Init([]string{"payments"}, map[string]string{"local": "local"}, nil)

	// After New+Init: everything whose labels are known without the store.
	wantInit := []string{
		"rekey_backend_info",
		"rekey_kms_request_duration_seconds",
		"rekey_kms_requests_total",
		"rekey_rewrapped_deks_total",
		"rekey_rotation_duration_seconds",
		"rekey_rotation_failures_total",
		"rekey_rotations_total",
		"rekey_worker_last_cycle_timestamp_seconds",
		"rekey_worker_last_success_timestamp_seconds",
	}
	if got := b.names(t); !slices.Equal(got, wantInit) {
		t.Errorf("after New+Init the registry has\n  %v\nwant\n  %v", got, wantInit)
	}

	// The state gauges come from the store; the audit gauge from the first
	// verification.
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(90*rekey.Day))
	if err := b.m.Refresh(context.Background(), st, now); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	b.m.SetAuditChainValid(true)
	want := slices.Concat(contractNames, extensionNames)
	sort.Strings(want)
	if got := b.names(t); !slices.Equal(got, want) {
		t.Errorf("after Refresh and SetAuditChainValid the registry has\n  %v\nwant (DESIGN.md + extensions)\n  %v", got, want)
	}
}

func TestMetricTypesAndLabels(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.m.Init([]string{"payments"}, map[string]string{"local": "local"}, nil)
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(rekey.Day))
	if err := b.m.Refresh(context.Background(), st, now); err != nil {
		t.Fatal(err)
	}
	b.m.SetAuditChainValid(true)
	b.m.RetirementBlocked("payments", 1, false)

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
		"rekey_backend_info":                          {dto.MetricType_GAUGE, "backend,type"},
	}
	for name, mf := range b.gather(t) {
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

func TestInitCreatesCountersAtZero(t *testing.T) {
	t.Parallel()
	b := setup(t)
	keys := []string{"orders", "payments"}
	backends := map[string]string{"local": "local", "aws": "awskms"}
	b.m.Init(keys, backends, nil)

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
	for backend, typ := range backends {
		b.wantValue(t, "rekey_backend_info", L{"backend": backend, "type": typ}, 1)
		for _, op := range ops {
			for _, result := range []string{"success", "failure"} {
				b.wantValue(t, "rekey_kms_requests_total", L{"backend": backend, "op": op, "result": result}, 0)
			}
		}
	}
	if got, want := len(b.seriesOf(t, "rekey_kms_requests_total")), len(backends)*len(ops)*2; got != want {
		t.Errorf("rekey_kms_requests_total has %d series, want %d", got, want)
	}
	if got, want := len(b.seriesOf(t, "rekey_kms_request_duration_seconds")), len(backends)*len(ops); got != want {
		t.Errorf("rekey_kms_request_duration_seconds has %d series, want %d", got, want)
	}
	// Before the first cycle the dead-man's switch reads 0 ("never").
	b.wantValue(t, "rekey_worker_last_cycle_timestamp_seconds", L{}, 0)
	b.wantValue(t, "rekey_worker_last_success_timestamp_seconds", L{}, 0)

	// Init again (config reload) keeps what was counted.
	b.m.RotationFinished("orders", "failure", time.Second)
	b.m.Init(keys, backends, []string{"wrap"})
	b.wantValue(t, "rekey_rotation_failures_total", L{"key": "orders"}, 1)
}

func TestObserverHooks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.m.Init([]string{"payments"}, map[string]string{"local": "local"}, nil)

	b.m.RotationStarted("payments")
	b.m.Progress("payments", 0.25)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 0.25)
	b.m.Progress("payments", 7) // clamped
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 1)

	b.m.DEKsRewrapped("payments", 1000)
	b.m.DEKsRewrapped("payments", 24)
	b.m.DEKsRewrapped("payments", 0)
	b.wantValue(t, "rekey_rewrapped_deks_total", L{"key": "payments"}, 1024)

	b.m.RotationFinished("payments", "failure", 3*time.Second)
	b.wantValue(t, "rekey_rotations_total", L{"key": "payments", "result": "failure"}, 1)
	b.wantValue(t, "rekey_rotation_failures_total", L{"key": "payments"}, 1)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 1) // still open

	b.m.RotationFinished("payments", "success", 90*time.Second)
	b.wantValue(t, "rekey_rotations_total", L{"key": "payments", "result": "success"}, 1)
	b.wantValue(t, "rekey_rotation_failures_total", L{"key": "payments"}, 1)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 0)
	h, _ := b.series(t, "rekey_rotation_duration_seconds", L{"key": "payments"})
	if got := h.GetHistogram().GetSampleCount(); got != 1 {
		t.Errorf("rotation duration sample count = %d, want 1 (successes only)", got)
	}
	if got := h.GetHistogram().GetSampleSum(); got != 90 {
		t.Errorf("rotation duration sum = %v, want 90", got)
	}

	// A key the worker met after Init gets its counters on first sight.
	b.m.RotationFinished("orders", "failure", time.Second)
	b.wantValue(t, "rekey_rotations_total", L{"key": "orders", "result": "success"}, 0)
	b.wantValue(t, "rekey_rotation_failures_total", L{"key": "orders"}, 1)

	b.m.KMSCall("local", "rewrap", "success", 2*time.Millisecond)
	b.m.KMSCall("local", "rewrap", "success", 4*time.Millisecond)
	b.m.KMSCall("local", "rotate_key", "failure", time.Second)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rewrap", "result": "success"}, 2)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rotate_key", "result": "failure"}, 1)
	b.wantValue(t, "rekey_kms_requests_total", L{"backend": "local", "op": "rotate_key", "result": "success"}, 0)
	h, _ = b.series(t, "rekey_kms_request_duration_seconds", L{"backend": "local", "op": "rewrap"})
	if got := h.GetHistogram().GetSampleCount(); got != 2 {
		t.Errorf("kms duration sample count = %d, want 2", got)
	}

	b.m.RetirementBlocked("payments", 1, true)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 1)
	b.m.RetirementBlocked("payments", 1, false)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)

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
}

func TestObserverHooksAreSafeConcurrently(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(rekey.Day))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				b.m.DEKsRewrapped("payments", 1)
				b.m.KMSCall("local", "rewrap", "success", time.Millisecond)
				b.m.Progress("payments", 0.5)
				b.m.RetirementBlocked("payments", i, i%2 == 0)
				b.m.CycleDone(now, true)
				if err := b.m.Refresh(context.Background(), st, now); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.wantValue(t, "rekey_rewrapped_deks_total", L{"key": "payments"}, 1600)
	// Refresh has the last word: only version 1 exists.
	if got, want := b.seriesOf(t, "rekey_retirement_blocked"), []string{`{key="payments",version="1"}`}; !slices.Equal(got, want) {
		t.Errorf("rekey_retirement_blocked series = %v, want %v", got, want)
	}
}

func TestRegisterTwiceFails(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		t.Fatal(err)
	}
	before, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m, err := metrics.New(reg)
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

func TestRegisterPartialFailureRollsBack(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	// Occupy a name that New registers late, so that earlier collectors
	// are registered before the clash.
	squatter := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "rekey_worker_last_cycle_timestamp_seconds",
		Help: "Unix time at which the worker last finished a cycle (0: none since the process started).",
	})
	reg.MustRegister(squatter)
	if _, err := metrics.New(reg); err == nil {
		t.Fatal("New succeeded over a clashing collector")
	}
	// Nothing of the failed New is left registered: once the squatter is
	// gone, New works on the same registry.
	reg.Unregister(squatter)
	if _, err := metrics.New(reg); err != nil {
		t.Errorf("New after the clash was removed: %v (the failed New left collectors behind)", err)
	}
}

func TestNewWithNilRegisterer(t *testing.T) {
	t.Parallel()
	m, err := metrics.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	m.RotationFinished("payments", "success", time.Second) // does not panic
}

// ---- Refresh over a store ----

func newStore(t *testing.T) *memstore.Store {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	return st
}

func createKey(t *testing.T, st *memstore.Store, name string, expires time.Time) {
	t.Helper()
	err := st.CreateKey(context.Background(),
		rekey.Key{Name: name, Backend: "local", BackendRef: name, ExpiresAt: expires, Policy: rekey.DefaultPolicy()},
		rekey.KeyVersion{Version: 1})
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

// rotateTo commits a rotation of key from version 1 to 2 (version 1 becomes
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

func TestRefreshSetsGaugesFromStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	st := newStore(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	createKey(t, st, "payments", now.Add(-time.Hour))
	createKey(t, st, "orders", now.Add(30*rekey.Day))
	insertDEKs(t, st, "payments", 1, 3)
	expires := now.Add(90 * rekey.Day)
	// Rotation 1→2 committed, 1 of 3 DEKs re-wrapped and 1 failed; version
	// 1's grace is over while DEKs still reference it.
	r, lease := rotateTo2(t, st, "payments", now, expires, now.Add(-time.Minute), 3, 1, 1)
	insertDEKs(t, st, "payments", 2, 2)

	if err := b.m.Refresh(ctx, st, now); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	b.wantValue(t, "rekey_key_version", L{"key": "payments"}, 2)
	b.wantValue(t, "rekey_key_version", L{"key": "orders"}, 1)
	b.wantValue(t, "rekey_key_expiry_timestamp_seconds", L{"key": "payments"}, float64(expires.Unix()))
	b.wantValue(t, "rekey_key_expiry_timestamp_seconds", L{"key": "orders"}, float64(now.Add(30*rekey.Day).Unix()))
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "pending_retirement"}, 3)
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "2", "state": "active"}, 2)
	b.wantValue(t, "rekey_deks", L{"key": "orders", "version": "1", "state": "active"}, 0)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 2.0/3.0)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "orders"}, 0)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 1)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "2"}, 0)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "orders", "version": "1"}, 0)
	// Keys found in the store get their counters too.
	b.wantValue(t, "rekey_rotations_total", L{"key": "orders", "result": "failure"}, 0)

	// Before the grace ends it is not blocked.
	if err := b.m.Refresh(ctx, st, now.Add(-2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)

	// The rotation finishes, the DEKs move to version 2, version 1 retires:
	// the pending_retirement series goes, the retired one appears.
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
	r.State, r.Done, r.Failed = rekey.RotationDone, 3, 0
	if err := st.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationCommitted}, lease); err != nil {
		t.Fatal(err)
	}
	err = st.ChangeVersionState(ctx, rekey.VersionChange{
		Key: "payments", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement},
		To: rekey.VersionRetired, RequireUnused: true, At: now,
	}, &lease)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.m.Refresh(ctx, st, now); err != nil {
		t.Fatal(err)
	}
	b.wantAbsent(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "pending_retirement"})
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "retired"}, 0)
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "2", "state": "active"}, 5)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)
	b.wantValue(t, "rekey_rotation_progress_ratio", L{"key": "payments"}, 0)
}

func TestRefreshDeletesSeriesOfRemovedKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	now := time.Now()
	b.m.Init([]string{"payments", "orders"}, nil, nil)
	old := newStore(t)
	createKey(t, old, "payments", now.Add(rekey.Day))
	createKey(t, old, "orders", now.Add(rekey.Day))
	insertDEKs(t, old, "orders", 1, 4)
	if err := b.m.Refresh(ctx, old, now); err != nil {
		t.Fatal(err)
	}
	b.m.RetirementBlocked("orders", 7, true) // the engine reported a version the store will not list
	b.m.DEKsRewrapped("orders", 5)
	b.wantValue(t, "rekey_deks", L{"key": "orders", "version": "1", "state": "active"}, 4)

	// The store no longer has "orders" (simulated with a second store).
	cur := newStore(t)
	createKey(t, cur, "payments", now.Add(rekey.Day))
	if err := b.m.Refresh(ctx, cur, now); err != nil {
		t.Fatal(err)
	}
	for name, mf := range b.gather(t) {
		for _, m := range mf.GetMetric() {
			if strings.Contains(labelsOf(m), `key="orders"`) {
				t.Errorf("%s%s survived the key's removal", name, labelsOf(m))
			}
		}
	}
	b.wantValue(t, "rekey_key_version", L{"key": "payments"}, 1)
	b.wantValue(t, "rekey_rotations_total", L{"key": "payments", "result": "success"}, 0)
}

func TestRefreshDeletesStaleBlockedVersion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(rekey.Day))
	b.m.RetirementBlocked("payments", 9, true)
	if err := b.m.Refresh(context.Background(), st, now); err != nil {
		t.Fatal(err)
	}
	b.wantAbsent(t, "rekey_retirement_blocked", L{"key": "payments", "version": "9"})
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)
}

func TestRefreshCompromisedVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	st := newStore(t)
	now := time.Now()
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
	if err := b.m.Refresh(ctx, st, now); err != nil {
		t.Fatal(err)
	}
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "compromised"}, 2)
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 0)
	// The rotation is done and two DEKs are still there (corrupt): blocked.
	r.State = rekey.RotationDone
	if err := st.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationCommitted}, lease); err != nil {
		t.Fatal(err)
	}
	if err := b.m.Refresh(ctx, st, now); err != nil {
		t.Fatal(err)
	}
	b.wantValue(t, "rekey_retirement_blocked", L{"key": "payments", "version": "1"}, 1)
}

func TestRefreshErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "orders", now.Add(rekey.Day))
	createKey(t, st, "payments", now.Add(rekey.Day))
	if err := b.m.Refresh(ctx, st, now); err != nil {
		t.Fatal(err)
	}
	down := &rekey.UnreachableError{Service: "store:memory", Err: errors.New("down")}

	// Listing keys fails: nothing changes, the error says so.
	st.Fail = func(op string) error {
		if op == "ListKeys" {
			return down
		}
		return nil
	}
	if err := b.m.Refresh(ctx, st, now); !rekey.IsTransient(err) {
		t.Errorf("Refresh with ListKeys down = %v, want the UnreachableError", err)
	}
	b.wantValue(t, "rekey_key_version", L{"key": "orders"}, 1)

	// One key cannot be read: the others refresh, its series stay.
	st.Fail = func(op string) error {
		if op == "CountDEKs" {
			return down
		}
		return nil
	}
	insertDEKs(t, st, "payments", 1, 2)
	err := b.m.Refresh(ctx, st, now)
	if !rekey.IsTransient(err) || !strings.Contains(err.Error(), "orders") || !strings.Contains(err.Error(), "payments") {
		t.Errorf("Refresh with CountDEKs down = %v, want both keys named", err)
	}
	b.wantValue(t, "rekey_key_version", L{"key": "orders"}, 1)
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "active"}, 0)
	st.Fail = nil
	if err := b.m.Refresh(ctx, st, now); err != nil {
		t.Fatal(err)
	}
	b.wantValue(t, "rekey_deks", L{"key": "payments", "version": "1", "state": "active"}, 2)
}

// TestNoKeyMaterialInLabels checks that every label value is one of the
// kinds the package documents: key names, versions, states, backend names,
// ops, results.
func TestNoKeyMaterialInLabels(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st := newStore(t)
	now := time.Now()
	createKey(t, st, "payments", now.Add(rekey.Day))
	insertDEKs(t, st, "payments", 1, 3)
	b.m.Init([]string{"payments"}, map[string]string{"local": "local"}, nil)
	if err := b.m.Refresh(context.Background(), st, now); err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"payments": true, "local": true, "success": true, "failure": true, "1": true, "active": true}
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

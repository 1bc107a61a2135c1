package httpapi_test

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/httpapi"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/metrics"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/status"
	"github.com/rekeyhq/rekey/store/memstore"
)

// TestProgressAgreement (issue 7): a rotation stopped half-way with DEKs
// that could not be unwrapped shows one progress in `rekey plan`
// (Engine.Plan), `rekey status --json` (status.Build), /api/v1/status and
// rekey_rotation_progress_ratio on /metrics — rekey.Rotation.Progress, with
// the failed DEKs counted as dealt with.
//
// It needs rotation's plan to use Rotation.Progress (branch engine).
func TestProgressAgreement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st := memstore.New()
	st.Now = clock
	kms := memkms.New()
	backends := map[string]rekey.KMS{"mem": kms}
	kr := rekey.NewKeyring(st, backends, rekey.WithClock(clock))
	p := rekey.Policy{RotationPeriod: 30 * rekey.Day, RotateWithin: 7 * rekey.Day, NotifyWithin: 14 * rekey.Day, Grace: 2 * rekey.Day}
	if _, err := kr.CreateKey(ctx, "k", "mem", p); err != nil {
		t.Fatal(err)
	}
	k, err := st.GetKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	// 12 good DEKs and 8 whose wrapped bytes do not authenticate, mixed.
	for i := range 20 {
		if i%5 == 1 || i%5 == 3 {
			w, err := kms.Wrap(ctx, k.BackendRef, k.ActiveVersion, make([]byte, 32))
			if err != nil {
				t.Fatal(err)
			}
			w[len(w)-1] ^= 0xff
			if err := st.InsertDEKs(ctx, []rekey.DEK{{ID: rekey.NewID(), Key: "k", Version: k.ActiveVersion, Wrapped: w}}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := kr.NewDEKs(ctx, "k", "", 1); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	now = now.Add(25 * rekey.Day) // due
	mu.Unlock()

	// The rotation stops after its second batch of 5 (an injected error):
	// it stays open, re-wrapping, 10 of 20 DEKs dealt with.
	fps, err := failpoint.Parse(failpoint.RewrapAfterBatchCommit + "=error@2")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rotation.New(rotation.Config{Store: st, Backends: backends, Now: clock, BatchSize: 5, Concurrency: 1, Failpoints: fps})
	if err != nil {
		t.Fatal(err)
	}
	eng.RunCycle(ctx)
	open, err := st.OpenRotation(ctx, "k")
	if err != nil {
		t.Fatalf("no open rotation after the injected error: %v", err)
	}
	if open.State != rekey.RotationRewrapping || open.Failed == 0 || open.Done == 0 || open.Done+open.Failed >= open.Total {
		t.Fatalf("the fixture did not stop half-way with failed DEKs: %+v", open)
	}
	want := open.Progress()
	if want != float64(open.Done+open.Failed)/float64(open.Total) {
		t.Fatalf("Rotation.Progress = %v, not (done+failed)/total of %+v", want, open)
	}

	// rekey plan
	plan, err := eng.Plan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Keys) != 1 || plan.Keys[0].Rotation == nil {
		t.Fatalf("plan: %+v", plan)
	}
	got := map[string]float64{"plan": plan.Keys[0].Rotation.Ratio}

	// rekey status --json
	sv, err := status.Build(ctx, st, nil, clock())
	if err != nil {
		t.Fatal(err)
	}
	if len(sv.Rotations) != 1 {
		t.Fatalf("status: %d open rotations", len(sv.Rotations))
	}
	got["status"] = sv.Rotations[0].Progress

	// /api/v1/status and /metrics of one server
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg, metrics.Options{Store: st, Now: clock, Backends: []string{"mem"}}); err != nil {
		t.Fatal(err)
	}
	srv, err := httpapi.New(httpapi.Config{Store: st, Backends: backends, Gatherer: reg, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/status", nil))
	var api struct {
		Rotations []struct {
			Key      string  `json:"key"`
			Progress float64 `json:"progress"`
		} `json:"rotations"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &api); err != nil || len(api.Rotations) != 1 {
		t.Fatalf("/api/v1/status: %v: %s", err, rec.Body)
	}
	got["/api/v1/status"] = api.Rotations[0].Progress
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got["metric"] = math.NaN()
	for _, mf := range mfs {
		if mf.GetName() == metrics.NameRotationProgress {
			for _, m := range mf.GetMetric() {
				if labelValue(m, "key") == "k" {
					got["metric"] = m.GetGauge().GetValue()
				}
			}
		}
	}
	for who, v := range got {
		if v != want {
			t.Errorf("%s says progress %v, want %v ((done %d + failed %d) / total %d)", who, v, want, open.Done, open.Failed, open.Total)
		}
	}
}

func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

package rotation_test

import (
	"fmt"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/rotation"
)

func planOf(t *testing.T, eng *rotation.Engine, e *env, key string) rotation.KeyPlan {
	t.Helper()
	p, err := eng.Plan(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, kp := range p.Keys {
		if kp.Key == key {
			if kp.Error != "" {
				t.Fatalf("plan of %s: %s", key, kp.Error)
			}
			return kp
		}
	}
	t.Fatalf("no plan for key %s", key)
	return rotation.KeyPlan{}
}

// Plan shares its rules with the rest: the progress of a rotation with
// failed DEKs is Rotation.Progress ((done+failed)/total, as status and the
// metrics show it), and the action it shows for an old version is the one
// the cycle takes (rekey.DecideVersion): blocked while a DEK that cannot be
// unwrapped stays on it.
func TestPlanAgreesWithProgressAndCycle(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addCorruptDEK(t, "k")
	e.addDEKs(t, "k", 29)
	e.makeDue(t, "k")
	eng := e.engine(t)
	rotation.SetTestHook(eng, onHit(failpoint.RewrapAfterBatchCommit, 1, func() error { return errTest }))
	if kr := keyReport(t, eng.RunCycle(e.ctx), "k"); kr.Outcome != rotation.OutcomeFailed {
		t.Fatalf("first cycle = %+v", kr)
	}
	open := e.openRotations(t, "k")[0]
	if open.Failed != 1 || open.Done != 9 || open.Total != 30 {
		t.Fatalf("open rotation = %+v, want 9 done and 1 failed of 30", open)
	}
	kp := planOf(t, eng, e, "k")
	want := float64(open.Done+open.Failed) / float64(open.Total)
	if kp.Action != rotation.ActionResume || kp.Rotation == nil || kp.Rotation.Ratio != want || kp.Rotation.Ratio != open.Progress() {
		t.Fatalf("plan = %+v (rotation %+v), want ratio %v", kp, kp.Rotation, want)
	}
	// v1 is still the active version until the commit.
	if v1 := kp.Versions[0]; v1.Action != rekey.VersionKeep {
		t.Fatalf("v1 while rotating = %+v", v1)
	}

	rotation.SetTestHook(eng, nil)
	if rep := eng.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("resume = %+v", rep)
	}
	e.clock.Advance(testPolicy().Grace + 1)
	kp = planOf(t, eng, e, "k")
	v1 := kp.Versions[0]
	if kp.Action != rotation.ActionNone || v1.Version != 1 || v1.Action != rekey.VersionBlocked || v1.DEKs != 1 || kp.DEKsToRewrap != 1 {
		t.Fatalf("plan after grace = %+v", kp)
	}
	kr := keyReport(t, eng.RunCycle(e.ctx), "k")
	if len(kr.Blocked) != 1 || kr.Blocked[0].Version != 1 || len(kr.Retired) != 0 {
		t.Fatalf("cycle after grace = %+v, want v1 blocked as planned", kr)
	}
}

// A backend held to a request rate (kmsmw's RateLimit) bounds the plan's
// re-wrap rate: the limit over the backend calls one DEK takes.
func TestPlanRateLimit(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		kms       func(e *env) rekey.KMS
		limit     float64
		wantRate  float64
		wantCalls map[string]int64
	}{
		// Without server-side re-wrap: unwrap + wrap, 2 calls per DEK.
		{"unwrap and wrap", func(e *env) rekey.KMS { return &onlyKMS{KMS: e.kms} }, 200, 100, map[string]int64{"unwrap": 30, "wrap": 30}},
		// Batches of 10 in 4 concurrent calls: 4 calls per 10 DEKs.
		{"batch", func(e *env) rekey.KMS { return e.kms }, 200, 500, map[string]int64{"rewrap_batch": 12}},
		// A limit above what the assumed rate needs changes nothing.
		{"high limit", func(e *env) rekey.KMS { return &onlyKMS{KMS: e.kms} }, 1e6, rotation.AssumedRate, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.createKey(t, "k", testPolicy())
			e.addDEKs(t, "k", 30)
			e.makeDue(t, "k")
			eng := e.engine(t, func(cfg *rotation.Config) {
				cfg.Backends[e.backend] = kmsmw.Wrap(c.kms(e), kmsmw.Options{Name: e.backend, RateLimit: c.limit})
			})
			kp := planOf(t, eng, e, "k")
			if kp.Rate != c.wantRate {
				t.Fatalf("rate = %v (%s), want %v", kp.Rate, kp.RateSource, c.wantRate)
			}
			wantSource := "assumed"
			if c.wantRate != rotation.AssumedRate {
				wantSource = fmt.Sprintf("rate limit %g/s", c.limit)
			}
			if kp.RateSource != wantSource {
				t.Fatalf("rate source = %q, want %q", kp.RateSource, wantSource)
			}
			if want := 30 / c.wantRate; kp.EstimatedSeconds != want {
				t.Fatalf("estimated %v s, want %v", kp.EstimatedSeconds, want)
			}
			for op, n := range c.wantCalls {
				if kp.BackendCalls[op] != n {
					t.Fatalf("backend calls = %v, want %s = %d", kp.BackendCalls, op, n)
				}
			}
		})
	}
}

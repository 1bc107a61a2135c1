package torture

import (
	"reflect"
	"testing"

	"github.com/rekeyhq/rekey/failpoint"
)

// TestPlanLife: a seed plans the same lives again; every round of
// len(names)+2 lives arms each failpoint name first in exactly one life,
// and two lives arm nothing; every plan parses as REKEY_FAILPOINTS.
func TestPlanLife(t *testing.T) {
	t.Parallel()
	names := failpoint.Names()
	round := len(names) + 2
	for _, seed := range []int64{1, 42, -7} {
		for r := range 3 {
			leads := map[string]int{}
			bare := 0
			for i := 1; i <= round; i++ {
				n := r*round + i
				p := planLife(seed, n)
				if q := planLife(seed, n); !reflect.DeepEqual(p, q) {
					t.Fatalf("seed %d life %d planned twice: %v, then %v", seed, n, p, q)
				}
				if len(p.armed) == 0 {
					bare++
					continue
				}
				leads[p.armed[0].name]++
				if _, err := failpoint.Parse(p.spec()); err != nil {
					t.Errorf("seed %d life %d: %s: %v", seed, n, p.spec(), err)
				}
			}
			for _, name := range names {
				if leads[name] != 1 {
					t.Errorf("seed %d round %d: %s leads %d lives, want 1", seed, r, name, leads[name])
				}
			}
			if bare != 2 {
				t.Errorf("seed %d round %d: %d lives arm nothing, want 2", seed, r, bare)
			}
		}
	}
	if reflect.DeepEqual(planLife(1, 1), planLife(2, 1)) && reflect.DeepEqual(planLife(1, 2), planLife(2, 2)) {
		t.Error("seeds 1 and 2 plan the same first lives")
	}
}

// TestLogParsing: a crash is read from the failpoint's own line, an
// injected error only from the worker's error lines.
func TestLogParsing(t *testing.T) {
	t.Parallel()
	log := `{"level":"INFO","msg":"audit_event","error":"failpoint rotation.after_claim: injected error"}
{"level":"ERROR","msg":"key rotation failed","error":"failpoint rewrap.after_backend: injected error"}
failpoint rotation.after_commit: crash (exit 137)
`
	if got := crashedAt(log); got != failpoint.RotationAfterCommit {
		t.Errorf("crashedAt = %q, want %s", got, failpoint.RotationAfterCommit)
	}
	if crashedAt("exit 137\n") != "" {
		t.Error("crashedAt found a crash in a log without one")
	}
	if !injectedErrorLogged(log, failpoint.RewrapAfterBackend) {
		t.Error("the worker's error line was not counted")
	}
	if injectedErrorLogged(log, failpoint.RotationAfterClaim) {
		t.Error("a forwarded audit event was counted as this life's error")
	}
}

// TestReplicasOf: without Config.Replicas every life has one worker; with
// it, about one life of three has that many, the same lives for a seed.
func TestReplicasOf(t *testing.T) {
	t.Parallel()
	for _, r := range []int{0, 1} {
		h := &harness{cfg: Config{Seed: 42, Replicas: r}}
		for n := 1; n <= 100; n++ {
			if got := h.replicasOf(n); got != 1 {
				t.Fatalf("Replicas %d, life %d: %d workers, want 1", r, n, got)
			}
		}
	}
	for _, seed := range []int64{1, 42, -7} {
		h := &harness{cfg: Config{Seed: seed, Replicas: 2}}
		several := 0
		for n := 1; n <= 300; n++ {
			got := h.replicasOf(n)
			if got != h.replicasOf(n) {
				t.Fatalf("seed %d life %d: the number of workers changes from call to call", seed, n)
			}
			switch got {
			case 2:
				several++
			case 1:
			default:
				t.Fatalf("seed %d life %d: %d workers, want 1 or 2", seed, n, got)
			}
		}
		if several < 60 || several > 140 {
			t.Errorf("seed %d: %d of 300 lives with two workers, want about 100", seed, several)
		}
	}
}

package torture

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/rekeyhq/rekey/failpoint"
)

// armed is one failpoint of a life: name=action@nth.
type armed struct {
	name   string
	action failpoint.Action
	nth    int
}

// lifePlan is what one life of the worker is given: failpoints to arm and
// when it is killed if it is still running.
type lifePlan struct {
	armed     []armed
	killAfter time.Duration
}

// perBatch are the failpoints passed once per re-wrap batch: their N is
// drawn from a wider range.
var perBatch = map[string]bool{failpoint.RewrapAfterBackend: true, failpoint.RewrapAfterBatchCommit: true}

// planLife plans life n (1-based) of a run with seed, from the seed and n
// alone. Lives come in rounds of len(names)+2: in each, every failpoint
// name leads one life (so that each is armed as often as the others),
// with up to two more names beside it, and two lives arm nothing and are
// only killed. A life with failpoints is killed after 1.5 to 4 s (time
// for its points to come up), a bare one after 50 ms to 2.5 s.
func planLife(seed int64, n int) lifePlan {
	names := failpoint.Names()
	round, pos := (n-1)/(len(names)+2), (n-1)%(len(names)+2)
	order := rand.New(rand.NewPCG(uint64(seed), uint64(round)<<32|0xfa11)).Perm(len(names) + 2)
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(n)))
	lead := order[pos]
	if lead >= len(names) {
		return lifePlan{killAfter: 50*time.Millisecond + time.Duration(rng.Int64N(int64(2450*time.Millisecond)))}
	}
	p := lifePlan{killAfter: 1500*time.Millisecond + time.Duration(rng.Int64N(int64(2500*time.Millisecond)))}
	chosen := map[int]bool{lead: true}
	p.armed = append(p.armed, armPoint(rng, names[lead]))
	for range rng.IntN(3) {
		i := rng.IntN(len(names))
		if !chosen[i] {
			chosen[i] = true
			p.armed = append(p.armed, armPoint(rng, names[i]))
		}
	}
	return p
}

func armPoint(rng *rand.Rand, name string) armed {
	a := armed{name: name, action: failpoint.Crash, nth: 1 + rng.IntN(2)}
	if rng.IntN(5) < 2 {
		a.action = failpoint.Error
	}
	if perBatch[name] {
		a.nth = 1 + rng.IntN(12)
	}
	return a
}

// spec is the REKEY_FAILPOINTS value of the plan ("" for none).
func (p lifePlan) spec() string {
	parts := make([]string, len(p.armed))
	for i, a := range p.armed {
		parts[i] = fmt.Sprintf("%s=%s@%d", a.name, a.action, a.nth)
	}
	return strings.Join(parts, ";")
}

// arms reports whether the plan arms name with action.
func (p lifePlan) arms(name string, action failpoint.Action) bool {
	for _, a := range p.armed {
		if a.name == name && a.action == action {
			return true
		}
	}
	return false
}

func (p lifePlan) String() string {
	if len(p.armed) == 0 {
		return fmt.Sprintf("no failpoints, kill -9 after %v", p.killAfter)
	}
	return fmt.Sprintf("%s=%s, kill -9 after %v", failpoint.EnvVar, p.spec(), p.killAfter)
}

package rotation_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/retry"
	"github.com/rekeyhq/rekey/rotation"
)

// TestProperty_RandomInterleavings drives two keys through random
// interleavings of cycles (some with an injected error at a random
// failpoint, some with a flaky or broken backend), new DEKs, manual and
// emergency rotations, early retirements and clock jumps, and checks the
// invariants after every step: every DEK unwraps to its plaintext, at most
// one open rotation per key, exactly one active version, versions only go
// up, the backend is at most one version ahead of the store, and no
// retired or destroyed version is referenced by a DEK. At the end, once the
// faults stop and the cycles settle, the backend's version count equals the
// store's.
func TestProperty_RandomInterleavings(t *testing.T) {
	keys := []string{"alpha", "beta"}
	rapid.Check(t, func(rt *rapid.T) {
		e := setup(rt)
		p := testPolicy()
		for _, k := range keys {
			e.createKey(rt, k, p)
			e.addDEKs(rt, k, rapid.IntRange(0, 25).Draw(rt, "deks_"+k))
		}
		var flaky atomic.Int64   // backend calls left to fail transiently
		var broken atomic.Bool   // every backend call of beta fails
		var checking atomic.Bool // the test's own calls see a healthy backend
		betaRef := e.key(rt, "beta").BackendRef
		e.mkms.Fail = func(op, ref string) error {
			if checking.Load() {
				return nil
			}
			if broken.Load() && ref == betaRef {
				return errors.New("backend refuses")
			}
			if flaky.Add(-1) >= 0 {
				return transient(errors.New("flaky"))
			}
			return nil
		}
		lastActive := map[string]int{"alpha": 1, "beta": 1}
		newEngine := func(rt *rapid.T) *rotation.Engine {
			var mods []func(*rotation.Config)
			if rapid.Bool().Draw(rt, "inject") {
				name := rapid.SampledFrom(failpoint.Names()).Draw(rt, "failpoint")
				nth := rapid.IntRange(1, 3).Draw(rt, "nth")
				mods = append(mods, fp(fmt.Sprintf("%s=error@%d", name, nth)))
			}
			mods = append(mods, func(c *rotation.Config) {
				c.BatchSize = rapid.IntRange(1, 12).Draw(rt, "batch")
				c.Concurrency = rapid.IntRange(1, 4).Draw(rt, "concurrency")
				c.RotateRetry = retry.Policy{Attempts: 3, Base: time.Microsecond, Max: time.Microsecond}
			})
			return e.engine(rt, mods...)
		}
		rt.Repeat(map[string]func(*rapid.T){
			"cycle": func(rt *rapid.T) {
				newEngine(rt).RunCycle(e.ctx)
			},
			"add DEKs": func(rt *rapid.T) {
				checking.Store(true) // the application's backend calls are not under test
				defer checking.Store(false)
				k := rapid.SampledFrom(keys).Draw(rt, "key")
				_, err := e.tryAddDEKs(rt, k, rapid.IntRange(1, 8).Draw(rt, "n"))
				if errors.Is(err, rekey.ErrVersionDisabled) {
					// Refused while an emergency rotation replaces a
					// compromised active version: only then.
					if v := e.versions(rt, k)[e.key(rt, k).ActiveVersion]; v.State != rekey.VersionCompromised {
						rt.Fatalf("InsertDEKs refused with ErrVersionDisabled, but the active version is %s", v.State)
					}
					return
				}
				if err != nil {
					rt.Fatalf("insert DEKs: %v", err)
				}
			},
			"manual rotate": func(rt *rapid.T) {
				_, _ = newEngine(rt).Rotate(e.ctx, rapid.SampledFrom(keys).Draw(rt, "key"), "", "")
			},
			"compromise": func(rt *rapid.T) {
				k := rapid.SampledFrom(keys).Draw(rt, "key")
				v := rapid.IntRange(1, e.key(rt, k).ActiveVersion).Draw(rt, "version")
				_, _ = newEngine(rt).RotateCompromised(e.ctx, k, v)
			},
			"retire early": func(rt *rapid.T) {
				k := rapid.SampledFrom(keys).Draw(rt, "key")
				v := rapid.IntRange(1, e.key(rt, k).ActiveVersion).Draw(rt, "version")
				_ = newEngine(rt).Retire(e.ctx, k, v)
			},
			"advance clock": func(rt *rapid.T) {
				e.clock.Advance(time.Duration(rapid.IntRange(0, 40).Draw(rt, "days")) * rekey.Day)
			},
			"flaky backend": func(rt *rapid.T) {
				flaky.Store(int64(rapid.IntRange(1, 6).Draw(rt, "fails")))
			},
			"break beta": func(rt *rapid.T) {
				broken.Store(!broken.Load())
			},
			"": func(rt *rapid.T) {
				checking.Store(true)
				defer checking.Store(false)
				for _, k := range keys {
					checkInvariants(rt, e, k, lastActive, false)
				}
			},
		})

		// Settle: no more faults, cycles until nothing is open.
		flaky.Store(0)
		broken.Store(false)
		eng := e.engine(rt)
		for i := 0; i < 3; i++ {
			e.clock.Advance(rotation.DefaultLeaseTTL)
			eng.RunCycle(e.ctx)
		}
		checking.Store(true)
		for _, k := range keys {
			checkInvariants(rt, e, k, lastActive, true)
			if n := len(e.openRotations(rt, k)); n != 0 {
				rt.Fatalf("key %s: %d open rotations after settling", k, n)
			}
			if b, s := e.backendVersion(rt, k), len(e.versions(rt, k)); b != s {
				rt.Fatalf("key %s: backend has %d versions, store %d", k, b, s)
			}
		}
	})
}

func checkInvariants(rt *rapid.T, e *env, key string, lastActive map[string]int, settled bool) {
	rt.Helper()
	e.checkDEKs(rt, key)
	if n := len(e.openRotations(rt, key)); n > 1 {
		rt.Fatalf("key %s: %d open rotations", key, n)
	}
	k := e.key(rt, key)
	vs := e.versions(rt, key)
	active := 0
	for n := 1; n <= len(vs); n++ {
		v, ok := vs[n]
		if !ok {
			rt.Fatalf("key %s: versions %v are not 1..%d", key, vs, len(vs))
		}
		if v.State == rekey.VersionActive {
			active++
			if n != k.ActiveVersion {
				rt.Fatalf("key %s: version %d active, key says %d", key, n, k.ActiveVersion)
			}
		}
	}
	// Between marking the active version compromised and committing the
	// emergency rotation, the key's version is compromised, not active;
	// once settled, exactly one is active.
	if st := vs[k.ActiveVersion].State; active > 1 || active == 0 && (st != rekey.VersionCompromised || settled) {
		rt.Fatalf("key %s: %d active versions (key's version %d is %s)", key, active, k.ActiveVersion, st)
	}
	if k.ActiveVersion < lastActive[key] {
		rt.Fatalf("key %s: active version went down from %d to %d", key, lastActive[key], k.ActiveVersion)
	}
	lastActive[key] = k.ActiveVersion
	if b := e.backendVersion(rt, key); b < len(vs) || b > len(vs)+1 {
		rt.Fatalf("key %s: backend at version %d, store has %d", key, b, len(vs))
	}
	counts := e.counts(rt, key)
	for n, v := range vs {
		if (v.State == rekey.VersionRetired || v.State == rekey.VersionDestroyed) && counts[n] > 0 {
			rt.Fatalf("key %s: %s version %d referenced by %d DEKs", key, v.State, n, counts[n])
		}
	}
}

package rotation_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/rotation"
)

// moveEnv is the env with a second backend, "hsm", to move keys to.
type moveEnv struct {
	*env
	hsm *memkms.KMS
}

func setupMove(t *testing.T) *moveEnv {
	t.Helper()
	return &moveEnv{env: setup(t), hsm: memkms.New()}
}

// withHSM gives the engine both backends, wrapped as in production.
func (m *moveEnv) withHSM(c *rotation.Config) {
	c.Backends = map[string]rekey.KMS{
		m.backend: kmsmw.Wrap(m.kms, kmsmw.Options{Name: m.backend, Retry: fastRetry}),
		"hsm":     kmsmw.Wrap(m.hsm, kmsmw.Options{Name: "hsm", Retry: fastRetry}),
	}
}

func (m *moveEnv) kmsNamed(name string) rekey.KMS {
	if name == "hsm" {
		return m.hsm
	}
	return m.kms
}

// checkPlaced checks that every DEK of key unwraps, on the backend its
// version lives on (rekey.PlacementOf), to its plaintext, and that each is
// on version want.
func (m *moveEnv) checkPlaced(t *testing.T, key string, want int) {
	t.Helper()
	k := m.key(t, key)
	vs := m.versions(t, key)
	for _, d := range m.allDEKs(t, key) {
		if d.Version != want {
			t.Fatalf("dek %s is on version %d, want %d", d.ID, d.Version, want)
		}
		p := rekey.PlacementOf(k, vs[d.Version])
		pt, err := m.kmsNamed(p.Backend).Unwrap(m.ctx, p.Ref, p.Version, d.Wrapped)
		if err != nil {
			t.Fatalf("dek %s (v%d on %s v%d) does not unwrap: %v", d.ID, d.Version, p.Backend, p.Version, err)
		}
		if !bytes.Equal(pt, m.plaintext(d.ID)) {
			t.Fatalf("dek %s unwraps to another plaintext", d.ID)
		}
	}
}

// A move creates the new version on the target backend (the key's first
// version there, whatever rekey's number), re-wraps every DEK onto it,
// makes it the key's backend, and retires the old version on the old
// backend after the grace. The audit trail names both backends. Later
// rotations happen on the new backend, numbered on by rekey.
func TestMove_ReWrapsOntoTheTargetBackend(t *testing.T) {
	t.Parallel()
	m := setupMove(t)
	m.createKey(t, "k", testPolicy())
	m.addDEKs(t, "k", 35)
	eng := m.engine(t, m.withHSM)
	if _, err := eng.Rotate(m.ctx, "k", "", ""); err != nil { // v2 on mem: the move is to rekey's v3
		t.Fatal(err)
	}
	m.addDEKs(t, "k", 5)
	r, err := eng.Move(m.ctx, "k", "hsm", "decommission the old HSM")
	if err != nil {
		t.Fatal(err)
	}
	if r.FromVersion != 2 || r.ToVersion != 3 || r.ToBackend != "hsm" || r.Reason != rekey.ReasonMove || r.Done != 40 || r.State != rekey.RotationDone {
		t.Fatalf("move = %+v", r)
	}
	k := m.key(t, "k")
	if k.Backend != "hsm" || k.ActiveVersion != 3 {
		t.Fatalf("key after the move = %+v, want on hsm with v3 active", k)
	}
	vs := m.versions(t, "k")
	if p := rekey.PlacementOf(k, vs[3]); p.Backend != "hsm" || p.Version != 1 {
		t.Fatalf("v3 lives at %+v, want hsm version 1", p)
	}
	if p := rekey.PlacementOf(k, vs[2]); p.Backend != m.backend || p.Version != 2 || vs[2].State != rekey.VersionPendingRetirement {
		t.Fatalf("v2 = %+v at %+v, want pending retirement on %s version 2", vs[2], p, m.backend)
	}
	m.checkPlaced(t, "k", 3)
	if cur, err := m.hsm.CurrentVersion(m.ctx, k.BackendRef); err != nil || cur != 1 {
		t.Fatalf("hsm current version = %d, %v; want 1", cur, err)
	}
	var named int
	for _, ev := range m.audit(t, "k") {
		if ev.RotationID == r.ID && strings.Contains(ev.Reason, "from "+m.backend+" to hsm") {
			named++
		}
	}
	if named < 4 { // started, version created, progress..., committed, completed
		t.Fatalf("%d audit events of the move name both backends, want every one", named)
	}

	// New DEKs go to the new backend at once.
	m.addDEKsPlaced(t, "k", 3)
	// After the grace, v2 is retired on the old backend (disabled there).
	m.clock.Advance(testPolicy().Grace + time.Second)
	rep := eng.RunCycle(m.ctx)
	if kr := keyReport(t, rep, "k"); kr.Outcome != rotation.OutcomeIdle || !slices.Equal(kr.Retired, []int{1, 2}) {
		t.Fatalf("cycle after the grace = %+v", kr)
	}
	// v1 is disabled on the old backend; v2, the newest there, cannot be
	// (backends keep a key's newest version usable): it is retired in the
	// store, and the audit event says what is left to do.
	old := m.allDEKs(t, "k")[0]
	if _, err := m.kms.Wrap(m.ctx, memkms.RefPrefix+"k", 1, m.plaintext(old.ID)); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Fatalf("wrap under the retired v1 on the old backend: %v, want ErrVersionDisabled", err)
	}
	var retired bool
	for _, ev := range m.audit(t, "k") {
		if ev.Type == rekey.AuditVersionRetired && ev.FromVersion == 2 && strings.HasPrefix(ev.Reason, "on backend "+m.backend+"; version 2 stays enabled there") {
			retired = true
		}
	}
	if !retired {
		t.Fatalf("no version.retired event of v2 names the old backend and what is left there: %+v", m.audit(t, "k"))
	}
	if err := eng.Retire(m.ctx, "k", 2); err != nil {
		t.Fatalf("retire v2 again: %v", err)
	}

	// The next rotation is on hsm: rekey's v4 is hsm's version 2.
	r, err = eng.Rotate(m.ctx, "k", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.ToVersion != 4 {
		t.Fatalf("rotation after the move = %+v", r)
	}
	if p := rekey.PlacementOf(m.key(t, "k"), m.versions(t, "k")[4]); p.Backend != "hsm" || p.Version != 2 {
		t.Fatalf("v4 lives at %+v, want hsm version 2", p)
	}
	m.checkPlaced(t, "k", 4)
}

// addDEKsPlaced adds DEKs as the application would through the Keyring,
// which wraps under the active version on the backend it lives on.
func (m *moveEnv) addDEKsPlaced(t *testing.T, key string, n int) {
	t.Helper()
	kr := rekey.NewKeyring(m.store, map[string]rekey.KMS{m.backend: m.kms, "hsm": m.hsm}, rekey.WithClock(m.clock.Now))
	for range n {
		id, pt, err := kr.NewDEK(m.ctx, key, "")
		if err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		m.plain[id] = pt
		m.mu.Unlock()
		got, err := kr.OpenDEK(m.ctx, id)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("open a new DEK after the move: %v", err)
		}
	}
}

// Every failpoint of the state machine during a move: the crashed worker's
// key is finished by a new worker with exactly one new version, on the
// target backend (a key a crashed attempt created there is adopted, never
// created again), every DEK on it, the old version retired on the old
// backend.
func TestMove_CrashAtEveryFailpointThenResume(t *testing.T) {
	t.Parallel()
	for _, name := range failpoint.Names() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := setupMove(t)
			p := testPolicy()
			p.Grace = 0
			m.createKey(t, "k", p)
			m.addDEKs(t, "k", 35)
			set := failpoint.MustParse(name + "=crash")
			set.SetExit(func(code int) { panic(crashed{code}) })
			set.SetOutput(nil)
			eng := m.engine(t, m.withHSM, func(c *rotation.Config) { c.Failpoints = set })
			crashedAt := func(run func()) (hit bool) {
				defer func() {
					switch r := recover(); r {
					case nil:
					case crashed{137}:
						hit = true
					default:
						t.Fatalf("recovered %v, want a crash with 137", r)
					}
				}()
				run()
				return false
			}
			hit := crashedAt(func() {
				if _, err := eng.Move(m.ctx, "k", "hsm", ""); err != nil {
					t.Fatalf("move: %v", err)
				}
			})
			if !hit { // retirement happens in the cycle after the move
				hit = crashedAt(func() { eng.RunCycle(m.ctx) })
			}
			if !hit {
				t.Fatalf("failpoint %s was never hit during a move and the cycle after it", name)
			}
			m.clock.Advance(rotation.DefaultLeaseTTL + time.Second)
			rep := m.engine(t, m.withHSM).RunCycle(m.ctx)
			if !rep.OK() {
				t.Fatalf("cycle after the crash = %+v", rep)
			}
			k := m.key(t, "k")
			if k.Backend != "hsm" || k.ActiveVersion != 2 {
				t.Fatalf("key = %+v, want on hsm with v2 active", k)
			}
			if cur, err := m.hsm.CurrentVersion(m.ctx, k.BackendRef); err != nil || cur != 1 {
				t.Fatalf("hsm current version = %d, %v; want exactly 1", cur, err)
			}
			if cur, err := m.kms.CurrentVersion(m.ctx, memkms.RefPrefix+"k"); err != nil || cur != 1 {
				t.Fatalf("old backend current version = %d, %v; want still 1", cur, err)
			}
			vs := m.versions(t, "k")
			if len(vs) != 2 || vs[2].State != rekey.VersionActive || vs[1].State != rekey.VersionRetired {
				t.Fatalf("versions = %+v", vs)
			}
			m.checkPlaced(t, "k", 2)
			if rs := m.rotations(t, "k"); len(rs) != 1 || rs[0].State != rekey.RotationDone || rs[0].ToBackend != "hsm" {
				t.Fatalf("rotations = %+v, want the one move, done", rs)
			}
			if name == failpoint.RotationAfterBackendRotate && m.countAudit(t, "k", rekey.AuditVersionAdopted) != 1 {
				t.Fatalf("a crash after creating the key on the target: want the key adopted (version.adopted), audit %v", m.auditTypes(t, "k"))
			}
		})
	}
}

// A move to a backend that is not configured, or to the key's own, is
// refused before anything is written.
func TestMove_Refused(t *testing.T) {
	t.Parallel()
	m := setupMove(t)
	m.createKey(t, "k", testPolicy())
	eng := m.engine(t, m.withHSM)
	for _, to := range []string{"nope", m.backend, ""} {
		if _, err := eng.Move(m.ctx, "k", to, ""); !errors.Is(err, rekey.ErrInvalidArgument) {
			t.Fatalf("move to %q: %v, want ErrInvalidArgument", to, err)
		}
	}
	if rs := m.rotations(t, "k"); len(rs) != 0 {
		t.Fatalf("a refused move wrote rotations: %+v", rs)
	}
	if _, err := m.hsm.CurrentVersion(m.ctx, memkms.RefPrefix+"k"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("a refused move created the key on hsm: %v", err)
	}
}

// A key the configuration declares on another backend is a planned move:
// Plan shows it (with its backend calls) before anything happens, and the
// next cycle runs it as a move rotation, audited like one.
func TestMove_DeclaredBackendIsAPlannedMove(t *testing.T) {
	t.Parallel()
	m := setupMove(t)
	m.createKey(t, "k", testPolicy())
	m.createKey(t, "other", testPolicy())
	m.addDEKs(t, "k", 12)
	eng := m.engine(t, m.withHSM, func(c *rotation.Config) {
		c.DeclaredBackends = map[string]string{"k": "hsm", "other": m.backend}
	})
	p, err := eng.Plan(m.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var kp rotation.KeyPlan
	for _, x := range p.Keys {
		if x.Key == "other" && x.Action != rotation.ActionNone {
			t.Fatalf("plan of a key declared where it is = %+v", x)
		}
		if x.Key == "k" {
			kp = x
		}
	}
	if kp.Action != rotation.ActionMove || kp.MoveTo != "hsm" || kp.DEKsToRewrap != 12 ||
		kp.BackendCalls["create_key"] != 1 || kp.BackendCalls["unwrap"] != 12 || kp.BackendCalls["wrap"] != 12 || kp.BackendCalls["rotate_key"] != 0 {
		t.Fatalf("plan = %+v, want a move to hsm: create_key 1, unwrap 12, wrap 12", kp)
	}
	if rs := m.rotations(t, "k"); len(rs) != 0 {
		t.Fatalf("plan wrote rotations: %+v", rs)
	}
	rep := eng.RunCycle(m.ctx)
	if kr := keyReport(t, rep, "k"); kr.Outcome != rotation.OutcomeRotated || kr.Rewrapped != 12 {
		t.Fatalf("cycle = %+v", kr)
	}
	rs := m.rotations(t, "k")
	if len(rs) != 1 || rs[0].Reason != rekey.ReasonMove || rs[0].ToBackend != "hsm" || !strings.Contains(rs[0].Note, "declared in the configuration") {
		t.Fatalf("rotations = %+v", rs)
	}
	if k := m.key(t, "k"); k.Backend != "hsm" {
		t.Fatalf("key after the cycle = %+v", k)
	}
	m.checkPlaced(t, "k", 2)
	if p, err = eng.Plan(m.ctx); err != nil {
		t.Fatal(err)
	}
	for _, x := range p.Keys {
		if x.Action != rotation.ActionNone || x.MoveTo != "" {
			t.Fatalf("plan after the move = %+v", x)
		}
	}
}

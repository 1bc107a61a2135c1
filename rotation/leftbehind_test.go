package rotation_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/rotation"
)

// moveAndRetire makes key k on the env's backend with policy p and DEKs,
// rotates it once there (v2), moves it to hsm (v3), and runs the cycle
// after the grace that retires v1 and v2 on the old backend.
func moveAndRetire(t *testing.T, m *moveEnv, eng *rotation.Engine, key string, p rekey.Policy) {
	t.Helper()
	m.createKey(t, key, p)
	m.addDEKs(t, key, 12)
	if _, err := eng.Rotate(m.ctx, key, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Move(m.ctx, key, "hsm", ""); err != nil {
		t.Fatal(err)
	}
	m.clock.Advance(p.Grace + time.Second)
	if kr := keyReport(t, eng.RunCycle(m.ctx), key); !slices.Equal(kr.Retired, []int{1, 2}) || len(kr.Destroyed) != 0 {
		t.Fatalf("cycle after the grace = %+v, want v1 and v2 retired, none destroyed", kr)
	}
}

// destroyPolicy is testPolicy with destroy_after set.
func destroyPolicy() rekey.Policy {
	p := testPolicy()
	p.DestroyAfter = 3 * rekey.Day
	return p
}

// A key moved away leaves its newest version on the old backend enabled
// (retired in the store only). With destroy_after, that version's time
// deletes the whole key there (KeyDeleter), after the older version there
// was destroyed as a version; the audit trail says so; DEKs on the new
// backend still open.
func TestMove_DestroyAfterDeletesTheKeyOnTheOldBackend(t *testing.T) {
	t.Parallel()
	m := setupMove(t)
	eng := m.engine(t, m.withHSM)
	moveAndRetire(t, m, eng, "k", destroyPolicy())
	ref := memkms.RefPrefix + "k"
	if cur, err := m.mkms.CurrentVersion(m.ctx, ref); err != nil || cur != 2 {
		t.Fatalf("old backend before destroy_after: current %d, %v; want the key there at version 2", cur, err)
	}

	m.clock.Advance(destroyPolicy().DestroyAfter + time.Second)
	kr := keyReport(t, eng.RunCycle(m.ctx), "k")
	if kr.Outcome == rotation.OutcomeFailed || !slices.Equal(kr.Destroyed, []int{1, 2}) {
		t.Fatalf("cycle after destroy_after = %+v, want v1 and v2 destroyed", kr)
	}
	if _, err := m.mkms.CurrentVersion(m.ctx, ref); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("old backend after destroy_after: %v, want the key deleted (ErrKeyNotFound)", err)
	}
	vs := m.versions(t, "k")
	if vs[1].State != rekey.VersionDestroyed || vs[2].State != rekey.VersionDestroyed || vs[3].State != rekey.VersionActive {
		t.Fatalf("versions after destroy_after: %+v", vs)
	}
	var deleted int
	for _, ev := range m.audit(t, "k") {
		if ev.Type == rekey.AuditVersionDestroyed && ev.FromVersion == 2 &&
			strings.HasPrefix(ev.Reason, "on backend "+m.backend+"; the key is deleted there") {
			deleted++
		}
	}
	if deleted != 1 {
		t.Fatalf("%d version.destroyed events of v2 say the key was deleted on %s, want 1: %+v", deleted, m.backend, m.audit(t, "k"))
	}
	m.checkPlaced(t, "k", 3)
	// Nothing left to do: the next cycle changes nothing.
	if kr := keyReport(t, eng.RunCycle(m.ctx), "k"); kr.Outcome == rotation.OutcomeFailed || len(kr.Destroyed) != 0 {
		t.Fatalf("cycle after the deletion = %+v", kr)
	}
}

// The key gone from the old backend before rekey destroys its versions
// there: deleted by the operator, as the version.retired event advises,
// or by a worker that crashed right after DeleteKey (then v1 is already
// destroyed in the store and v2 retired). The next cycle records both
// destroyed: DestroyVersion's ErrKeyNotFound on a backend the key moved
// away from means the material is gone, and DeleteKey is idempotent.
func TestMove_DestroyAfterResumesAfterTheKeyIsGone(t *testing.T) {
	t.Parallel()
	m := setupMove(t)
	eng := m.engine(t, m.withHSM)
	moveAndRetire(t, m, eng, "k", destroyPolicy())
	if err := m.mkms.DeleteKey(m.ctx, memkms.RefPrefix+"k"); err != nil {
		t.Fatal(err)
	}
	m.clock.Advance(destroyPolicy().DestroyAfter + time.Second)
	kr := keyReport(t, eng.RunCycle(m.ctx), "k")
	if kr.Outcome == rotation.OutcomeFailed || !slices.Equal(kr.Destroyed, []int{1, 2}) {
		t.Fatalf("cycle after a crash past DeleteKey = %+v, want v1 and v2 destroyed", kr)
	}
	m.checkPlaced(t, "k", 3)
}

// A backend refusing the deletion for a reason the operator must fix
// (Vault's deletion_allowed): the cycle does not fail, v2 stays retired,
// one destroy.blocked event says what to do (not one per cycle), and once
// the refusal is lifted the next cycle deletes the key.
func TestMove_DestroyAfterRefusedByTheOldBackend(t *testing.T) {
	t.Parallel()
	m := setupMove(t)
	var refuse atomic.Bool
	refuse.Store(true)
	m.mkms.Fail = func(op, ref string) error {
		if op == memkms.OpDelete && refuse.Load() {
			return fmt.Errorf("%w: deletion is not allowed for key %s: set deletion_allowed", rekey.ErrUnsupported, ref)
		}
		return nil
	}
	eng := m.engine(t, m.withHSM)
	moveAndRetire(t, m, eng, "k", destroyPolicy())
	m.clock.Advance(destroyPolicy().DestroyAfter + time.Second)
	kr := keyReport(t, eng.RunCycle(m.ctx), "k")
	if kr.Outcome == rotation.OutcomeFailed || !slices.Equal(kr.Destroyed, []int{1}) {
		t.Fatalf("cycle with the deletion refused = %+v, want v1 destroyed only and no failure", kr)
	}
	kr = keyReport(t, eng.RunCycle(m.ctx), "k")
	if kr.Outcome == rotation.OutcomeFailed || len(kr.Destroyed) != 0 {
		t.Fatalf("second cycle with the deletion refused = %+v", kr)
	}
	if s := m.versions(t, "k")[2].State; s != rekey.VersionRetired {
		t.Fatalf("v2 is %s with its deletion refused, want retired", s)
	}
	var blocked []rekey.AuditEvent
	for _, ev := range m.audit(t, "k") {
		if ev.Type == rekey.AuditDestroyBlocked {
			blocked = append(blocked, ev)
		}
	}
	if len(blocked) != 1 || blocked[0].FromVersion != 2 || !strings.Contains(blocked[0].Error, "deletion_allowed") ||
		!strings.Contains(blocked[0].Error, "delete key k") {
		t.Fatalf("destroy.blocked events = %+v, want one for v2 saying what to do", blocked)
	}

	refuse.Store(false)
	if kr := keyReport(t, eng.RunCycle(m.ctx), "k"); !slices.Equal(kr.Destroyed, []int{2}) {
		t.Fatalf("cycle once the deletion is allowed = %+v, want v2 destroyed", kr)
	}
	if _, err := m.mkms.CurrentVersion(m.ctx, memkms.RefPrefix+"k"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("old backend: %v, want the key deleted", err)
	}
}

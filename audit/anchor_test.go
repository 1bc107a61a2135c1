package audit_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/internal/fileutil"
)

// TestAnchorAdvancesOnly: the anchor file moves forward only, per store,
// and is private.
func TestAnchorAdvancesOnly(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "audit.anchor")
	if _, ok, err := audit.ReadAnchor(p, "a"); err != nil || ok {
		t.Fatalf("missing file: ok=%v err=%v", ok, err)
	}
	for _, seq := range []int64{5, 3, 9} {
		if err := audit.AdvanceAnchor(t.Context(), p, "a", rekey.AuditCheckpoint{Seq: seq, Hash: "h"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := audit.AdvanceAnchor(t.Context(), p, "b", rekey.AuditCheckpoint{Seq: 2, Hash: "x"}); err != nil {
		t.Fatal(err)
	}
	if cp, ok, err := audit.ReadAnchor(p, "a"); err != nil || !ok || cp.Seq != 9 {
		t.Fatalf("store a: %+v %v %v, want seq 9", cp, ok, err)
	}
	if cp, ok, _ := audit.ReadAnchor(p, "b"); !ok || cp.Seq != 2 {
		t.Fatalf("store b: %+v", cp)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("anchor file mode: %v %v", st, err)
	}
	os.WriteFile(p, []byte("garbage"), 0o600)
	if _, _, err := audit.ReadAnchor(p, "a"); err == nil {
		t.Fatal("a corrupt anchor file was accepted")
	}
}

// TestAnchorWaitsForTheLock: a writer holding the anchor's lock (another
// process) keeps AdvanceAnchor waiting until its context ends, and the
// anchor unchanged.
func TestAnchorWaitsForTheLock(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "audit.anchor")
	unlock, err := fileutil.Lock(t.Context(), p+".lock")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := audit.AdvanceAnchor(ctx, p, "a", rekey.AuditCheckpoint{Seq: 1, Hash: "h"}); !errors.Is(err, context.Canceled) {
		t.Errorf("AdvanceAnchor while the lock is held, context cancelled = %v, want context.Canceled", err)
	}
	if _, ok, err := audit.ReadAnchor(p, "a"); err != nil || ok {
		t.Errorf("anchor written without the lock: ok=%v err=%v", ok, err)
	}
	unlock()
	if err := audit.AdvanceAnchor(t.Context(), p, "a", rekey.AuditCheckpoint{Seq: 1, Hash: "h"}); err != nil {
		t.Errorf("AdvanceAnchor after the lock was released: %v", err)
	}
}

// TestAnchorCatchesDeletedCheckpoints: a rewrite of the trail from some
// event on, with every later hash recomputed and the checkpoints after it
// deleted, verifies without the anchor and fails with it; and
// CheckpointAnchored refuses to vouch for the rewritten trail.
func TestAnchorCatchesDeletedCheckpoints(t *testing.T) {
	t.Parallel()
	tr := buildTrail(t)
	anchorPath := filepath.Join(t.TempDir(), "audit.anchor")
	{
		s := tr.open(t)
		cp, err := audit.CheckpointAnchored(t.Context(), s, tr.mac, audit.Purpose, "k", t0, anchorPath, "db")
		if err != nil || cp.Seq != trailEvents {
			t.Fatalf("CheckpointAnchored: %+v %v", cp, err)
		}
		s.Close()
	}
	tr.tamper(t, func(a *attacker) {
		e := a.eventAt(15)
		e.DEKs++
		a.rewrite(15, e)
		a.rechain(15)
		a.exec(`DELETE FROM audit_checkpoints WHERE seq > 10`)
	})
	if res := tr.verify(t, tr.mac); !res.Valid {
		t.Fatalf("without the anchor the rewrite should pass (that is the hole): %+v", res.FirstBad)
	}
	s := tr.open(t)
	anchor, ok, err := audit.ReadAnchor(anchorPath, "db")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	res, err := audit.VerifyAnchored(t.Context(), s, tr.mac, audit.Purpose, &anchor)
	if err != nil {
		t.Fatal(err)
	}
	if res.Valid || res.FirstBad == nil || res.FirstBad.Seq != 11 {
		t.Fatalf("VerifyAnchored: valid=%v first bad %+v; want invalid from seq 11", res.Valid, res.FirstBad)
	}
	_, err = audit.CheckpointAnchored(t.Context(), s, tr.mac, audit.Purpose, "k", t0, anchorPath, "db")
	var ice *audit.InvalidChainError
	if !errors.As(err, &ice) {
		t.Fatalf("CheckpointAnchored over a rewritten trail: %v, want InvalidChainError", err)
	}
	if cp, err := s.LastAuditCheckpoint(t.Context()); err != nil || cp.Seq != 10 {
		t.Fatalf("a checkpoint was written over the rewritten trail: %+v %v", cp, err)
	}
}

// TestAnchorCatchesEmptiedTrail: deleting every event and checkpoint is
// caught by the anchor.
func TestAnchorCatchesEmptiedTrail(t *testing.T) {
	t.Parallel()
	tr := buildTrail(t)
	anchorPath := filepath.Join(t.TempDir(), "audit.anchor")
	{
		s := tr.open(t)
		if _, err := audit.CheckpointAnchored(t.Context(), s, tr.mac, audit.Purpose, "k", t0, anchorPath, "db"); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	tr.tamper(t, func(a *attacker) {
		a.exec(`DELETE FROM audit_events`)
		a.exec(`DELETE FROM audit_checkpoints`)
	})
	s := tr.open(t)
	anchor, _, _ := audit.ReadAnchor(anchorPath, "db")
	res, err := audit.VerifyAnchored(t.Context(), s, tr.mac, audit.Purpose, &anchor)
	if err != nil {
		t.Fatal(err)
	}
	if res.Valid || res.FirstBad == nil || res.FirstBad.Seq != 1 {
		t.Fatalf("emptied trail: valid=%v first bad %+v; want invalid from seq 1", res.Valid, res.FirstBad)
	}
}

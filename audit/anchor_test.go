package audit_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/internal/fileutil"
	"github.com/rekeyhq/rekey/kms/memkms"
)

// anchoredCheckpoint checkpoints the trail and anchors the checkpoint.
func anchoredCheckpoint(t *testing.T, s rekey.Store, m rekey.MACer, path string) rekey.AuditCheckpoint {
	t.Helper()
	cp, err := audit.Checkpoint(t.Context(), s, m, audit.Purpose, "k", t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.AdvanceAnchor(t.Context(), path, "db", cp, m); err != nil {
		t.Fatal(err)
	}
	return cp
}

// TestAnchorAdvancesOnly: the anchor file moves forward only, per store,
// and is private.
func TestAnchorAdvancesOnly(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "audit.anchor")
	m := memkms.New()
	if _, ok, err := audit.ReadAnchor(t.Context(), p, "a", m); err != nil || ok {
		t.Fatalf("missing file: ok=%v err=%v", ok, err)
	}
	for _, seq := range []int64{5, 3, 9} {
		if err := audit.AdvanceAnchor(t.Context(), p, "a", rekey.AuditCheckpoint{Seq: seq, Hash: "h"}, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := audit.AdvanceAnchor(t.Context(), p, "b", rekey.AuditCheckpoint{Seq: 2, Hash: "x"}, m); err != nil {
		t.Fatal(err)
	}
	if cp, ok, err := audit.ReadAnchor(t.Context(), p, "a", m); err != nil || !ok || cp.Seq != 9 {
		t.Fatalf("store a: %+v %v %v, want seq 9", cp, ok, err)
	}
	if cp, ok, _ := audit.ReadAnchor(t.Context(), p, "b", m); !ok || cp.Seq != 2 {
		t.Fatalf("store b: %+v", cp)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("anchor file mode: %v %v", st, err)
	}
	if a, _, _ := audit.ReadAnchor(t.Context(), p, "a", m); a.N != 2 || a.Prev == "" {
		t.Errorf("store a after two advances (3 was refused): n=%d prev=%q, want n 2 and the previous entry's hash", a.N, a.Prev)
	}
	os.WriteFile(p, []byte("garbage"), 0o600)
	if _, _, err := audit.ReadAnchor(t.Context(), p, "a", m); !errors.Is(err, audit.ErrInvalidChain) {
		t.Fatalf("a corrupt anchor file: %v, want ErrInvalidChain", err)
	}
}

// TestAnchorIsMACed: an anchor file edited (a checkpoint copied into it),
// rolled to the unMACed format 1, or MACed with another key is refused by
// ReadAnchor and AdvanceAnchor, and ResetAnchor starts it afresh.
func TestAnchorIsMACed(t *testing.T) {
	t.Parallel()
	m := memkms.New()
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := audit.AdvanceAnchor(t.Context(), good, "db", rekey.AuditCheckpoint{Seq: 7, Hash: "h7", MAC: []byte("m7")}, m); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"checkpoint_copied_in": bytes.Replace(bytes.Replace(orig, []byte(`"seq":7`), []byte(`"seq":3`), 1), []byte(`"h7"`), []byte(`"h3"`), 1),
		"format_1":             []byte(`{"version":1,"stores":{"db":{"seq":3,"hash":"h3","mac":"bTM="}}}`),
		"mac_removed":          bytes.Replace(orig, []byte(`"mac":"`), []byte(`"mac_":"`), 1),
	}
	other := filepath.Join(dir, "other")
	if err := audit.AdvanceAnchor(t.Context(), other, "db", rekey.AuditCheckpoint{Seq: 7, Hash: "h7"}, memkms.New()); err != nil {
		t.Fatal(err)
	}
	cases["other_key"], _ = os.ReadFile(other)
	for name, b := range cases {
		if bytes.Equal(b, orig) {
			t.Fatalf("%s: the edit changed nothing", name)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		var ice *audit.InvalidChainError
		if _, _, err := audit.ReadAnchor(t.Context(), p, "db", m); !errors.As(err, &ice) || ice.Problem.Kind != audit.KindAnchor {
			t.Errorf("%s: ReadAnchor = %v, want an InvalidChainError of kind anchor", name, err)
		}
		if err := audit.AdvanceAnchor(t.Context(), p, "db", rekey.AuditCheckpoint{Seq: 9, Hash: "h9"}, m); !errors.Is(err, audit.ErrInvalidChain) {
			t.Errorf("%s: AdvanceAnchor = %v, want ErrInvalidChain", name, err)
		}
		if err := audit.ResetAnchor(t.Context(), p, "db", rekey.AuditCheckpoint{Seq: 9, Hash: "h9"}, m); err != nil {
			t.Errorf("%s: ResetAnchor = %v", name, err)
		}
		if a, ok, err := audit.ReadAnchor(t.Context(), p, "db", m); err != nil || !ok || a.Seq != 9 {
			t.Errorf("%s: after ResetAnchor: %+v %v %v", name, a, ok, err)
		}
	}
}

// TestAnchorWaitsForTheLock: a writer holding the anchor's lock (another
// process) keeps AdvanceAnchor waiting until its context ends, and the
// anchor unchanged.
func TestAnchorWaitsForTheLock(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "audit.anchor")
	m := memkms.New()
	unlock, err := fileutil.Lock(t.Context(), p+".lock")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := audit.AdvanceAnchor(ctx, p, "a", rekey.AuditCheckpoint{Seq: 1, Hash: "h"}, m); !errors.Is(err, context.Canceled) {
		t.Errorf("AdvanceAnchor while the lock is held, context cancelled = %v, want context.Canceled", err)
	}
	if _, ok, err := audit.ReadAnchor(t.Context(), p, "a", m); err != nil || ok {
		t.Errorf("anchor written without the lock: ok=%v err=%v", ok, err)
	}
	unlock()
	if err := audit.AdvanceAnchor(t.Context(), p, "a", rekey.AuditCheckpoint{Seq: 1, Hash: "h"}, m); err != nil {
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
		if cp := anchoredCheckpoint(t, s, tr.mac, anchorPath); cp.Seq != trailEvents {
			t.Fatalf("checkpoint: %+v", cp)
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
	anchor, ok, err := audit.ReadAnchor(t.Context(), anchorPath, "db", tr.mac)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	res, err := audit.VerifyAnchored(t.Context(), s, tr.mac, audit.Purpose, &anchor.AuditCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	if res.Valid || res.FirstBad == nil || res.FirstBad.Seq != 11 {
		t.Fatalf("VerifyAnchored: valid=%v first bad %+v; want invalid from seq 11", res.Valid, res.FirstBad)
	}
	k := &audit.Keeper{Store: s, MACer: tr.mac, KeyID: "k", AnchorPath: anchorPath, StoreID: "db"}
	err = k.Checkpoint(t.Context())
	var ice *audit.InvalidChainError
	if !errors.As(err, &ice) {
		t.Fatalf("Keeper.Checkpoint over a rewritten trail: %v, want an InvalidChainError", err)
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
		anchoredCheckpoint(t, s, tr.mac, anchorPath)
		s.Close()
	}
	tr.tamper(t, func(a *attacker) {
		a.exec(`DELETE FROM audit_events`)
		a.exec(`DELETE FROM audit_checkpoints`)
	})
	s := tr.open(t)
	anchor, _, _ := audit.ReadAnchor(t.Context(), anchorPath, "db", tr.mac)
	res, err := audit.VerifyAnchored(t.Context(), s, tr.mac, audit.Purpose, &anchor.AuditCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	if res.Valid || res.FirstBad == nil || res.FirstBad.Seq != 1 {
		t.Fatalf("emptied trail: valid=%v first bad %+v; want invalid from seq 1", res.Valid, res.FirstBad)
	}
}

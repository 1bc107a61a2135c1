package audit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

func TestVerifyIntact(t *testing.T) {
	t.Parallel()
	tr := buildTrail(t)
	res := tr.verify(t, tr.mac)
	if !res.Valid || res.FirstBad != nil {
		t.Fatalf("intact trail: %+v, first bad %v", res, res.FirstBad)
	}
	if res.Events != trailEvents || res.LastSeq != trailEvents || res.HeadHash == "" || res.Checkpoints != 2 || res.LastCheckpoint != cp2 {
		t.Errorf("intact trail: %+v", res)
	}
	if res.Unverifiable != "" {
		t.Errorf("with a MACer, Unverifiable = %q", res.Unverifiable)
	}
	tail := res.UncheckedTail
	if tail == nil || tail.Kind != audit.KindUncheckedTail || tail.Seq != cp2+1 || !strings.Contains(tail.Message, "21..23") {
		t.Errorf("unchecked tail = %+v, want events 21..23", tail)
	}
}

func TestVerifyWithoutMACer(t *testing.T) {
	t.Parallel()
	tr := buildTrail(t)
	res := tr.verify(t, nil)
	if !res.Valid || res.Unverifiable == "" || res.Checkpoints != 2 {
		t.Errorf("intact trail, no MACer: valid %v, checkpoints %d, unverifiable %q", res.Valid, res.Checkpoints, res.Unverifiable)
	}
}

func TestVerifyEmpty(t *testing.T) {
	t.Parallel()
	res, err := audit.Verify(t.Context(), memstore.New(), memkms.New(), audit.Purpose)
	if err != nil || !res.Valid || res.Events != 0 || res.UncheckedTail != nil {
		t.Errorf("empty trail: %+v, %v", res, err)
	}
}

// want is what Verify must report.
type want struct {
	kind       audit.Kind // "" for valid
	seq        int64
	checkpoint int64
}

func check(t *testing.T, res audit.Result, w want) {
	t.Helper()
	if w.kind == "" {
		if !res.Valid {
			t.Fatalf("Verify = invalid (%v), want valid", res.FirstBad)
		}
		return
	}
	p := res.FirstBad
	if res.Valid || p == nil {
		t.Fatalf("Verify = valid, want %s at seq %d", w.kind, w.seq)
	}
	if p.Kind != w.kind || p.Seq != w.seq || p.Checkpoint != w.checkpoint {
		t.Fatalf("Verify = %s at seq %d (checkpoint %d), want %s at seq %d (checkpoint %d)\n%s",
			p.Kind, p.Seq, p.Checkpoint, w.kind, w.seq, w.checkpoint, p.Message)
	}
	if !strings.Contains(p.Message, fmt.Sprintf("seq %d", w.seq)) {
		t.Errorf("message does not name seq %d: %s", w.seq, p.Message)
	}
	if w.seq > 1 && (res.Events == 0 || res.LastSeq == 0) {
		t.Errorf("an invalid result still counts the events: %+v", res)
	}
	t.Log(p)
}

func TestVerifyDetectsTampering(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tamper func(a *attacker)
		want   want
	}{
		{"edit one field (key)", func(a *attacker) {
			a.exec(`UPDATE audit_events SET key = 'mallory' WHERE seq = 5`)
		}, want{audit.KindEdited, 5, 0}},
		{"edit one field (deks), between checkpoints", func(a *attacker) {
			a.exec(`UPDATE audit_events SET deks = 0 WHERE seq = 15`)
		}, want{audit.KindEdited, 15, 0}},
		{"edit one field (time), after the last checkpoint", func(a *attacker) {
			a.exec(`UPDATE audit_events SET time = time + 1 WHERE seq = 22`)
		}, want{audit.KindEdited, 22, 0}},
		{"edit the first event", func(a *attacker) {
			a.exec(`UPDATE audit_events SET actor = 'mallory' WHERE seq = 1`)
		}, want{audit.KindEdited, 1, 0}},
		{"edit the last event", func(a *attacker) {
			a.exec(`UPDATE audit_events SET status = 'failure' WHERE seq = 23`)
		}, want{audit.KindEdited, 23, 0}},
		{"edit a stored hash", func(a *attacker) {
			a.exec(`UPDATE audit_events SET hash = ? WHERE seq = 7`, strings.Repeat("ab", 32))
		}, want{audit.KindEdited, 7, 0}},
		{"edit a prev_hash", func(a *attacker) {
			a.exec(`UPDATE audit_events SET prev_hash = ? WHERE seq = 7`, strings.Repeat("ab", 32))
		}, want{audit.KindEdited, 7, 0}},
		{"edit one event and recompute its hash only", func(a *attacker) {
			e := a.eventAt(14)
			e.Reason = "manual"
			e.Hash = e.ComputeHash()
			a.rewrite(14, e)
		}, want{audit.KindEdited, 14, 0}},
		{"delete one event", func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq = 7`)
		}, want{audit.KindDeleted, 7, 0}},
		{"delete the first event", func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq = 1`)
		}, want{audit.KindDeleted, 1, 0}},
		{"delete several events", func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq BETWEEN 12 AND 16`)
		}, want{audit.KindDeleted, 12, 0}},
		{"delete one event and renumber the later ones", func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq = 7`)
			a.shift(8, -1)
		}, want{audit.KindDeleted, 7, 0}},
		{"insert a forged event, later seqs renumbered", func(a *attacker) {
			prev := a.eventAt(7)
			a.shift(8, 1)
			a.insert(forged(8, prev))
		}, want{audit.KindInserted, 8, 0}},
		{"insert a forged event with a made-up hash, later seqs renumbered", func(a *attacker) {
			prev := a.eventAt(7)
			f := forged(8, prev)
			f.Hash = strings.Repeat("cd", 32)
			a.shift(8, 1)
			a.insert(f)
		}, want{audit.KindInserted, 8, 0}},
		{"insert two forged events, later seqs renumbered", func(a *attacker) {
			prev := a.eventAt(7)
			a.shift(8, 2)
			f1 := forged(8, prev)
			a.insert(f1)
			a.insert(forged(9, f1))
		}, want{audit.KindInserted, 8, 0}},
		{"insert a forged event, renumber and rehash the later events", func(a *attacker) {
			prev := a.eventAt(7)
			a.shift(8, 1)
			a.insert(forged(8, prev))
			for _, e := range a.events() {
				if e.Seq > 8 {
					e.Hash = e.ComputeHash() // for the new seq; prev_hash left alone
					a.rewrite(e.Seq, e)
				}
			}
		}, want{audit.KindInserted, 8, 0}},
		{"insert a forged event and rechain everything after it", func(a *attacker) {
			prev := a.eventAt(7)
			a.shift(8, 1)
			a.insert(forged(8, prev))
			a.rechain(9)
		}, want{audit.KindCheckpointMismatch, 1, cp1}},
		{"swap two events", func(a *attacker) {
			e5, e9 := a.eventAt(5), a.eventAt(9)
			e5.Seq, e9.Seq = 9, 5
			a.rewrite(5, e9)
			a.rewrite(9, e5)
		}, want{audit.KindReordered, 5, 0}},
		{"swap two adjacent events", func(a *attacker) {
			e12, e13 := a.eventAt(12), a.eventAt(13)
			e12.Seq, e13.Seq = 13, 12
			a.rewrite(12, e13)
			a.rewrite(13, e12)
		}, want{audit.KindReordered, 12, 0}},
		{"edit and recompute every later hash", func(a *attacker) {
			e := a.eventAt(15)
			e.DEKs = 1
			a.rewrite(15, e)
			a.rechain(15)
		}, want{audit.KindCheckpointMismatch, cp1 + 1, cp2}},
		{"edit, recompute every later hash, and fix the checkpoint's hash", func(a *attacker) {
			e := a.eventAt(15)
			e.DEKs = 1
			a.rewrite(15, e)
			a.rechain(15)
			a.exec(`UPDATE audit_checkpoints SET hash = ? WHERE seq = ?`, a.eventAt(cp2).Hash, cp2)
		}, want{audit.KindCheckpointMAC, cp1 + 1, cp2}},
		{"edit before the first checkpoint and recompute", func(a *attacker) {
			e := a.eventAt(3)
			e.Error = "hidden"
			a.rewrite(3, e)
			a.rechain(3)
		}, want{audit.KindCheckpointMismatch, 1, cp1}},
		{"truncate the tail beyond a checkpoint", func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq >= 19`)
		}, want{audit.KindTruncated, 19, cp2}},
		{"truncate everything", func(a *attacker) {
			a.exec(`DELETE FROM audit_events`)
		}, want{audit.KindTruncated, 1, cp1}},
		{"replace a checkpoint's MAC", func(a *attacker) {
			a.exec(`UPDATE audit_checkpoints SET mac = randomblob(32) WHERE seq = ?`, cp1)
		}, want{audit.KindCheckpointMAC, 1, cp1}},
		{"forge a checkpoint row with a wrong MAC", func(a *attacker) {
			a.exec(`INSERT INTO audit_checkpoints (seq, hash, mac, key_id, created_at) VALUES (?, ?, randomblob(32), 'memkms/audit.checkpoint', 0)`,
				15, a.eventAt(15).Hash)
		}, want{audit.KindCheckpointMAC, cp1 + 1, 15}},
		{"copy a checkpoint's MAC to another seq", func(a *attacker) {
			a.exec(`INSERT INTO audit_checkpoints (seq, hash, mac, created_at) SELECT 22, ?, mac, created_at FROM audit_checkpoints WHERE seq = ?`,
				a.eventAt(22).Hash, cp2)
		}, want{audit.KindCheckpointMAC, cp2 + 1, 22}},
		{"forge a checkpoint beyond the end", func(a *attacker) {
			a.exec(`INSERT INTO audit_checkpoints (seq, hash, mac, created_at) VALUES (40, 'x', randomblob(32), 0)`)
		}, want{audit.KindCheckpointMAC, cp2 + 1, 40}},

		// The documented limit: nothing keyed vouches for events after the
		// last checkpoint, so a consistent change to them passes.
		{"limit: delete the tail after the last checkpoint", func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq > ?`, cp2)
		}, want{}},
		{"limit: rewrite after the last checkpoint and recompute", func(a *attacker) {
			e := a.eventAt(22)
			e.Status = "failure"
			a.rewrite(22, e)
			a.rechain(22)
		}, want{}},
		{"limit: append a forged event", func(a *attacker) {
			a.insert(forged(trailEvents+1, a.eventAt(trailEvents)))
		}, want{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := buildTrail(t)
			tr.tamper(t, tc.tamper)
			check(t, tr.verify(t, tr.mac), tc.want)
		})
	}
}

// Without the MAC key, checkpoints still catch a rewrite that left them
// alone, but not one that rewrote them too.
func TestVerifyWithoutMACerTampered(t *testing.T) {
	t.Parallel()
	rewrite := func(fixCheckpoint bool) func(a *attacker) {
		return func(a *attacker) {
			e := a.eventAt(15)
			e.DEKs = 1
			a.rewrite(15, e)
			a.rechain(15)
			if fixCheckpoint {
				a.exec(`UPDATE audit_checkpoints SET hash = ? WHERE seq = ?`, a.eventAt(cp2).Hash, cp2)
			}
		}
	}
	tests := []struct {
		name   string
		tamper func(a *attacker)
		want   want
	}{
		{"rewrite, checkpoint left alone", rewrite(false), want{audit.KindCheckpointMismatch, cp1 + 1, cp2}},
		{"rewrite, checkpoint rewritten too", rewrite(true), want{}},
		{"edit one field", func(a *attacker) { a.exec(`UPDATE audit_events SET key = 'x' WHERE seq = 5`) }, want{audit.KindEdited, 5, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := buildTrail(t)
			tr.tamper(t, tc.tamper)
			res := tr.verify(t, nil)
			check(t, res, tc.want)
			if res.Unverifiable == "" {
				t.Error("no MACer, but Unverifiable is empty")
			}
		})
	}
}

// Checkpoints MAC'd by one key do not verify under another: write access
// to the database cannot make them, and a MACer with the wrong key is
// noticed at once.
func TestVerifyWrongKey(t *testing.T) {
	t.Parallel()
	tr := buildTrail(t)
	check(t, tr.verify(t, memkms.New()), want{audit.KindCheckpointMAC, 1, cp1})
}

func TestVerifyLongTrail(t *testing.T) {
	t.Parallel()
	// More than two pages, tampered at and across a page boundary.
	const n = 2100
	build := func(t *testing.T) *trail {
		tr := &trail{path: t.TempDir() + "/rekey.db", mac: memkms.New()}
		s := tr.open(t)
		appendEvents(t, s, 0, 1500)
		checkpoint(t, s, tr.mac, 1500)
		appendEvents(t, s, 1500, n-1500)
		checkpoint(t, s, tr.mac, n)
		return tr
	}
	tests := []struct {
		name   string
		tamper func(a *attacker)
		want   want
	}{
		{"intact", func(a *attacker) {}, want{}},
		{"delete the last event of a page", func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq = 1000`)
		}, want{audit.KindDeleted, 1000, 0}},
		{"swap across a page boundary", func(a *attacker) {
			e1, e2 := a.eventAt(999), a.eventAt(1003)
			e1.Seq, e2.Seq = 1003, 999
			a.rewrite(999, e2)
			a.rewrite(1003, e1)
		}, want{audit.KindReordered, 999, 0}},
		{"insert at a page boundary", func(a *attacker) {
			prev := a.eventAt(1000)
			a.shift(1001, 1)
			a.insert(forged(1001, prev))
		}, want{audit.KindInserted, 1001, 0}},
		{"edit and recompute", func(a *attacker) {
			e := a.eventAt(1700)
			e.Actor = "mallory"
			a.rewrite(1700, e)
			a.rechain(1700)
		}, want{audit.KindCheckpointMismatch, 1501, n}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := build(t)
			tr.tamper(t, tc.tamper)
			res := tr.verify(t, tr.mac)
			check(t, res, tc.want)
			if tc.want.kind == "" && (res.Events != n || res.Checkpoints != 2 || res.UncheckedTail != nil) {
				t.Errorf("intact long trail: %+v", res)
			}
		})
	}
}

// dupStore returns the events of its memstore with the event of seq dup
// listed twice, as a store without a unique seq could.
type dupStore struct {
	*memstore.Store
	dup int64
}

func (s dupStore) ListAudit(ctx context.Context, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	evs, err := s.Store.ListAudit(ctx, q)
	for i, e := range evs {
		if e.Seq == s.dup {
			forgedTwin := e
			forgedTwin.Actor = "mallory"
			forgedTwin.Hash = forgedTwin.ComputeHash()
			return append(evs[:i+1:i+1], append([]rekey.AuditEvent{forgedTwin}, evs[i+1:]...)...), err
		}
	}
	return evs, err
}

func TestVerifyDuplicateSeq(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	appendEvents(t, s, 0, 12)
	res, err := audit.Verify(t.Context(), dupStore{s, 6}, nil, audit.Purpose)
	if err != nil {
		t.Fatal(err)
	}
	check(t, res, want{audit.KindInserted, 6, 0})
}

func TestVerifyMACError(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	m := memkms.New()
	appendEvents(t, s, 0, 3)
	checkpoint(t, s, m, 3)
	outage := &rekey.UnreachableError{Service: "kms:memory", Err: errors.New("down")}
	m.Fail = func(op, ref string) error { return outage }
	_, err := audit.Verify(t.Context(), s, m, audit.Purpose)
	if !errors.Is(err, outage) || !rekey.IsTransient(err) {
		t.Errorf("Verify with the backend down = %v, want the transient error", err)
	}
}

func TestVerifyStoreError(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	appendEvents(t, s, 0, 3)
	s.Fail = func(op string) error {
		if op == "ListAudit" {
			return &rekey.UnreachableError{Service: "store:memory", Err: errors.New("down")}
		}
		return nil
	}
	if _, err := audit.Verify(t.Context(), s, nil, audit.Purpose); !rekey.IsTransient(err) {
		t.Errorf("Verify with the store down = %v, want a transient error", err)
	}
}

package main

// Issue 8, items 1-4: the audit trail's holes, each reproduced as the issue
// writes it, through the built binary.

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// audit8Base is `rekey init; rekey key create a; rekey rotate a`.
func audit8Base(t *testing.T) *e2eHome {
	t.Helper()
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "a")
	h.createDEKs("a", 3)
	h.must("rotate", "a")
	if cps := checkpointSeqs(t, h.sqlDB()); len(cps) < 2 {
		t.Fatalf("want at least two checkpoints after key create, dek create and rotate: %v", cps)
	}
	return h
}

// forgeCheckpointMAC overwrites the mac of the checkpoint of seq with random
// bytes (the triggers dropped first).
func forgeCheckpointMAC(t *testing.T, h *e2eHome, seq int64) {
	t.Helper()
	db := h.sqlDB()
	dropAuditTriggers(t, db)
	mustExec(t, db, `UPDATE audit_checkpoints SET mac = ? WHERE seq = ?`, []byte(rand.Text()), seq)
}

// Item 1: with the MAC backend unusable at start, the worker must not
// vouch for the trail: rekey_audit_chain_valid 0, an ERROR that it could
// not be verified, never "audit chain verified".
func TestE2E_Audit8_WorkerBackendDown(t *testing.T) {
	t.Parallel()
	h := audit8Base(t)
	cps := checkpointSeqs(t, h.sqlDB())
	forgeCheckpointMAC(t, h, cps[0])
	keyring := filepath.Join(h.home, "keyring")
	st, err := os.Stat(keyring)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(keyring, st.Size()-1); err != nil {
		t.Fatal(err)
	}
	if r := h.run("audit", "verify"); r.code == 0 {
		t.Errorf("audit verify with the keyring unreadable: exit 0, want a refusal\n%v", r)
	}
	wk := h.startWorker()
	wk.waitMetrics([]promWant{{name: "rekey_audit_chain_valid", labels: map[string]string{}, value: 0}}, 10*time.Second)
	_, log := wk.stop()
	if n := len(logLines(log, "audit chain verified")); n != 0 {
		t.Errorf("the worker logged \"audit chain verified\" %d time(s) without checking the MACs:\n%s", n, e2eTail(log, 3000))
	}
	var found bool
	for _, m := range logLines(log, "audit chain could not be verified") {
		if m["level"] == "ERROR" && strings.Contains(fmt.Sprint(m["error"]), "keyring") {
			found = true
		}
	}
	if !found {
		t.Errorf("no ERROR \"audit chain could not be verified\" naming the keyring in the log:\n%s", e2eTail(log, 3000))
	}
}

// anchorReplaceCheckpoint rewrites, in the anchor file, the anchored
// checkpoint (an object with seq, hash and mac, whatever the file's shape)
// with cp's fields: what an attacker who copies an older checkpoint into it
// does.
func anchorReplaceCheckpoint(t *testing.T, path string, cp map[string]any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if _, ok := x["seq"]; ok {
				if _, ok := x["mac"]; ok {
					for k, v := range cp {
						x[k] = v
					}
					n++
					return
				}
			}
			for _, v := range x {
				walk(v)
			}
		case []any:
			for _, v := range x {
				walk(v)
			}
		}
	}
	walk(doc)
	if n == 0 {
		t.Fatalf("no checkpoint in the anchor file:\n%s", b)
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkpointRow reads the checkpoint of seq as the anchor file spells it.
func checkpointRow(t *testing.T, h *e2eHome, seq int64) map[string]any {
	t.Helper()
	var hash string
	var mac []byte
	if err := h.sqlDB().QueryRow(`SELECT hash, mac FROM audit_checkpoints WHERE seq = ?`, seq).Scan(&hash, &mac); err != nil {
		t.Fatal(err)
	}
	return map[string]any{"seq": seq, "hash": hash, "mac": mac}
}

// Item 2: history cut short by whoever can write the home.
func TestE2E_Audit8_CutShort(t *testing.T) {
	t.Parallel()
	base := audit8Base(t)
	cps := checkpointSeqs(t, base.sqlDB())
	s := cps[0] // key.created: everything after it goes
	t.Logf("checkpoints %v; cutting after seq %d", cps, s)

	t.Run("a_delete_after_S_and_copy_checkpoint_S_into_anchor", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		db := h.sqlDB()
		dropAuditTriggers(t, db)
		cp := checkpointRow(t, h, s)
		mustExec(t, db, `DELETE FROM audit_events WHERE seq > ?`, s)
		mustExec(t, db, `DELETE FROM audit_checkpoints WHERE seq > ?`, s)
		anchorReplaceCheckpoint(t, filepath.Join(h.home, "audit.anchor"), cp)
		r := h.run("audit", "verify")
		if r.code != 1 || !strings.Contains(r.stdout, "INVALID") {
			t.Errorf("audit verify over a trail cut short at seq %d with its anchor rolled back: exit %d, want 1\n%v", s, r.code, r)
		}
	})
	t.Run("a_without_touching_the_anchor_cross_check", func(t *testing.T) {
		t.Parallel()
		// The anchor deleted too: what is left is the store's state, which
		// moved on (version 2 of a) while the trail ends at key.created.
		h := base.clone(t)
		db := h.sqlDB()
		dropAuditTriggers(t, db)
		mustExec(t, db, `DELETE FROM audit_events WHERE seq > ?`, s)
		mustExec(t, db, `DELETE FROM audit_checkpoints WHERE seq > ?`, s)
		if err := os.Remove(filepath.Join(h.home, "audit.anchor")); err != nil {
			t.Fatal(err)
		}
		r := h.run("audit", "verify")
		if r.code != 1 || !strings.Contains(r.stdout, `missing_event`) || !strings.Contains(r.stdout, `key "a" version`) {
			t.Errorf("audit verify over a trail cut short while the state moved on: exit %d, want 1 naming a version of key \"a\" that lacks its event\n%v", r.code, r)
		}
	})
	t.Run("b_delete_anchor_and_every_checkpoint_rehash_all", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		db := h.sqlDB()
		dropAuditTriggers(t, db)
		evs := auditRows(t, db)
		rewriteFrom(t, db, evs, 1, func(e *rekey.AuditEvent) { e.Actor = "cli:mallory" })
		mustExec(t, db, `DELETE FROM audit_checkpoints`)
		if err := os.Remove(filepath.Join(h.home, "audit.anchor")); err != nil {
			t.Fatal(err)
		}
		r := h.run("audit", "verify")
		if r.code != 1 {
			t.Errorf("audit verify over a re-hashed trail without checkpoints or anchor: exit %d, want 1\n%v", r.code, r)
		}
		// And no command vouches for it afterwards.
		h.must("key", "create", "b")
		if got := checkpointSeqs(t, db); len(got) != 0 {
			t.Errorf("a command checkpointed the re-hashed, unanchored trail: %v", got)
		}
		if r := h.run("audit", "verify"); r.code != 1 {
			t.Errorf("audit verify after the next command: exit %d, want 1\n%v", r.code, r)
		}
	})
	t.Run("c_forged_tail_event", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		db := h.sqlDB()
		evs := auditRows(t, db)
		last := evs[len(evs)-1]
		forged := rekey.AuditEvent{Seq: last.Seq + 1, Time: last.Time.Add(time.Second), Type: rekey.AuditVersionRetired, Key: "a",
			FromVersion: 2, Status: string(rekey.VersionRetired), Actor: "cli:mallory", PrevHash: last.Hash}
		forged.Hash = forged.ComputeHash()
		insertAuditRow(t, db, forged)
		h.verifyFails(forged.Seq, "")
		// The next command must not checkpoint over it.
		h.run("key", "create", "b")
		if got := checkpointSeqs(t, db); slices.ContainsFunc(got, func(s int64) bool { return s >= forged.Seq }) {
			t.Errorf("a checkpoint covers the forged event seq %d: checkpoints %v", forged.Seq, got)
		}
		h.verifyFails(forged.Seq, "")
	})
	t.Run("checkpoints_forwarded_to_the_log", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		h.makeDue("a")
		r := h.run("run", "--once")
		if r.code != 0 {
			t.Fatalf("%v", r)
		}
		lines := logLines(r.stderr, "audit_checkpoint")
		cps := checkpointSeqs(t, h.sqlDB())
		if len(lines) == 0 {
			t.Fatalf("no audit_checkpoint line in the worker's log:\n%s", e2eTail(r.stderr, 3000))
		}
		last := lines[len(lines)-1]
		if seq, _ := last["seq"].(float64); int64(seq) != cps[len(cps)-1] || last["hash"] == "" || last["mac"] == nil {
			t.Errorf("last audit_checkpoint line %v, want seq %d with hash and mac", last, cps[len(cps)-1])
		}
	})
}

// Item 3: `run --once` over an invalid chain exits 1 naming the problem and
// writes no checkpoint.
func TestE2E_Audit8_RunOnceInvalid(t *testing.T) {
	t.Parallel()
	h := audit8Base(t)
	cps := checkpointSeqs(t, h.sqlDB())
	forgeCheckpointMAC(t, h, cps[0])
	h.makeDue("a") // the cycle writes events a checkpoint would cover
	r := h.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "checkpoint_mac") {
		t.Errorf("run --once over a forged checkpoint: exit %d, want 1 naming checkpoint_mac\n%v", r.code, r)
	}
	if got := checkpointSeqs(t, h.sqlDB()); !slices.Equal(got, cps) {
		t.Errorf("run --once checkpointed the tampered trail: checkpoints %v, were %v", got, cps)
	}
}

// Item 4: dropped append-only triggers are noticed (verify, /readyz, the
// log) and restored by the next writer.
func TestE2E_Audit8_Triggers(t *testing.T) {
	t.Parallel()
	base := audit8Base(t)
	t.Run("verify_and_restore", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		db := h.sqlDB()
		mustExec(t, db, `DROP TRIGGER audit_events_no_delete`)
		// audit verify is a read-only command (it works on a read-only
		// copy of a home): it names the dropped trigger and changes nothing.
		r := h.run("audit", "verify")
		if r.code != 1 || !strings.Contains(r.stdout, "audit_events_no_delete") {
			t.Errorf("audit verify after a dropped trigger: exit %d, want 1 naming audit_events_no_delete\n%v", r.code, r)
		}
		// The next command that writes restores it, and says so.
		if r := h.run("key", "create", "b"); r.code != 0 || !strings.Contains(r.stderr, "restored") {
			t.Errorf("key create after a dropped trigger: exit %d, want 0 and a log line saying the trigger was restored\n%v", r.code, r)
		}
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'audit_events_no_delete'`).Scan(&n); err != nil || n != 1 {
			t.Errorf("trigger not restored: %d (%v)", n, err)
		}
		if _, err := db.Exec(`DELETE FROM audit_events WHERE seq = 1`); err == nil {
			t.Errorf("DELETE FROM audit_events succeeded after the restore")
		}
		h.must("audit", "verify")
	})
	t.Run("readyz", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		wk := h.startWorker()
		if code, body, ok := wk.waitReady(true, 10*time.Second); !ok {
			t.Fatalf("/readyz before: %d %s", code, body)
		}
		mustExec(t, h.sqlDB(), `DROP TRIGGER audit_checkpoints_no_update`)
		code, body, ok := wk.waitReady(false, 5*time.Second)
		if !ok || code == http.StatusOK || !strings.Contains(body, "audit_checkpoints_no_update") {
			t.Errorf("/readyz after a dropped trigger: %d %q, want non-200 naming it", code, body)
		}
		wk.stop()
	})
}

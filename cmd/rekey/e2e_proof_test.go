package main

// End-to-end proofs, through the real rekey binary, of what an auditor and
// an operator rely on: the audit trail tells the story of a rotation in
// order (TestE2E_AuditStory), `rekey audit verify` catches every kind of
// tampering done directly in the database and names the first bad event
// (TestE2E_AuditVerifyTamper, TestE2E_AuditVerifyCheckpointDeletion), the
// worker's HTTP endpoints export every contract metric, report readiness
// and serve the same status as the CLI (TestE2E_MetricsHTTP,
// TestE2E_MetricsReadyzUnreadable), the compliance report flags exactly
// the late rotation (TestE2E_ReportLate), and no output of any of it holds
// key material (TestE2E_NoKeyMaterial).
//
//	cd /work/main && go test -race -count=1 -run 'TestE2E_Proof|TestE2E_Audit|TestE2E_Metrics|TestE2E_Report|TestE2E_NoKeyMaterial' -v ./cmd/rekey
//
// Helpers shared with the other end-to-end tests are in
// e2e_helpers_test.go; those only these tests use are at the end of this
// file.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

// auditFields are the fields of every `audit list --json` line (DESIGN.md
// "Audit trail", contract).
var auditFields = []string{"seq", "time", "type", "key", "from_version", "to_version", "rotation_id", "deks",
	"status", "error", "actor", "reason", "backend_request_id", "prev_hash", "hash"}

// TestE2E_AuditStory (acceptance: audit trail): after one scheduled
// rotation of `payments` (50 DEKs, batches of 20), `rekey audit list --key
// payments --json` reads, in order: key.created, rotation.started,
// version.created, rewrap.progress (at least one, counting up to 50),
// rotation.committed (50 DEKs), version.pending_retirement,
// rotation.completed; once the grace has passed, the next `run --once`
// adds version.retired. Every line carries every contract field, and no
// event of the other key is listed.
//
// The key is made due with makeDue (its 90d period would otherwise keep it
// from rotating): the worker rotates it as a scheduled rotation all the
// same. Its grace is 1h: the run after the grace sees the clock two hours
// on (REKEY_TEST_CLOCK_OFFSET), nothing sleeps.
func TestE2E_AuditStory(t *testing.T) {
	t.Parallel()
	const deks = 50
	h := newE2EHome(t, e2eOpts{batchSize: 20})
	h.must("key", "create", "payments", "--grace", "1h")
	h.must("key", "create", "other")
	h.createDEKs("payments", deks)
	h.createDEKs("other", 3)
	h.makeDue("payments")
	h.must("run", "--once")

	evs := h.auditList("payments")
	types := eventTypes(evs)
	t.Logf("after the rotation: %v", types)
	st := h.status()
	if len(st.Recent) != 1 || st.Recent[0].Key != "payments" || st.Recent[0].State != string(rekey.RotationDone) {
		t.Fatalf("status: recent rotations %+v, want the one done rotation of payments", st.Recent)
	}
	rid := st.Recent[0].ID

	story := []rekey.AuditType{rekey.AuditKeyCreated, rekey.AuditRotationStarted, rekey.AuditVersionCreated,
		rekey.AuditRewrapProgress, rekey.AuditRotationCommitted, rekey.AuditVersionPendingRetirement, rekey.AuditRotationCompleted}
	idx := subsequence(evs, story)
	if idx == nil {
		t.Fatalf("audit list --key payments: %v does not contain the story %v in order", types, story)
	}
	at := func(i int) rekey.AuditEvent { return evs[idx[i]] }
	check := func(e rekey.AuditEvent, from, to int, wantRID bool) {
		t.Helper()
		if e.FromVersion != from || e.ToVersion != to {
			t.Errorf("%s (seq %d): versions %d→%d, want %d→%d", e.Type, e.Seq, e.FromVersion, e.ToVersion, from, to)
		}
		if wantRID && e.RotationID != rid {
			t.Errorf("%s (seq %d): rotation_id %q, want %q (the rotation in status)", e.Type, e.Seq, e.RotationID, rid)
		}
		if e.Actor == "" {
			t.Errorf("%s (seq %d): no actor", e.Type, e.Seq)
		}
	}
	check(at(0), 0, 1, false)
	if at(0).Status != "success" {
		t.Errorf("key.created status %q, want success", at(0).Status)
	}
	check(at(1), 1, 0, true)
	if at(1).Reason != string(rekey.ReasonScheduled) {
		t.Errorf("rotation.started reason %q, want %q", at(1).Reason, rekey.ReasonScheduled)
	}
	check(at(2), 1, 2, true)
	// Every rewrap.progress of the rotation lies between version.created
	// and rotation.committed, and counts the DEKs done so far.
	var progress []int64
	for _, e := range evs[idx[2]+1 : idx[4]] {
		if e.Type != rekey.AuditRewrapProgress {
			t.Errorf("between version.created and rotation.committed: %s (seq %d)", e.Type, e.Seq)
			continue
		}
		check(e, 1, 2, true)
		progress = append(progress, e.DEKs)
	}
	if len(progress) == 0 || !slices.IsSorted(progress) || progress[len(progress)-1] != deks {
		t.Errorf("rewrap.progress deks %v, want at least one, counting up to %d", progress, deks)
	}
	check(at(4), 1, 2, true)
	if at(4).DEKs != deks || at(4).Status != string(rekey.RotationCommitted) {
		t.Errorf("rotation.committed: deks %d status %q, want %d and committed", at(4).DEKs, at(4).Status, deks)
	}
	check(at(5), 1, 2, true)
	if !strings.HasPrefix(at(5).Status, "retire_after ") {
		t.Errorf("version.pending_retirement status %q, want it to say when v1 retires", at(5).Status)
	}
	check(at(6), 1, 2, true)
	if at(6).DEKs != deks || at(6).Status != "success" {
		t.Errorf("rotation.completed: deks %d status %q, want %d and success", at(6).DEKs, at(6).Status, deks)
	}
	for _, e := range evs {
		if e.Type == rekey.AuditVersionRetired {
			t.Errorf("version.retired (seq %d) before the grace passed", e.Seq)
		}
	}

	// Within the grace, a run retires nothing.
	retireAfter := h.keyShow("payments").version(t, 1).RetireAfter
	if retireAfter == nil {
		t.Fatal("v1 has no retire_after after the rotation")
	}
	h.must("run", "--once")
	for _, e := range h.auditList("payments") {
		if e.Type == rekey.AuditVersionRetired {
			t.Errorf("version.retired (seq %d) by a run within the grace (retire_after %s)", e.Seq, retireAfter.Format(time.RFC3339Nano))
		}
	}

	// After the grace (the clock two hours on), the next run retires v1.
	if r := h.runEnv(h.environ("REKEY_TEST_CLOCK_OFFSET=2h"), "run", "--once"); r.code != 0 {
		t.Fatalf("run after the grace: %v", r)
	}
	evs = h.auditList("payments")
	t.Logf("after the grace: %v", eventTypes(evs))
	idx = subsequence(evs, append(story, rekey.AuditVersionRetired))
	if idx == nil {
		t.Fatalf("after the grace: %v does not end the story with version.retired", eventTypes(evs))
	}
	ret := evs[idx[len(idx)-1]]
	if ret.FromVersion != 1 || ret.Status != string(rekey.VersionRetired) {
		t.Errorf("version.retired (seq %d): from_version %d status %q, want v1 retired", ret.Seq, ret.FromVersion, ret.Status)
	}
	if n := countType(evs, rekey.AuditRotationStarted); n != 1 {
		t.Errorf("%d rotations of payments started, want 1", n)
	}
	if k := h.keyShow("payments"); k.version(t, 1).State != string(rekey.VersionRetired) {
		t.Errorf("key show: v1 is %s, want retired", k.version(t, 1).State)
	}
}

// TestE2E_AuditVerifyTamper (acceptance: tamper evidence): `rekey audit
// verify` exits 0 on an intact trail; after each tampering done directly in
// the SQLite file (the append-only triggers dropped first), each on a fresh
// copy of the same home, it exits 1 and names the first bad event by seq,
// in its text output and as first_bad.seq of --json.
func TestE2E_AuditVerifyTamper(t *testing.T) {
	t.Parallel()
	base := newE2EHome(t, e2eOpts{batchSize: 10})
	base.must("key", "create", "payments")
	base.createDEKs("payments", 25)
	base.makeDue("payments")
	base.must("run", "--once")
	base.must("rotate", "payments", "--reason", "staff change")
	if out := base.must("audit", "verify"); !strings.Contains(out, "audit trail OK") {
		t.Fatalf("audit verify on the intact trail: %s", out)
	}
	var intact verifyJSON
	base.mustJSON(&intact, "audit", "verify")
	evs := auditRows(t, base.sqlDB())
	cps := checkpointSeqs(t, base.sqlDB())
	if !intact.Valid || intact.Events != int64(len(evs)) || intact.Checkpoints == 0 {
		t.Fatalf("audit verify --json on the intact trail: %+v (%d events in the table)", intact, len(evs))
	}
	t.Logf("intact trail: %d events %v, checkpoints at %v", len(evs), eventTypes(evs), cps)

	// The events tampered with: those of the first (scheduled) rotation.
	started := seqOf(t, evs, rekey.AuditRotationStarted, 0)
	created := seqOf(t, evs, rekey.AuditVersionCreated, 0)
	committed := seqOf(t, evs, rekey.AuditRotationCommitted, 0)
	pending := seqOf(t, evs, rekey.AuditVersionPendingRetirement, 0)
	if cpBefore(cps, started)+1 != started {
		t.Fatalf("no checkpoint right before rotation.started (seq %d): checkpoints %v", started, cps)
	}

	cases := []struct {
		name   string
		tamper func(t *testing.T, db *sql.DB, evs []rekey.AuditEvent)
		seq    int64  // the first bad event verify must name
		kind   string // and what it must say happened to it
	}{
		{"edit_one_field", func(t *testing.T, db *sql.DB, _ []rekey.AuditEvent) {
			// One more DEK than were re-wrapped: the hash no longer recomputes.
			mustExec(t, db, `UPDATE audit_events SET deks = deks + 1 WHERE seq = ?`, committed)
		}, committed, "edited"},
		{"delete_one_event", func(t *testing.T, db *sql.DB, _ []rekey.AuditEvent) {
			mustExec(t, db, `DELETE FROM audit_events WHERE seq = ?`, created)
		}, created, "deleted"},
		{"delete_one_event_and_renumber", func(t *testing.T, db *sql.DB, _ []rekey.AuditEvent) {
			mustExec(t, db, `DELETE FROM audit_events WHERE seq = ?`, created)
			shiftSeqs(t, db, created+1, -1)
		}, created, "deleted"},
		{"insert_forged_event", func(t *testing.T, db *sql.DB, evs []rekey.AuditEvent) {
			// A forged retirement of v1 slipped in before the real
			// version.pending_retirement, with a hash that recomputes and
			// links to the event before it; later events renumbered.
			prev := evs[pending-2]
			forged := rekey.AuditEvent{Seq: pending, Time: prev.Time, Type: rekey.AuditVersionRetired, Key: "payments",
				FromVersion: 1, Status: string(rekey.VersionRetired), Actor: "cli:mallory", PrevHash: prev.Hash}
			forged.Hash = forged.ComputeHash()
			shiftSeqs(t, db, pending, +1)
			insertAuditRow(t, db, forged)
		}, pending, "inserted"},
		{"swap_two_events", func(t *testing.T, db *sql.DB, evs []rekey.AuditEvent) {
			// version.created and rotation.committed trade places, each
			// keeping its seq.
			a, b := evs[created-1], evs[committed-1]
			a.Seq, b.Seq = b.Seq, a.Seq
			updateAuditRow(t, db, a)
			updateAuditRow(t, db, b)
		}, created, "reordered"},
		{"edit_rehash_after_checkpoint", func(t *testing.T, db *sql.DB, evs []rekey.AuditEvent) {
			// The rotation passed off as manual, every later hash
			// recomputed: the chain is consistent, the checkpoint after it
			// (MACed with the backend's key) is not.
			rewriteFrom(t, db, evs, started, func(e *rekey.AuditEvent) { e.Reason = string(rekey.ReasonManual) })
		}, started, "checkpoint_mismatch"},
		{"edit_rehash_mid_rotation", func(t *testing.T, db *sql.DB, evs []rekey.AuditEvent) {
			// Fewer DEKs claimed, every later hash recomputed. A
			// consistent rewrite can only be placed between two
			// checkpoints: verify names the first event after the last
			// good one (rotation.started), "at or after" which the trail
			// was rewritten.
			rewriteFrom(t, db, evs, committed, func(e *rekey.AuditEvent) { e.DEKs = 1 })
		}, cpBefore(cps, committed) + 1, "checkpoint_mismatch"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := base.clone(t)
			db := h.sqlDB()
			dropAuditTriggers(t, db)
			tc.tamper(t, db, auditRows(t, db))
			h.verifyFails(tc.seq, tc.kind)
		})
	}

	// A forged event appended after the head, hash recomputed and linked:
	// nothing in the database tells it from an event whose process died
	// before checkpointing, so verify passes (documented in `audit verify
	// --help`) but must name it as not vouched for by any checkpoint.
	t.Run("append_forged_event_after_head", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		db := h.sqlDB()
		evs := auditRows(t, db)
		last := evs[len(evs)-1]
		forged := rekey.AuditEvent{Seq: last.Seq + 1, Time: last.Time.Add(time.Second), Type: rekey.AuditVersionRetired, Key: "payments",
			FromVersion: 2, Status: string(rekey.VersionRetired), Actor: "cli:mallory", PrevHash: last.Hash}
		forged.Hash = forged.ComputeHash()
		insertAuditRow(t, db, forged) // the triggers refuse UPDATE and DELETE, not INSERT
		r := h.run("audit", "verify")
		want := fmt.Sprintf("seq %d..%d", forged.Seq, forged.Seq)
		if !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, "not yet covered by a checkpoint") {
			t.Errorf("audit verify does not name the unchecked event %s:\n%v", want, r)
		}
		t.Logf("forged head event: audit verify exit %d: %s", r.code, strings.TrimSpace(r.stdout))
	})
}

// TestE2E_AuditVerifyCheckpointDeletion: DESIGN.md ("Audit trail") says
// that thanks to the MACed checkpoints "write access to the database alone
// cannot rewrite history undetected". Rewriting an event with every later
// hash recomputed is caught by the next checkpoint (TestE2E_AuditVerifyTamper,
// edit_rehash_*), but the same write access can delete the checkpoints that
// would catch it, or empty the whole database: then verify finds a
// consistent chain (with an "unchecked tail", or no event at all) and exits
// 0. Each must be caught, naming the first event no longer vouched for.
func TestE2E_AuditVerifyCheckpointDeletion(t *testing.T) {
	t.Parallel()
	base := newE2EHome(t, e2eOpts{})
	base.must("key", "create", "payments")
	base.createDEKs("payments", 10)
	base.makeDue("payments")
	base.must("run", "--once")
	base.must("rotate", "payments")
	evs := auditRows(t, base.sqlDB())
	cps := checkpointSeqs(t, base.sqlDB())
	committed := seqOf(t, evs, rekey.AuditRotationCommitted, 0)

	t.Run("rewrite_and_delete_later_checkpoints", func(t *testing.T) {
		t.Parallel()
		h := base.clone(t)
		db := h.sqlDB()
		dropAuditTriggers(t, db)
		rewriteFrom(t, db, evs, committed, func(e *rekey.AuditEvent) { e.DEKs = 1 })
		// Only the checkpoints at or after the rewrite go: the earlier
		// ones still verify, so the trail looks like one whose last
		// commands died before checkpointing.
		mustExec(t, db, `DELETE FROM audit_checkpoints WHERE seq >= ?`, committed)
		t.Logf("rewrote seq %d..%d with recomputed hashes, deleted the checkpoints at or after seq %d (of %v)", committed, len(evs), committed, cps)
		h.verifyFails(cpBefore(cps, committed)+1, "")
	})
	t.Run("database_emptied", func(t *testing.T) {
		t.Parallel()
		// The keyring (with the checkpoint MAC key) is still there; the
		// database is truncated to nothing. An empty database file is not
		// taken for a new, empty store: every command refuses it, naming
		// the file and saying to restore it, and leaves it empty.
		h := base.clone(t)
		for _, f := range []string{"rekey.db-wal", "rekey.db-shm"} {
			os.Remove(filepath.Join(h.home, f))
		}
		db := filepath.Join(h.home, "rekey.db")
		if err := os.Truncate(db, 0); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"audit", "verify"}, {"audit", "verify", "--json"}, {"status"}, {"key", "create", "b"}} {
			r := h.run(args...)
			if r.code != 1 || !strings.Contains(r.stderr, db) || !strings.Contains(r.stderr, "empty") || !strings.Contains(r.stderr, "restore it from a backup") {
				t.Errorf("%s over an emptied database: exit %d, want 1 naming %s as empty and saying to restore it\n%v", strings.Join(args, " "), r.code, db, r)
			}
		}
		if st, err := os.Stat(db); err != nil || st.Size() != 0 {
			t.Errorf("the emptied database was written: %v, %v", st, err)
		}
	})
}

// TestE2E_MetricsHTTP (acceptance: metrics and HTTP): `rekey run --listen
// 127.0.0.1:0` with `payments` due and 1,000 DEKs rotates it in its first
// cycle; /metrics then has every metric name of DESIGN.md with its type,
// and the rotation's numbers; /api/v1/status is `rekey status --json`;
// /readyz is 200, non-200 once the database file is gone, 200 again once it
// is back; SIGTERM ends the worker with exit 0.
func TestE2E_MetricsHTTP(t *testing.T) {
	t.Parallel()
	const deks = 1000
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "payments")
	h.createDEKs("payments", deks)
	h.makeDue("payments")
	wk := h.startWorker()

	want := []promWant{
		{name: "rekey_key_version", labels: map[string]string{"key": "payments"}, value: 2},
		{name: "rekey_rotations_total", labels: map[string]string{"key": "payments", "result": "success"}, value: 1},
		{name: "rekey_deks", labels: map[string]string{"key": "payments", "version": "2", "state": "active"}, value: deks},
		// And what follows from them.
		{name: "rekey_rotations_total", labels: map[string]string{"key": "payments", "result": "failure"}, value: 0},
		{name: "rekey_rotation_failures_total", labels: map[string]string{"key": "payments"}, value: 0},
		{name: "rekey_rewrapped_deks_total", labels: map[string]string{"key": "payments"}, value: deks},
		{name: "rekey_deks", labels: map[string]string{"key": "payments", "version": "1", "state": "pending_retirement"}, value: 0},
		{name: "rekey_rotation_progress_ratio", labels: map[string]string{"key": "payments"}, value: 0},
		{name: "rekey_retirement_blocked", labels: map[string]string{"key": "payments", "version": "1"}, value: 0},
		{name: "rekey_rotation_duration_seconds_count", labels: map[string]string{"key": "payments"}, value: 1},
		{name: "rekey_audit_chain_valid", labels: map[string]string{}, value: 1},
		// The cycle ends after the rotation did (retirement work follows):
		// wait for it, not for the rotation alone.
		{name: "rekey_worker_last_cycle_timestamp_seconds", labels: map[string]string{}, value: 1, atLeast: true},
	}
	prom := wk.waitMetrics(want, 30*time.Second)

	types := map[string]string{
		"rekey_rotation_failures_total":               "counter",
		"rekey_rotations_total":                       "counter",
		"rekey_rotation_duration_seconds":             "histogram",
		"rekey_key_expiry_timestamp_seconds":          "gauge",
		"rekey_key_version":                           "gauge",
		"rekey_deks":                                  "gauge",
		"rekey_rewrapped_deks_total":                  "counter",
		"rekey_rotation_progress_ratio":               "gauge",
		"rekey_retirement_blocked":                    "gauge",
		"rekey_kms_requests_total":                    "counter",
		"rekey_kms_request_duration_seconds":          "histogram",
		"rekey_worker_last_cycle_timestamp_seconds":   "gauge",
		"rekey_worker_last_success_timestamp_seconds": "gauge",
		"rekey_audit_chain_valid":                     "gauge",
	}
	for _, name := range slices.Sorted(maps.Keys(types)) {
		if got := prom.types[name]; got != types[name] {
			t.Errorf("/metrics: # TYPE %s is %q, want %s", name, got, types[name])
		}
		series := name
		if types[name] == "histogram" {
			series = name + "_count" // histograms appear as _bucket, _sum and _count
		}
		if len(prom.find(series, nil)) == 0 {
			t.Errorf("/metrics: no sample of %s", series)
		}
	}
	now := float64(time.Now().Unix())
	for _, name := range []string{"rekey_worker_last_cycle_timestamp_seconds", "rekey_worker_last_success_timestamp_seconds"} {
		if s := prom.find(name, nil); len(s) != 1 || s[0].value < now-300 || s[0].value > now+5 {
			t.Errorf("/metrics: %s = %v, want the time of the first cycle", name, s)
		}
	}
	if s := prom.find("rekey_key_expiry_timestamp_seconds", map[string]string{"key": "payments"}); len(s) != 1 || s[0].value < now+80*86400 {
		t.Errorf("/metrics: payments expiry %v, want about now + 90d", s)
	}
	if s := prom.find("rekey_kms_requests_total", map[string]string{"backend": "local", "result": "success"}); sumValues(s) < 1 {
		t.Errorf("/metrics: no successful KMS request counted: %v", s)
	}

	// /api/v1/status and `rekey status --json` say the same. Left out of
	// the comparison: "time" (when each was built) and each key's
	// expires_in_seconds (expires_at minus that time). due, due_soon and
	// overdue also depend on the time, but cannot differ here: payments
	// expires in 90 days, far from its 7d rotate_within and 14d
	// notify_within, so they are compared too. Nothing else changes
	// between the two calls: the worker's next cycle is a minute away.
	code, api := wk.get("/api/v1/status")
	if code != http.StatusOK {
		t.Fatalf("/api/v1/status: %d %s", code, api)
	}
	cli := h.must("status", "--json")
	a, c := statusForCompare(t, api), statusForCompare(t, cli)
	if !reflect.DeepEqual(a, c) {
		t.Errorf("/api/v1/status differs from rekey status --json:\napi: %s\ncli: %s", api, cli)
	}
	if code, page := wk.get("/"); code != http.StatusOK || !strings.Contains(page, "payments") {
		t.Errorf("status page: %d, mentions payments: %v", code, strings.Contains(page, "payments"))
	}
	if code, body := wk.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}

	// Readiness follows the database file.
	if code, body := wk.get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz with everything in place: %d %s", code, body)
	}
	db := filepath.Join(h.home, "rekey.db")
	if err := os.Rename(db, db+".away"); err != nil {
		t.Fatal(err)
	}
	if code, body, ok := wk.waitReady(false, 5*time.Second); !ok {
		t.Errorf("/readyz with rekey.db removed: %d %s, want non-200", code, body)
	} else {
		t.Logf("/readyz with rekey.db removed: %d %s", code, strings.TrimSpace(body))
	}
	if err := os.Rename(db+".away", db); err != nil {
		t.Fatal(err)
	}
	if code, body, ok := wk.waitReady(true, 5*time.Second); !ok {
		t.Errorf("/readyz with rekey.db back: %d %s, want 200", code, body)
	}

	if code, stderr := wk.stop(); code != 0 {
		t.Errorf("SIGTERM: exit %d, want 0\n%s", code, e2eTail(stderr, 4000))
	}
}

// TestE2E_MetricsReadyzUnreadable: /readyz of a fresh worker goes non-200
// when its database file is made unreadable. chmod 000 does not stop root
// (these tests usually run as root) from opening the file, so "unreadable"
// is also made by replacing the file with a directory, truncating it, or
// overwriting its header: each on a copy of the same home.
func TestE2E_MetricsReadyzUnreadable(t *testing.T) {
	t.Parallel()
	base := newE2EHome(t, e2eOpts{})
	base.must("key", "create", "payments")
	base.createDEKs("payments", 20)
	cases := []struct {
		name  string
		spoil func(t *testing.T, db string)
	}{
		{"replaced_by_directory", func(t *testing.T, db string) {
			if err := os.Rename(db, db+".away"); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(db, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"chmod_000", func(t *testing.T, db string) {
			// Not unreadable to root, but the store checks the mode.
			if err := os.Chmod(db, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated", func(t *testing.T, db string) {
			if err := os.Truncate(db, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"header_overwritten", func(t *testing.T, db string) {
			// The 100-byte header, "SQLite format 3" first, in place.
			f, err := os.OpenFile(db, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.WriteAt(bytes.Repeat([]byte("garbage!"), 13)[:100], 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := base.clone(t)
			wk := h.startWorker()
			if code, body, ok := wk.waitReady(true, 10*time.Second); !ok {
				t.Fatalf("/readyz before: %d %s", code, body)
			}
			// As in a worker that has served for a while: the store's
			// connections are open (a new one would notice a bad header
			// when it connects, an open one does not re-read it).
			if code, body := wk.get("/api/v1/status"); code != http.StatusOK {
				t.Fatalf("/api/v1/status before: %d %s", code, body)
			}
			tc.spoil(t, filepath.Join(h.home, "rekey.db"))
			code, body, ok := wk.waitReady(false, 3*time.Second)
			if !ok {
				scode, sbody := wk.get("/api/v1/status")
				t.Errorf("/readyz with rekey.db %s: %d %q, want non-200 (meanwhile /api/v1/status: %d %s)",
					strings.ReplaceAll(tc.name, "_", " "), code, strings.TrimSpace(body), scode, e2eTail(strings.TrimSpace(sbody), 300))
			} else {
				t.Logf("/readyz: %d %s", code, strings.TrimSpace(body))
			}
			ecode, _ := wk.stop()
			t.Logf("worker exit after SIGTERM: %d", ecode)
		})
	}
}

// TestE2E_ReportLate (acceptance: compliance report): two keys, three
// rotations. `slow` (period 2h, rotate within 1h) is left until a minute
// after its period ended (on an injected clock), then `run --once` rotates
// it: LATE by about a minute. The same run rotates `fast` (period 6h,
// rotate within 5h) two hours into its period: on time. Then `rekey rotate
// fast`: manual, not judged. The Markdown report names both keys, lists the three rotations and
// flags exactly the late one; the JSON report carries the same facts; the
// HTML report renders.
func TestE2E_ReportLate(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "slow", "--period", "2h", "--rotate-within", "1h")
	h.must("key", "create", "fast", "--period", "6h", "--rotate-within", "5h")
	h.createDEKs("slow", 20)
	h.createDEKs("fast", 30)
	// Being late is the point: the run sees the clock a minute past slow's
	// deadline (2h), which is 2h01m into fast's 6h period: fast is due and
	// on time.
	const at = 2*time.Hour + time.Minute
	h.mustAt(at, "run", "--once")
	if k := h.keyShow("fast"); k.ActiveVersion != 2 {
		t.Fatalf("fast after the run: %+v, want v2", k)
	}
	h.mustAt(at, "rotate", "fast", "--reason", "staff change")

	var rep reportJSON
	if err := json.Unmarshal([]byte(h.mustAt(at, "report", "--format", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	md := h.mustAt(at, "report", "--format", "md")
	html := h.mustAt(at, "report", "--format", "html")

	// JSON: the facts.
	byKey := map[string][]reportRotation{}
	var all []reportRotation
	for _, k := range rep.Keys {
		byKey[k.Name] = k.Rotations
		all = append(all, k.Rotations...)
	}
	if len(rep.Keys) != 2 || len(byKey["slow"]) != 1 || len(byKey["fast"]) != 2 {
		t.Fatalf("report json: keys %v, want slow with 1 rotation and fast with 2", byKey)
	}
	s := rep.Summary
	if s.Keys != 2 || s.Rotations != 3 || s.Late != 1 || s.OnTime != 1 || s.Manual != 1 {
		t.Errorf("report json summary: %+v, want 2 keys, 3 rotations: 1 on time, 1 late, 1 manual", s)
	}
	late := byKey["slow"][0]
	if !late.Late || late.Timeliness != "late" || late.Reason != string(rekey.ReasonScheduled) || late.LateBySeconds < 59 || late.LateBySeconds > 600 {
		t.Errorf("slow's rotation: %+v, want scheduled and late by about a minute", late)
	}
	if !slices.Equal(s.LateRotations, []string{late.ID}) {
		t.Errorf("summary late_rotations %v, want [%s]", s.LateRotations, late.ID)
	}
	var onTime, manual reportRotation
	for _, r := range byKey["fast"] {
		switch r.Reason {
		case string(rekey.ReasonScheduled):
			onTime = r
		case string(rekey.ReasonManual):
			manual = r
		}
	}
	if onTime.Timeliness != "on_time" || onTime.Late || onTime.LateBySeconds != 0 {
		t.Errorf("fast's scheduled rotation: %+v, want on time", onTime)
	}
	if manual.Timeliness != "manual" || manual.Late || manual.FromVersion != 2 || manual.ToVersion != 3 {
		t.Errorf("fast's manual rotation: %+v, want v2→v3, manual, not late", manual)
	}
	t.Logf("slow: late by %.3fs (%s); fast: %s, then %s", late.LateBySeconds, late.LateBy, onTime.Timeliness, manual.Timeliness)

	// Markdown: the same facts, for a reader.
	for _, k := range []string{"## Key slow", "## Key fast"} {
		if !strings.Contains(md, k) {
			t.Errorf("report md has no section %q", k)
		}
	}
	var rows []string // rotation table rows start with the rotation id as code
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| `") {
			rows = append(rows, line)
		}
	}
	if len(rows) != 3 {
		t.Errorf("report md: %d rotation rows, want 3:\n%s", len(rows), strings.Join(rows, "\n"))
	}
	for _, r := range all {
		if n := countContaining(rows, "`"+r.ID+"`"); n != 1 {
			t.Errorf("report md: rotation %s in %d table rows, want 1", r.ID, n)
		}
	}
	lateRows := containing(rows, "LATE by")
	if len(lateRows) != 1 || !strings.Contains(lateRows[0], late.ID) || !strings.Contains(lateRows[0], "LATE by "+late.LateBy) {
		t.Errorf("report md: rows flagged LATE %q, want exactly slow's rotation %s, LATE by %s", lateRows, late.ID, late.LateBy)
	}
	if !strings.Contains(md, "1 on time, 1 LATE, 1 manual") || !strings.Contains(md, "**1 rotation was LATE.**") {
		t.Errorf("report md: the summary does not say 1 LATE:\n%s", e2eTail(md, 3000))
	}

	if !strings.Contains(html, "<html") || !strings.Contains(html, "Key slow") || !strings.Contains(html, "Key fast") {
		t.Errorf("report html: no page naming both keys:\n%s", e2eTail(html, 2000))
	}
}

// TestE2E_NoKeyMaterial (acceptance: no key material in any output): a
// worker rotates one of two keys (250 DEKs, two sealed files) with debug
// logs, the CLI reads everything it can (status, keys, DEKs, plan, audit,
// the three report formats) and rotates the other key by hand. Then every
// byte any of it printed — /metrics, the status page, /api/v1/status,
// /readyz, every command's stdout and stderr, the worker's log — is
// searched for every DEK in plaintext (opened through the library), the
// master key and every root-key version (decrypted from the keyring), raw,
// in hex and in base64. The wrapped DEKs are not secret, but the HTTP API
// promises not to serve them: they are searched for in the HTTP responses
// and the reports.
func TestE2E_NoKeyMaterial(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{batchSize: 50})
	var all, served bytes.Buffer // everything printed; what the HTTP API and the reports served
	cli := func(args ...string) string {
		t.Helper()
		r := h.run(append([]string{"--log-level", "debug"}, args...)...)
		all.WriteString(r.stdout)
		all.WriteString(r.stderr)
		if r.code != 0 {
			t.Fatalf("%v", r)
		}
		return r.stdout
	}
	cli("key", "create", "payments")
	cli("key", "create", "ledger")
	cli("dek", "create", "--key", "payments", "--count", "200")
	cli("dek", "create", "--key", "ledger", "--count", "50")
	single := cli("dek", "create", "--key", "payments", "--label", "one", "--json")
	files := h.sealFiles("payments", "secret", []int{1000, 70000}) // output to files: the data, not a log
	wrappedBefore := h.dekRows("payments", 1000)
	h.makeDue("payments")

	wk := h.startWorker("--log-level", "debug")
	wk.waitMetrics([]promWant{
		{name: "rekey_key_version", labels: map[string]string{"key": "payments"}, value: 2},
		{name: "rekey_rotations_total", labels: map[string]string{"key": "payments", "result": "success"}, value: 1},
	}, 30*time.Second)
	for _, path := range []string{"/metrics", "/", "/api/v1/status", "/readyz", "/readyz?format=json", "/healthz"} {
		code, body := wk.get(path)
		if code != http.StatusOK {
			t.Errorf("GET %s: %d", path, code)
		}
		served.WriteString(body)
	}

	var one struct{ ID string }
	if err := json.Unmarshal([]byte(single), &one); err != nil || one.ID == "" {
		t.Fatalf("dek create --json: %q %v", single, err)
	}
	for _, args := range [][]string{
		{"status"}, {"status", "--json"}, {"key", "list"}, {"key", "list", "--json"},
		{"key", "show", "payments"}, {"key", "show", "payments", "--json"}, {"plan"}, {"plan", "--json"},
		{"dek", "show", one.ID}, {"dek", "show", one.ID, "--json"},
		{"rotate", "ledger", "--reason", "staff change"},
		{"audit", "list"}, {"audit", "list", "--json"}, {"audit", "export"}, {"audit", "verify"}, {"audit", "verify", "--json"},
		{"config", "validate"},
	} {
		cli(args...)
	}
	for _, f := range []string{"md", "json", "html"} {
		served.WriteString(cli("report", "--format", f))
	}
	h.checkFiles(files)
	code, stderr := wk.stop()
	if code != 0 {
		t.Errorf("worker: exit %d after SIGTERM", code)
	}
	if len(logLines(stderr, "rotation cycle done")) == 0 {
		t.Errorf("the worker's log has no cycle: %s", e2eTail(stderr, 2000))
	}
	all.WriteString(stderr)
	all.Write(served.Bytes())

	// The secrets, read the way an attacker with the home would.
	ctx := context.Background()
	mkText, err := os.ReadFile(filepath.Join(h.home, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	master, err := localkms.ParseMasterKey(strings.TrimSpace(string(mkText)))
	if err != nil {
		t.Fatal(err)
	}
	secrets := [][]byte{master}
	roots := keyringMaterials(t, filepath.Join(h.home, "keyring"), master)
	if len(roots) != 4 { // payments v1, v2; ledger v1, v2
		t.Errorf("the keyring holds %d root-key versions, want 4", len(roots))
	}
	secrets = append(secrets, roots...)
	kr := h.openKeyring()
	var ids []string
	rows, err := h.sqlDB().Query(`SELECT id FROM deks ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 253 { // 200 + 50 + 1 + the 2 files'
		t.Errorf("%d DEKs in the store, want 253", len(ids))
	}
	for _, id := range ids {
		p, err := kr.OpenDEK(ctx, id)
		if err != nil {
			t.Fatalf("open DEK %s: %v", id, err)
		}
		secrets = append(secrets, p)
	}
	t.Logf("searched %d bytes of output (%d served) for %d secrets", all.Len(), served.Len(), len(secrets))
	assertNoLeak(t, all.Bytes(), secrets)

	var wrapped [][]byte
	for _, r := range append(wrappedBefore, h.dekRows("payments", 1000)...) {
		wrapped = append(wrapped, r.wrapped)
	}
	assertNoLeak(t, served.Bytes(), wrapped)
}

// ---- helpers of these tests ----

// auditList is `rekey audit list --key KEY --json`: one JSON object per
// line, each with every contract field (checked), in seq order (checked).
func (h *e2eHome) auditList(key string) []rekey.AuditEvent {
	h.t.Helper()
	out := h.must("audit", "list", "--key", key, "--json")
	var evs []rekey.AuditEvent
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(line, &fields); err != nil {
			h.t.Fatalf("audit list --json: line %q: %v", line, err)
		}
		for _, f := range auditFields {
			if _, ok := fields[f]; !ok {
				h.t.Errorf("audit list --json: line %q has no field %q", line, f)
			}
		}
		var e rekey.AuditEvent
		if err := json.Unmarshal(line, &e); err != nil {
			h.t.Fatalf("audit list --json: line %q: %v", line, err)
		}
		if e.Key != key {
			h.t.Errorf("audit list --key %s listed an event of key %q (seq %d)", key, e.Key, e.Seq)
		}
		if len(evs) > 0 {
			if p := evs[len(evs)-1]; e.Seq <= p.Seq || e.Time.Before(p.Time) {
				h.t.Errorf("audit list: seq %d (%s) after seq %d (%s): not in order", e.Seq, e.Time, p.Seq, p.Time)
			}
		}
		if len(e.Hash) != 64 || len(e.PrevHash) != 64 || e.Time.Location() != time.UTC {
			h.t.Errorf("audit list: event seq %d: hash %q prev_hash %q time %v, want hex SHA-256s and UTC", e.Seq, e.Hash, e.PrevHash, e.Time)
		}
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		h.t.Fatal(err)
	}
	return evs
}

func eventTypes(evs []rekey.AuditEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmt.Sprintf("%d:%s", e.Seq, e.Type)
	}
	return out
}

// subsequence returns the indexes in evs of the first events of the given
// types in order, or nil if they are not all there in that order.
func subsequence(evs []rekey.AuditEvent, types []rekey.AuditType) []int {
	var idx []int
	i := 0
	for _, typ := range types {
		for i < len(evs) && evs[i].Type != typ {
			i++
		}
		if i == len(evs) {
			return nil
		}
		idx = append(idx, i)
		i++
	}
	return idx
}

func countType(evs []rekey.AuditEvent, typ rekey.AuditType) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// seqOf returns the seq of the nth (from 0) event of type typ.
func seqOf(t *testing.T, evs []rekey.AuditEvent, typ rekey.AuditType, nth int) int64 {
	t.Helper()
	for _, e := range evs {
		if e.Type == typ {
			if nth == 0 {
				return e.Seq
			}
			nth--
		}
	}
	t.Fatalf("no %s event in %v", typ, eventTypes(evs))
	return 0
}

// cpBefore returns the seq of the last checkpoint before seq (0 if none).
func cpBefore(cps []int64, seq int64) int64 {
	var last int64
	for _, c := range cps {
		if c < seq {
			last = c
		}
	}
	return last
}

// clone copies the home into a new scratch directory: a fresh copy of the
// same state (no process may be running on h). The config's relative paths
// resolve against the copy.
func (h *e2eHome) clone(t *testing.T) *e2eHome {
	t.Helper()
	c := &e2eHome{t: t, bin: h.bin, dir: t.TempDir()}
	c.home = filepath.Join(c.dir, "home")
	if err := os.Mkdir(c.home, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(h.home)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.home, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.home, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func mustExec(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s %v: %v", query, args, err)
	}
}

// dropAuditTriggers drops the triggers that refuse UPDATE and DELETE on
// the audit tables: they stop a bug, not someone with the file.
func dropAuditTriggers(t *testing.T, db *sql.DB) {
	t.Helper()
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ('audit_events', 'audit_checkpoints')`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	if len(names) < 2 {
		t.Fatalf("audit triggers: %v, want those refusing UPDATE and DELETE", names)
	}
	for _, n := range names {
		mustExec(t, db, `DROP TRIGGER "`+n+`"`)
	}
}

const auditCols = `seq, time, type, key, from_version, to_version, rotation_id, deks, status, error, actor, reason, backend_request_id, prev_hash, hash`

// auditRows reads every audit event from the table, in seq order.
func auditRows(t *testing.T, db *sql.DB) []rekey.AuditEvent {
	t.Helper()
	rows, err := db.Query(`SELECT ` + auditCols + ` FROM audit_events ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []rekey.AuditEvent
	for rows.Next() {
		var e rekey.AuditEvent
		var at sql.NullInt64
		if err := rows.Scan(&e.Seq, &at, &e.Type, &e.Key, &e.FromVersion, &e.ToVersion, &e.RotationID, &e.DEKs, &e.Status,
			&e.Error, &e.Actor, &e.Reason, &e.BackendRequestID, &e.PrevHash, &e.Hash); err != nil {
			t.Fatal(err)
		}
		if at.Valid {
			e.Time = time.UnixMicro(at.Int64).UTC()
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for i, e := range out {
		if e.Seq != int64(i+1) {
			t.Fatalf("audit_events: seq %d at position %d", e.Seq, i+1)
		}
	}
	return out
}

func micro(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func auditArgs(e rekey.AuditEvent) []any {
	return []any{micro(e.Time), string(e.Type), e.Key, e.FromVersion, e.ToVersion, e.RotationID, e.DEKs, e.Status,
		e.Error, e.Actor, e.Reason, e.BackendRequestID, e.PrevHash, e.Hash}
}

// updateAuditRow overwrites every column of the row of seq e.Seq with e.
func updateAuditRow(t *testing.T, db *sql.DB, e rekey.AuditEvent) {
	t.Helper()
	mustExec(t, db, `UPDATE audit_events SET time = ?, type = ?, key = ?, from_version = ?, to_version = ?, rotation_id = ?,
		deks = ?, status = ?, error = ?, actor = ?, reason = ?, backend_request_id = ?, prev_hash = ?, hash = ? WHERE seq = ?`,
		append(auditArgs(e), e.Seq)...)
}

func insertAuditRow(t *testing.T, db *sql.DB, e rekey.AuditEvent) {
	t.Helper()
	mustExec(t, db, `INSERT INTO audit_events (`+auditCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		append([]any{e.Seq}, auditArgs(e)...)...)
}

// shiftSeqs adds by to the seq of every event from seq from on (through a
// detour, so that no two rows share a seq meanwhile).
func shiftSeqs(t *testing.T, db *sql.DB, from, by int64) {
	t.Helper()
	const far = 1 << 40
	mustExec(t, db, `UPDATE audit_events SET seq = seq + ? WHERE seq >= ?`, far, from)
	mustExec(t, db, `UPDATE audit_events SET seq = seq - ? + ? WHERE seq >= ?`, far, by, far)
}

// rewriteFrom applies edit to event seq and recomputes the prev_hash and
// hash of it and of every later event (rekey.AuditEvent.ComputeHash), as an
// attacker who knows the format would: the chain is consistent again.
func rewriteFrom(t *testing.T, db *sql.DB, evs []rekey.AuditEvent, seq int64, edit func(*rekey.AuditEvent)) {
	t.Helper()
	evs = slices.Clone(evs)
	edit(&evs[seq-1])
	for i := seq - 1; i < int64(len(evs)); i++ {
		if i > 0 {
			evs[i].PrevHash = evs[i-1].Hash
		}
		evs[i].Hash = evs[i].ComputeHash()
		updateAuditRow(t, db, evs[i])
	}
}

// checkpointSeqs returns the seqs of the audit checkpoints, ascending.
func checkpointSeqs(t *testing.T, db *sql.DB) []int64 {
	t.Helper()
	rows, err := db.Query(`SELECT seq FROM audit_checkpoints ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var s int64
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// verifyJSON is `rekey audit verify --json`.
type verifyJSON struct {
	Valid       bool  `json:"valid"`
	Events      int64 `json:"events"`
	LastSeq     int64 `json:"last_seq"`
	Checkpoints int   `json:"checkpoints"`
	FirstBad    *struct {
		Seq     int64  `json:"seq"`
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"first_bad"`
}

// verifyFails runs `rekey audit verify` and `audit verify --json`: both
// must exit 1, the text must name seq ("at seq N") and the JSON must give
// it as first_bad.seq, of kind kind (any kind if "").
func (h *e2eHome) verifyFails(seq int64, kind string) {
	h.t.Helper()
	r := h.run("audit", "verify")
	if r.code != 1 {
		h.t.Errorf("audit verify: exit %d, want 1\n%v", r.code, r)
	}
	if name := fmt.Sprintf("at seq %d:", seq); !strings.Contains(r.stdout, name) || !strings.Contains(r.stderr, name) {
		h.t.Errorf("audit verify does not name seq %d (%q):\n%v", seq, name, r)
	}
	r = h.run("audit", "verify", "--json")
	var res verifyJSON
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		h.t.Fatalf("audit verify --json: %v\n%v", err, r)
	}
	switch {
	case r.code != 1 || res.Valid || res.FirstBad == nil:
		h.t.Errorf("audit verify --json: exit %d, %+v; want exit 1 and first_bad", r.code, res)
	case res.FirstBad.Seq != seq || (kind != "" && res.FirstBad.Kind != kind):
		h.t.Errorf("audit verify --json: first_bad %+v, want seq %d kind %q", *res.FirstBad, seq, kind)
	default:
		h.t.Logf("audit verify: %s at seq %d: %s", res.FirstBad.Kind, res.FirstBad.Seq, res.FirstBad.Message)
	}
}

// e2eWorker is a `rekey run --listen 127.0.0.1:0` daemon.
type e2eWorker struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  *lineWatcher
	base   string // http://ADDRESS
	exited chan struct{}
}

// serveMsg is the worker's log line naming the address it serves on.
const serveMsg = "serving /metrics, /healthz, /readyz, /api/v1/status and the status page"

// startWorker starts `rekey run --listen 127.0.0.1:0 [args]` and returns
// once it serves, its address read from its log. The test's cleanup kills
// it if it still runs.
func (h *e2eHome) startWorker(args ...string) *e2eWorker {
	h.t.Helper()
	cmd := h.command(nil, append([]string{"run", "--listen", "127.0.0.1:0"}, args...)...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	w := &e2eWorker{t: h.t, cmd: cmd, lines: watchLines(pipe, `"msg":"`+serveMsg+`"`), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() {
		<-w.lines.done // Wait must not close the pipe before it is drained
		cmd.Wait()
		close(w.exited)
	}()
	h.t.Cleanup(func() {
		select {
		case <-w.exited:
		default:
			cmd.Process.Kill()
			<-w.exited
		}
	})
	select {
	case <-w.lines.found:
	case <-w.exited:
		h.t.Fatalf("rekey run exited (%v) before serving:\n%s", cmd.ProcessState, e2eTail(w.lines.text(), 4000))
	case <-time.After(30 * time.Second):
		h.t.Fatalf("rekey run does not serve after 30s:\n%s", e2eTail(w.lines.text(), 4000))
	}
	lines := logLines(w.lines.text(), serveMsg)
	addr, _ := lines[0]["address"].(string)
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		h.t.Fatalf("rekey run logged address %q", addr)
	}
	w.base = "http://" + addr
	return w
}

var e2eHTTP = &http.Client{Timeout: 10 * time.Second}

// get GETs path from the worker and returns the status and body.
func (w *e2eWorker) get(path string) (int, string) {
	w.t.Helper()
	resp, err := e2eHTTP.Get(w.base + path)
	if err != nil {
		w.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		w.t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// waitReady polls /readyz until it is 200 (ready) or not (!ready), for up
// to d; it returns the last answer and whether it was the one wanted.
func (w *e2eWorker) waitReady(ready bool, d time.Duration) (int, string, bool) {
	w.t.Helper()
	end := time.Now().Add(d)
	for {
		code, body := w.get("/readyz")
		if (code == http.StatusOK) == ready {
			return code, body, true
		}
		if time.Now().After(end) {
			return code, body, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// promWant is a sample /metrics must have: name, exact label set, value.
type promWant struct {
	name    string
	labels  map[string]string
	value   float64
	atLeast bool // value is a lower bound, not the value
}

// waitMetrics polls /metrics until every wanted sample holds, for up to d,
// and returns the last scrape.
func (w *e2eWorker) waitMetrics(want []promWant, d time.Duration) promText {
	w.t.Helper()
	end := time.Now().Add(d)
	for {
		code, body := w.get("/metrics")
		p := parseProm(w.t, body)
		var missing []string
		for _, m := range want {
			s := p.find(m.name, m.labels)
			if code != http.StatusOK || len(s) != 1 || len(s[0].labels) != len(m.labels) ||
				(!m.atLeast && s[0].value != m.value) || (m.atLeast && s[0].value < m.value) {
				missing = append(missing, fmt.Sprintf("%s%v = %v (have %v)", m.name, m.labels, m.value, s))
			}
		}
		if len(missing) == 0 {
			return p
		}
		if time.Now().After(end) {
			w.t.Fatalf("/metrics after %v: %d, still not:\n%s\nworker log:\n%s", d, code, strings.Join(missing, "\n"), e2eTail(w.lines.text(), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for the exit; it returns the exit code and
// everything the worker logged.
func (w *e2eWorker) stop() (int, string) {
	w.t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		w.t.Fatal(err)
	}
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		w.cmd.Process.Kill()
		<-w.exited
		w.t.Fatalf("rekey run still running 30s after SIGTERM:\n%s", e2eTail(w.lines.text(), 4000))
	}
	return w.cmd.ProcessState.ExitCode(), w.lines.text()
}

// promSample is one sample of the Prometheus text format.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

func (s promSample) String() string { return fmt.Sprintf("%s%v %v", s.name, s.labels, s.value) }

// promText is a parsed /metrics page.
type promText struct {
	types   map[string]string // metric family -> counter, gauge, histogram...
	samples []promSample
}

// find returns the samples of name whose labels include labels (all of
// them when labels is nil).
func (p promText) find(name string, labels map[string]string) []promSample {
	var out []promSample
	for _, s := range p.samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range labels {
			if s.labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func sumValues(s []promSample) float64 {
	var n float64
	for _, x := range s {
		n += x.value
	}
	return n
}

// parseProm parses the Prometheus text exposition format (as client_golang
// writes it: one sample per line, label values quoted with \\, \" and \n
// escaped).
func parseProm(t *testing.T, body string) promText {
	t.Helper()
	p := promText{types: map[string]string{}}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "# TYPE ") {
			if f := strings.Fields(line); len(f) == 4 {
				p.types[f[2]] = f[3]
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := promSample{labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			t.Fatalf("/metrics: line %q", line)
		}
		s.name, line = line[:i], line[i:]
		if line[0] == '{' {
			line = line[1:]
			for line != "" && line[0] != '}' {
				eq := strings.Index(line, `="`)
				if eq < 0 {
					t.Fatalf("/metrics: labels of %s: %q", s.name, line)
				}
				k := line[:eq]
				line = line[eq+2:]
				var v strings.Builder
				for line != "" && line[0] != '"' {
					if line[0] == '\\' && len(line) > 1 {
						switch line[1] {
						case 'n':
							v.WriteByte('\n')
						default:
							v.WriteByte(line[1])
						}
						line = line[2:]
						continue
					}
					v.WriteByte(line[0])
					line = line[1:]
				}
				s.labels[k] = v.String()
				line = strings.TrimPrefix(strings.TrimPrefix(line, `"`), ",")
			}
			line = strings.TrimPrefix(line, "}")
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			t.Fatalf("/metrics: no value for %s", s.name)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("/metrics: value of %s: %v", s.name, err)
		}
		s.value = v
		p.samples = append(p.samples, s)
	}
	return p
}

// statusForCompare decodes a status JSON and drops what depends on the
// instant it was built: "time" and each key's "expires_in_seconds".
func statusForCompare(t *testing.T, text string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, text)
	}
	delete(m, "time")
	keys, _ := m["keys"].([]any)
	if len(keys) == 0 {
		t.Fatalf("status JSON without keys: %s", text)
	}
	for _, k := range keys {
		if km, ok := k.(map[string]any); ok {
			delete(km, "expires_in_seconds")
		}
	}
	return m
}

// reportJSON is the part of `rekey report --format json` checked here.
type (
	reportRotation struct {
		ID            string  `json:"id"`
		Key           string  `json:"key"`
		Reason        string  `json:"reason"`
		FromVersion   int     `json:"from_version"`
		ToVersion     int     `json:"to_version"`
		Timeliness    string  `json:"timeliness"`
		Late          bool    `json:"late"`
		LateBySeconds float64 `json:"late_by_seconds"`
		LateBy        string  `json:"late_by"`
	}
	reportJSON struct {
		Summary struct {
			Keys          int      `json:"keys"`
			Rotations     int      `json:"rotations"`
			OnTime        int      `json:"on_time"`
			Late          int      `json:"late"`
			Manual        int      `json:"manual"`
			LateRotations []string `json:"late_rotations"`
		} `json:"summary"`
		Keys []struct {
			Name      string           `json:"name"`
			Rotations []reportRotation `json:"rotations"`
		} `json:"keys"`
	}
)

func containing(lines []string, s string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

func countContaining(lines []string, s string) int { return len(containing(lines, s)) }

// openKeyring opens the home's store and local backend the way a library
// user would (closed at the end of the test).
func (h *e2eHome) openKeyring() *rekey.Keyring {
	h.t.Helper()
	ctx := context.Background()
	s, err := sqlitestore.Open(ctx, sqlitestore.Config{Path: filepath.Join(h.home, "rekey.db")})
	if err != nil {
		h.t.Fatal(err)
	}
	k, err := localkms.New(ctx, localkms.Config{Keyring: filepath.Join(h.home, "keyring"), MasterKeyFile: filepath.Join(h.home, "master.key")})
	if err != nil {
		s.Close()
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { s.Close(); k.Close() })
	return rekey.NewKeyring(s, map[string]rekey.KMS{"local": k})
}

// keyringMaterials decrypts the local keyring file with the master key and
// returns the material of every root-key version. The format is the one
// kms/localkms/keyring.go documents: magic "REKEYKR", a format byte, a
// 16-byte key check value, a 12-byte nonce, then AES-256-GCM of the JSON
// payload with the 36 header bytes as additional data.
func keyringMaterials(t *testing.T, path string, master []byte) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const header = 7 + 1 + 16 + 12
	if len(data) < header+16 || string(data[:7]) != "REKEYKR" || data[7] != 1 {
		t.Fatalf("keyring %s: not the format this test decodes (did kms/localkms/keyring.go change?)", path)
	}
	block, err := aes.NewCipher(master)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := gcm.Open(nil, data[header-12:header], data[header:], data[:header])
	if err != nil {
		t.Fatalf("keyring %s: does not open under the master key: %v", path, err)
	}
	var kr struct {
		Keys map[string]struct {
			Versions []struct {
				Material []byte `json:"material"`
			} `json:"versions"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(payload, &kr); err != nil {
		t.Fatalf("keyring payload: %v", err)
	}
	var out [][]byte
	names := slices.Collect(maps.Keys(kr.Keys))
	sort.Strings(names)
	for _, n := range names {
		for _, v := range kr.Keys[n].Versions {
			if len(v.Material) != 32 {
				t.Fatalf("keyring: key %s has a version with %d bytes of material", n, len(v.Material))
			}
			out = append(out, v.Material)
		}
	}
	return out
}

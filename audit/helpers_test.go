package audit_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"go.uber.org/goleak"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the time of the first event of a test trail.
var t0 = time.Date(2031, 3, 4, 5, 6, 7, 123456000, time.UTC)

// trail is a test audit trail in a SQLite file: events 1..23, with
// checkpoints of seq 10 and 20 MAC'd by mac, whose key the file does not
// hold. Events 21..23 are not checkpointed.
type trail struct {
	path string
	mac  rekey.MACer
}

const (
	trailEvents = 23
	cp1, cp2    = 10, 20
)

// eventTypes cycles through some event types so that messages differ.
var eventTypes = []rekey.AuditType{
	rekey.AuditKeyCreated, rekey.AuditRotationStarted, rekey.AuditVersionCreated, rekey.AuditRewrapProgress,
	rekey.AuditRotationCommitted, rekey.AuditVersionPendingRetirement, rekey.AuditRotationCompleted,
	rekey.AuditRotationFailed, rekey.AuditVersionRetired, rekey.AuditRetirementBlocked, rekey.AuditPolicyChanged,
}

// testEvent returns the i-th (0-based) unsaved event of a test trail.
func testEvent(i int) rekey.AuditEvent {
	key := []string{"payments", "orders", "users"}[i%3]
	return rekey.AuditEvent{
		Time:             t0.Add(time.Duration(i) * time.Minute),
		Type:             eventTypes[i%len(eventTypes)],
		Key:              key,
		FromVersion:      i%4 + 1,
		ToVersion:        i%4 + 2,
		RotationID:       fmt.Sprintf("rot-%d", i/5),
		DEKs:             int64(i * 100),
		Status:           "success",
		Actor:            "worker-1",
		Reason:           "scheduled",
		BackendRequestID: fmt.Sprintf("req-%d", i),
	}
}

// appendEvents appends n test events, numbered from first, to s.
func appendEvents(t testing.TB, s rekey.Store, first, n int) {
	t.Helper()
	evs := make([]rekey.AuditEvent, n)
	for i := range evs {
		evs[i] = testEvent(first + i)
	}
	if err := s.AppendAudit(context.Background(), evs...); err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
}

func checkpoint(t testing.TB, s rekey.Store, m rekey.MACer, want int64) rekey.AuditCheckpoint {
	t.Helper()
	cp, err := audit.Checkpoint(context.Background(), s, m, audit.Purpose, "memkms/"+audit.Purpose, t0.Add(time.Hour))
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if cp.Seq != want {
		t.Fatalf("Checkpoint made seq %d, want %d", cp.Seq, want)
	}
	return cp
}

// buildTrail writes the test trail and closes the store.
func buildTrail(t *testing.T) *trail {
	t.Helper()
	tr := &trail{path: filepath.Join(t.TempDir(), "rekey.db"), mac: memkms.New()}
	s := tr.open(t)
	appendEvents(t, s, 0, cp1)
	checkpoint(t, s, tr.mac, cp1)
	appendEvents(t, s, cp1, cp2-cp1)
	checkpoint(t, s, tr.mac, cp2)
	appendEvents(t, s, cp2, trailEvents-cp2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return tr
}

// open opens the trail's store; it is closed when the test ends.
func (tr *trail) open(t *testing.T) *sqlitestore.Store {
	t.Helper()
	s, err := sqlitestore.Open(context.Background(), sqlitestore.Config{Create: true, Path: tr.path})
	if err != nil {
		t.Fatalf("sqlitestore.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// verify opens the store and verifies it with m.
func (tr *trail) verify(t *testing.T, m rekey.MACer) audit.Result {
	t.Helper()
	s := tr.open(t)
	res, err := audit.Verify(t.Context(), s, m, audit.Purpose)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return res
}

// attacker is direct write access to the database file, as someone who
// can write to it has, with the append-only triggers dropped.
type attacker struct {
	t  *testing.T
	db *sql.DB
}

// tamper runs fn with write access to the trail's file, the store closed.
func (tr *trail) tamper(t *testing.T, fn func(a *attacker)) {
	t.Helper()
	db, err := sql.Open("sqlite3", tr.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	a := &attacker{t: t, db: db}
	// The trigger names are those of migrations 0001 and 0002.
	for _, trig := range []string{"audit_events_no_update", "audit_events_no_delete", "audit_checkpoints_no_update", "audit_checkpoints_no_delete"} {
		a.exec("DROP TRIGGER " + trig)
	}
	fn(a)
}

func (a *attacker) exec(q string, args ...any) {
	a.t.Helper()
	if _, err := a.db.Exec(q, args...); err != nil {
		a.t.Fatalf("%s: %v", q, err)
	}
}

const columns = `seq, time, type, key, from_version, to_version, rotation_id, deks, status, error, actor, reason, backend_request_id, prev_hash, hash`

// events reads every event row, in seq order.
func (a *attacker) events() []rekey.AuditEvent {
	a.t.Helper()
	rows, err := a.db.Query(`SELECT ` + columns + ` FROM audit_events ORDER BY seq`)
	if err != nil {
		a.t.Fatal(err)
	}
	defer rows.Close()
	var out []rekey.AuditEvent
	for rows.Next() {
		var e rekey.AuditEvent
		var at int64
		if err := rows.Scan(&e.Seq, &at, &e.Type, &e.Key, &e.FromVersion, &e.ToVersion, &e.RotationID, &e.DEKs,
			&e.Status, &e.Error, &e.Actor, &e.Reason, &e.BackendRequestID, &e.PrevHash, &e.Hash); err != nil {
			a.t.Fatal(err)
		}
		e.Time = time.UnixMicro(at).UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		a.t.Fatal(err)
	}
	return out
}

func eventArgs(e rekey.AuditEvent) []any {
	return []any{e.Seq, e.Time.UnixMicro(), string(e.Type), e.Key, e.FromVersion, e.ToVersion, e.RotationID, e.DEKs,
		e.Status, e.Error, e.Actor, e.Reason, e.BackendRequestID, e.PrevHash, e.Hash}
}

// insert writes e as a new row.
func (a *attacker) insert(e rekey.AuditEvent) {
	a.t.Helper()
	a.exec(`INSERT INTO audit_events (`+columns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, eventArgs(e)...)
}

// rewrite replaces every column of the row of seq with e's values (e.Seq
// included).
func (a *attacker) rewrite(seq int64, e rekey.AuditEvent) {
	a.t.Helper()
	a.exec(`UPDATE audit_events SET (`+columns+`) = (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) WHERE seq = ?`,
		append(eventArgs(e), seq)...)
}

// shift adds by to the seq of every event at or after from, leaving the
// rest of each row as it was.
func (a *attacker) shift(from, by int64) {
	a.t.Helper()
	// Through negative seqs, so that no two rows share a seq meanwhile.
	a.exec(`UPDATE audit_events SET seq = -seq WHERE seq >= ?`, from)
	a.exec(`UPDATE audit_events SET seq = -seq + ? WHERE seq < 0`, by)
}

// rechain recomputes prev_hash and hash of every event from seq from on,
// as an attacker covering an edit does.
func (a *attacker) rechain(from int64) {
	a.t.Helper()
	evs := a.events()
	prev := rekey.GenesisHash
	for _, e := range evs {
		if e.Seq >= from {
			e.PrevHash = prev
			e.Hash = e.ComputeHash()
			a.rewrite(e.Seq, e)
		}
		prev = e.Hash
	}
}

// eventAt returns the event of seq.
func (a *attacker) eventAt(seq int64) rekey.AuditEvent {
	a.t.Helper()
	for _, e := range a.events() {
		if e.Seq == seq {
			return e
		}
	}
	a.t.Fatalf("no event of seq %d", seq)
	return rekey.AuditEvent{}
}

// forged returns a forged event for seq, with a hash computed as the store
// would, following prev.
func forged(seq int64, prev rekey.AuditEvent) rekey.AuditEvent {
	e := rekey.AuditEvent{Time: prev.Time.Add(time.Second), Type: rekey.AuditVersionRetired, Key: "payments",
		FromVersion: 1, ToVersion: 1, Status: "success", Actor: "mallory", Reason: "forged"}
	e.Chain(seq-1, prev.Hash)
	return e
}

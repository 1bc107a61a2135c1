package main

// End-to-end tests of several `rekey run` replicas on one real PostgreSQL
// (issue 9, "Must hold"): each replica is a rekey process with its own
// REKEY_WORKER_ID and listener; they share one database schema (made per
// test) and one home (rekey.yaml, the local keyring and its master key: the
// keyring file is shared under its flock). Run them with
//
//	eval "$(scripts/pg start)"
//	go test -count=1 -run TestE2E_Replicas -v ./cmd/rekey
//	scripts/pg stop
//
// Without REKEY_TEST_PG_DSN they fail under CI and are skipped otherwise.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/fileutil"
)

// pgDSNEnv names the variable holding the DSN of the test server.
const pgDSNEnv = "REKEY_TEST_PG_DSN"

// replicaDSN returns the DSN of the test PostgreSQL, failing the test
// under CI when there is none and skipping it otherwise (naming the
// command that starts one).
func replicaDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv(pgDSNEnv)
	if dsn == "" {
		const how = pgDSNEnv + " is not set: start a throwaway PostgreSQL with `eval \"$(scripts/pg start)\"` (stop it with `scripts/pg stop`), or run scripts/test, which does both"
		if os.Getenv("CI") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	return dsn
}

// pgHome is a home whose store is a fresh schema of a real PostgreSQL,
// and a pool on that schema for the test's own queries.
type pgHome struct {
	*e2eHome
	dsn  string // with search_path set to the test's schema
	pool *pgxpool.Pool
}

// pgOpts configures a pgHome.
type pgOpts struct {
	batchSize     int
	leaseTTL      time.Duration
	checkInterval time.Duration
}

// newPGHome makes a home with `rekey init`, creates a schema with a random
// name in the database of dsn (dropped at the end of the test) and points
// the home's store at it.
func newPGHome(t *testing.T, dsn string, o pgOpts) *pgHome {
	t.Helper()
	ctx := context.Background()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "e2e_" + hex.EncodeToString(b[:])
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", pgDSNEnv, err)
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		// The server may have been restarted meanwhile: retry briefly.
		var err error
		for range 50 {
			if _, err = admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("drop schema %s: %v", schema, err)
	})
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		t.Fatalf("%s must be a postgres:// URL", pgDSNEnv)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	h := &pgHome{e2eHome: newE2EHome(t, e2eOpts{batchSize: o.batchSize, leaseTTL: o.leaseTTL}), dsn: u.String()}
	edits := [][2]string{
		{"driver: sqlite", "driver: postgres"},
		{"dsn: rekey.db", "dsn: " + strconv.Quote(h.dsn)},
	}
	if o.checkInterval > 0 {
		edits = append(edits, [2]string{"check_interval: 1m", "check_interval: " + o.checkInterval.String()})
	}
	h.editConfig(edits...)
	if h.pool, err = pgxpool.New(ctx, h.dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.pool.Close)
	return h
}

// queryInt runs a query returning one integer.
func (h *pgHome) queryInt(query string, args ...any) int64 {
	h.t.Helper()
	var n int64
	if err := h.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		h.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// makeDue moves the keys' expiry to now: the next cycle rotates them.
func (h *pgHome) makeDue(keys ...string) {
	h.t.Helper()
	tag, err := h.pool.Exec(context.Background(), `UPDATE keys SET expires_at = now() WHERE name = ANY($1)`, keys)
	if err != nil {
		h.t.Fatal(err)
	}
	if tag.RowsAffected() != int64(len(keys)) {
		h.t.Fatalf("make %v due: %d rows", keys, tag.RowsAffected())
	}
}

// pgRotation is a rotation row as stored.
type pgRotation struct {
	id, state, owner string
	to               int
	done, total      int64
	epoch            int64
}

// rotations returns key's rotation rows in start order.
func (h *pgHome) rotations(key string) []pgRotation {
	h.t.Helper()
	rows, err := h.pool.Query(context.Background(),
		`SELECT id, state, owner, to_version, deks_done, deks_total, epoch FROM rotations WHERE key = $1 ORDER BY started_at, id`, key)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	var out []pgRotation
	for rows.Next() {
		var r pgRotation
		if err := rows.Scan(&r.id, &r.state, &r.owner, &r.to, &r.done, &r.total, &r.epoch); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		h.t.Fatal(err)
	}
	return out
}

// waitFor polls cond every 100ms for up to d; it fails the test with what
// when cond never held, naming the replicas' logs.
func (h *pgHome) waitFor(d time.Duration, what string, cond func() bool, ws ...*replica) {
	h.t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			var logs strings.Builder
			locks := h.locks()
			for _, w := range ws {
				fmt.Fprintf(&logs, "\n--- %s:\n%s", w.id, e2eTail(w.lines.text(), 3000))
			}
			for _, w := range ws {
				fmt.Fprintf(&logs, "\n--- %s's goroutines in rekey code:\n%s", w.id, w.goroutines())
			}
			h.t.Fatalf("after %v still not: %s\n%s%s", d, what, locks, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// locks describes the sessions that wait for a lock (a replica stopped
// inside a transaction blocks the others): for the failure messages.
func (h *pgHome) locks() string {
	rows, err := h.pool.Query(context.Background(),
		`SELECT pid, state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), left(query, 120) FROM pg_stat_activity
		 WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'`)
	if err != nil {
		return "pg_stat_activity: " + err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	b.WriteString("busy sessions:")
	for rows.Next() {
		var pid int
		var state, wt, we, q string
		if rows.Scan(&pid, &state, &wt, &we, &q) == nil {
			fmt.Fprintf(&b, "\n  pid %d %s wait %s/%s: %s", pid, state, wt, we, q)
		}
	}
	return b.String()
}

// allDone reports whether every key has exactly one rotation and it is done.
func (h *pgHome) allDone(keys ...string) bool {
	n := h.queryInt(`SELECT count(*) FROM rotations WHERE key = ANY($1) AND state = 'done'`, keys)
	return n == int64(len(keys))
}

// dekDigest is a digest of every DEK row (id, version, wrapped bytes,
// updated_at): equal digests, no DEK written.
func (h *pgHome) dekDigest() string {
	h.t.Helper()
	var s string
	if err := h.pool.QueryRow(context.Background(),
		`SELECT coalesce(md5(string_agg(id || ':' || version || ':' || md5(wrapped) || ':' || coalesce(updated_at::text, ''), ',' ORDER BY id)), '')
		 FROM deks`).Scan(&s); err != nil {
		h.t.Fatal(err)
	}
	return s
}

// rotationRows is every rotation row as text, for before/after comparisons.
func (h *pgHome) rotationRows() string {
	h.t.Helper()
	var s string
	if err := h.pool.QueryRow(context.Background(),
		`SELECT coalesce(string_agg(r::text, E'\n' ORDER BY id), '') FROM rotations r`).Scan(&s); err != nil {
		h.t.Fatal(err)
	}
	return s
}

// auditTrail returns every audit event's "seq actor type key", in seq order.
func (h *pgHome) auditTrail() []string {
	h.t.Helper()
	rows, err := h.pool.Query(context.Background(), `SELECT seq, actor, type, key FROM audit_events ORDER BY seq`)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var seq int64
		var actor, typ, key string
		if err := rows.Scan(&seq, &actor, &typ, &key); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d %s %s %s", seq, actor, typ, key))
	}
	if err := rows.Err(); err != nil {
		h.t.Fatal(err)
	}
	return out
}

// verifyAudit runs `rekey audit verify`, which must exit 0.
func (h *pgHome) verifyAudit() {
	h.t.Helper()
	if r := h.run("audit", "verify"); r.code != 0 {
		h.t.Errorf("audit verify: %v", r)
	}
}

// checkRotatedOnce checks that key was rotated exactly once, from v1 to
// v2: one rotation record, done; one rotation.started and one
// rotation.committed in the audit trail; versions 1 and 2 in the store and
// 2 in the backend; all deks DEKs on v2. It returns the key's audit events.
func (h *pgHome) checkRotatedOnce(key string, deks int64) []rekey.AuditEvent {
	h.t.Helper()
	if rs := h.rotations(key); len(rs) != 1 || rs[0].state != "done" || rs[0].to != 2 {
		h.t.Errorf("key %s: rotations %+v, want exactly one, done, to v2", key, rs)
	}
	evs := h.auditList(key)
	for _, typ := range []rekey.AuditType{rekey.AuditRotationStarted, rekey.AuditVersionCreated, rekey.AuditRotationCommitted} {
		if n := countType(evs, typ); n != 1 {
			h.t.Errorf("key %s: %d %s events, want 1: %v", key, n, typ, eventTypes(evs))
		}
	}
	k := h.assertAllOn(key, 2, deks)
	if len(k.Versions) != 2 {
		h.t.Errorf("key %s: versions %+v, want exactly 1 and 2", key, k.Versions)
	}
	if v := h.backendVersion(key); v != 2 {
		h.t.Errorf("key %s: backend version %d, want 2", key, v)
	}
	return evs
}

// actors returns, for the events of type typ, the actors in order of first
// appearance and how many events each wrote.
func actors(evs []rekey.AuditEvent, typ rekey.AuditType) ([]string, map[string]int) {
	var order []string
	n := map[string]int{}
	for _, e := range evs {
		if e.Type != typ {
			continue
		}
		if n[e.Actor] == 0 {
			order = append(order, e.Actor)
		}
		n[e.Actor]++
	}
	return order, n
}

// actorOf returns the actor of the first event of type typ ("" if none).
func actorOf(evs []rekey.AuditEvent, typ rekey.AuditType) string {
	for _, e := range evs {
		if e.Type == typ {
			return e.Actor
		}
	}
	return ""
}

// replica is one `rekey run` replica: a worker with its REKEY_WORKER_ID.
type replica struct {
	*e2eWorker
	id string
}

// goroutines ends a running replica with SIGQUIT, which makes the Go
// runtime print every goroutine's stack, and returns the stacks that pass
// through rekey's own packages: where a stuck replica waits. A stopped
// replica (SIGSTOP) cannot print; it is left alone.
func (w *replica) goroutines() string {
	select {
	case <-w.exited:
		return "(exited)"
	default:
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w.cmd.Process.Pid)); err == nil {
		if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "T" {
			return "(stopped)"
		}
	}
	if err := w.cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		return "SIGQUIT: " + err.Error()
	}
	select {
	case <-w.exited:
	case <-time.After(5 * time.Second):
		return "(no dump within 5s of SIGQUIT)"
	}
	text := w.lines.text()
	i := strings.Index(text, "SIGQUIT: quit")
	if i < 0 {
		return "(no goroutine dump in its output)"
	}
	var b strings.Builder
	for _, g := range strings.Split(text[i:], "\n\n") {
		if strings.Contains(g, "rekeyhq/rekey/") && !strings.Contains(g, "net/http.") {
			b.WriteString(frameAddrs.ReplaceAllString(g, ""))
			b.WriteString("\n\n")
		}
	}
	return e2eTail(b.String(), 12000)
}

// frameAddrs are the addresses GOTRACEBACK=system adds to each frame.
var frameAddrs = regexp.MustCompile(` fp=0x[0-9a-f]+ sp=0x[0-9a-f]+ pc=0x[0-9a-f]+`)

// startReplicas starts `rekey run --listen 127.0.0.1:0` once per id, with
// REKEY_WORKER_ID=id and env, all processes first, then waits for each to
// serve. The test's cleanup kills those still running (and continues a
// stopped one first).
func (h *e2eHome) startReplicas(env []string, ids ...string) []*replica {
	h.t.Helper()
	ws := make([]*replica, len(ids))
	for i, id := range ids {
		cmd := h.command(append([]string{"REKEY_WORKER_ID=" + id}, env...), "run", "--listen", "127.0.0.1:0")
		pipe, err := cmd.StderrPipe()
		if err != nil {
			h.t.Fatal(err)
		}
		w := &replica{id: id, e2eWorker: &e2eWorker{t: h.t, cmd: cmd, lines: watchLines(pipe, `"msg":"`+serveMsg+`"`), exited: make(chan struct{})}}
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
				cmd.Process.Signal(syscall.SIGCONT)
				cmd.Process.Kill()
				<-w.exited
			}
		})
		ws[i] = w
	}
	for _, w := range ws {
		select {
		case <-w.lines.found:
		case <-w.exited:
			h.t.Fatalf("replica %s exited (%v) before serving:\n%s", w.id, w.cmd.ProcessState, e2eTail(w.lines.text(), 4000))
		case <-time.After(30 * time.Second):
			h.t.Fatalf("replica %s does not serve after 30s:\n%s", w.id, e2eTail(w.lines.text(), 4000))
		}
		addr, _ := logLines(w.lines.text(), serveMsg)[0]["address"].(string)
		if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
			h.t.Fatalf("replica %s logged address %q", w.id, addr)
		}
		w.base = "http://" + addr
	}
	return ws
}

// stopAll stops every replica still running with SIGTERM; each must exit 0.
func stopAll(t *testing.T, ws []*replica) {
	t.Helper()
	for _, w := range ws {
		select {
		case <-w.exited:
			continue
		default:
		}
		if code, log := w.stop(); code != 0 {
			t.Errorf("replica %s: exit %d after SIGTERM:\n%s", w.id, code, e2eTail(log, 3000))
		}
	}
}

// createDEKsParallel creates n DEKs under each key, the keys in parallel.
func (h *e2eHome) createDEKsParallel(keys []string, n int) {
	h.t.Helper()
	var wg sync.WaitGroup
	errs := make([]string, len(keys))
	for i, k := range keys {
		wg.Go(func() {
			r := h.runEnv(nil, "dek", "create", "--key", k, "--count", strconv.Itoa(n), "--json")
			if r.code != 0 || !strings.Contains(r.stdout, `"created": `+strconv.Itoa(n)) && !strings.Contains(r.stdout, `"created":`+strconv.Itoa(n)) {
				errs[i] = r.String()
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			h.t.Fatalf("dek create: %s", e)
		}
	}
}

// TestE2E_Replicas_FiveKeys: three replicas, five keys due at once,
// 20,000 DEKs per key (100,000 with REKEY_LONG=1), the last key (r5, the
// one the replicas reach last) three times as large, and a check interval
// of 200ms, so that the replicas done with their own keys find it still
// busy at their next cycle. Each key is rotated exactly once, every DEK
// ends on v2, the sealed files decrypt, the chain verifies, and more than
// one replica re-wrapped ranges of the largest key (the audit actor of
// its range batches says which).
func TestE2E_Replicas_FiveKeys(t *testing.T) {
	dsn := replicaDSN(t)
	n := e2eSize(20000, 100000)
	h := newPGHome(t, dsn, pgOpts{checkInterval: 200 * time.Millisecond, leaseTTL: 5 * time.Second})
	keys := []string{"r1", "r2", "r3", "r4", "r5"}
	const largest = "r5"
	size := func(k string) int {
		if k == largest {
			return 3 * n
		}
		return n
	}
	start := time.Now()
	for _, k := range keys {
		h.must("key", "create", k)
	}
	h.createDEKsParallel(keys[:len(keys)-1], n)
	h.createDEKsParallel([]string{largest}, size(largest))
	files := map[string][]sealedFile{}
	for _, k := range keys {
		files[k] = h.sealFiles(k, k, fileSizes(2))
	}
	setup := time.Since(start)
	h.makeDue(keys...)

	start = time.Now()
	replicas := []string{"replica-a", "replica-b", "replica-c"}
	ws := h.startReplicas(nil, replicas...)
	h.waitFor(time.Duration(e2eSize(120, 900))*time.Second, "all five keys rotated", func() bool { return h.allDone(keys...) }, ws...)
	took := time.Since(start)
	stopAll(t, ws)
	t.Logf("setup (5 keys, %d DEKs, 10 files) %v; rotation of the five keys by three replicas %v", 4*n+size(largest), setup.Round(time.Millisecond), took.Round(time.Millisecond))

	byReplica := map[string][]string{}
	for _, k := range keys {
		evs := h.checkRotatedOnce(k, int64(size(k)+2))
		started := actorOf(evs, rekey.AuditRotationStarted)
		order, counts := actors(evs, rekey.AuditRewrapProgress)
		rangeOrder, rangeCounts := actors(rangeBatches(evs), rekey.AuditRewrapProgress)
		byReplica[started] = append(byReplica[started], k)
		t.Logf("key %s: started by %s, committed by %s, rewrap.progress events by %v %v, range batches by %v %v",
			k, started, actorOf(evs, rekey.AuditRotationCommitted), order, counts, rangeOrder, rangeCounts)
		if started == "" || !slices.Contains(replicas, started) {
			t.Errorf("key %s: rotation.started actor %q, want one of the replicas", k, started)
		}
		for _, a := range rangeOrder {
			if !slices.Contains(replicas, a) {
				t.Errorf("key %s: range batch by %q, not a replica", k, a)
			}
		}
		if k == largest && len(rangeOrder) < 2 {
			t.Errorf("largest key %s: range batches by %v %v, want more than one replica re-wrapping it", k, rangeOrder, rangeCounts)
		}
		h.checkFiles(files[k])
	}
	t.Logf("keys by replica (rotation.started actor): %v", byReplica)
	h.verifyAudit()
}

// rangeBatches returns the events of evs that record a batch of one range
// of a shared re-wrap ("(range I of N)" in the reason).
func rangeBatches(evs []rekey.AuditEvent) []rekey.AuditEvent {
	var out []rekey.AuditEvent
	for _, e := range evs {
		if e.Type == rekey.AuditRewrapProgress && strings.Contains(e.Reason, "(range ") {
			out = append(out, e)
		}
	}
	return out
}

// TestE2E_Replicas_CrashTakeover: replica-a dies at the third batch commit
// of a re-wrap (REKEY_FAILPOINTS=rewrap.after_batch_commit=crash@3, exit
// 137); replica-b, running beside it, takes the key over once a's lease
// expires and finishes the rotation: one rotation, no extra version, every
// DEK on v2, the files decrypt, the chain verifies.
func TestE2E_Replicas_CrashTakeover(t *testing.T) {
	dsn := replicaDSN(t)
	const n, ttl = 10000, 3 * time.Second
	h := newPGHome(t, dsn, pgOpts{batchSize: 500, leaseTTL: ttl, checkInterval: 500 * time.Millisecond})
	h.must("key", "create", "crashy")
	h.createDEKs("crashy", n)
	files := h.sealFiles("crashy", "crashy", fileSizes(3))
	h.makeDue("crashy")

	a := h.startReplicas([]string{"REKEY_FAILPOINTS=rewrap.after_batch_commit=crash@3"}, "replica-a")[0]
	select {
	case <-a.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("replica-a did not crash at its third batch within 60s:\n%s", e2eTail(a.lines.text(), 3000))
	}
	crashed := time.Now()
	if code := a.cmd.ProcessState.ExitCode(); code != 137 {
		t.Fatalf("replica-a: exit %d, want 137 (the failpoint's crash):\n%s", code, e2eTail(a.lines.text(), 3000))
	}
	rs := h.rotations("crashy")
	// Its two range workers (PostgreSQL: rekey.ConcurrentWriter) count
	// hits together: the other may commit one more batch before the exit.
	if len(rs) != 1 || rs[0].owner != "replica-a" || rs[0].state == "done" || rs[0].done < 1500 || rs[0].done > 2000 || rs[0].done%500 != 0 {
		t.Fatalf("after the crash: rotations %+v, want one open rotation of replica-a with 3 or 4 batches (1500 or 2000 DEKs) done", rs)
	}
	leaseEnd := time.Time{}
	if err := h.pool.QueryRow(context.Background(), `SELECT expires_at FROM leases WHERE key = 'crashy'`).Scan(&leaseEnd); err != nil {
		t.Fatal(err)
	}
	before := rs[0]
	// The ranges replica-a was re-wrapping when it died (one per range
	// worker): replica-b may share the other ranges at once, but these
	// only after their leases expired.
	aRanges := map[int]time.Time{} // index: lease end
	rows, err := h.pool.Query(context.Background(), `SELECT key, expires_at FROM leases
		WHERE owner = 'replica-a' AND key LIKE 'rewrap/%' AND NOT released`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var lk string
		var end time.Time
		if err := rows.Scan(&lk, &end); err != nil {
			t.Fatal(err)
		}
		_, idx, _ := rekey.ParseRangeLeaseKey(lk)
		aRanges[idx] = end
	}
	if rows.Close(); rows.Err() != nil || len(aRanges) == 0 {
		t.Fatalf("replica-a's range leases: %d, %v", len(aRanges), rows.Err())
	}

	b := h.startReplicas(nil, "replica-b")[0]
	h.waitFor(60*time.Second, "replica-b finished the rotation", func() bool { return h.allDone("crashy") }, a, b)
	finished := time.Since(crashed)
	stopAll(t, []*replica{b})

	rs = h.rotations("crashy")
	if len(rs) != 1 || rs[0].id != before.id || rs[0].owner != "replica-b" || rs[0].epoch <= before.epoch {
		t.Errorf("after the takeover: rotations %+v, want the same rotation %s, owned by replica-b with an epoch above %d", rs, before.id, before.epoch)
	}
	evs := h.checkRotatedOnce("crashy", n+3)
	var firstB time.Time
	firstBOn := map[int]time.Time{} // range index of a's: replica-b's first batch
	for _, e := range evs {
		if e.Actor != "replica-b" {
			continue
		}
		if !strings.Contains(e.Reason, "(range ") {
			if firstB.IsZero() {
				firstB = e.Time
			}
			continue
		}
		for idx := range aRanges {
			if _, seen := firstBOn[idx]; !seen && strings.Contains(e.Reason, fmt.Sprintf("(range %d of ", idx+1)) {
				firstBOn[idx] = e.Time
			}
		}
	}
	if firstB.IsZero() || firstB.Before(leaseEnd) {
		t.Errorf("replica-b's first event outside a range at %v, before replica-a's key lease expired (%v)", firstB, leaseEnd)
	}
	for idx, end := range aRanges {
		if got := firstBOn[idx]; got.IsZero() || got.Before(end) {
			t.Errorf("replica-b's first batch of range %d (replica-a's when it died) at %v, before that range's lease expired (%v)", idx, got, end)
		}
	}
	order, counts := actors(evs, rekey.AuditRewrapProgress)
	t.Logf("rotation %s: started by %s, committed by %s; rewrap.progress by %v %v; a's lease expired %v after the crash, b finished %v after it",
		before.id, actorOf(evs, rekey.AuditRotationStarted), actorOf(evs, rekey.AuditRotationCommitted), order, counts,
		leaseEnd.Sub(crashed).Round(time.Millisecond), finished.Round(time.Millisecond))
	if got := actorOf(evs, rekey.AuditRotationStarted); got != "replica-a" {
		t.Errorf("rotation.started by %q, want replica-a", got)
	}
	if got := actorOf(evs, rekey.AuditRotationCommitted); got != "replica-b" {
		t.Errorf("rotation.committed by %q, want replica-b", got)
	}
	h.checkFiles(files)
	h.verifyAudit()
}

// TestE2E_Replicas_PausedFenced: replica-a is stopped (SIGSTOP) in the
// middle of a re-wrap and stays stopped past its lease; replica-b takes
// the key over and finishes the rotation. Then a resumes (SIGCONT) and
// runs on: it writes nothing to the DEKs, the rotations or the audit
// trail (compared before/after: DEK rows, rotation rows with their epoch,
// the trail's seqs and actors), and the rotation stays done.
func TestE2E_Replicas_PausedFenced(t *testing.T) {
	dsn := replicaDSN(t)
	const n, ttl = 20000, 2 * time.Second
	h := newPGHome(t, dsn, pgOpts{batchSize: 200, leaseTTL: ttl, checkInterval: 500 * time.Millisecond})
	h.must("key", "create", "paused")
	h.createDEKs("paused", n)
	files := h.sealFiles("paused", "paused", fileSizes(3))
	h.makeDue("paused")

	a := h.startReplicas(nil, "replica-a")[0]
	h.waitFor(60*time.Second, "replica-a re-wrapping", func() bool {
		rs := h.rotations("paused")
		return len(rs) == 1 && rs[0].done >= 1000
	}, a)
	stoppedAt := h.stopOutsideFileLocks(a)
	stopped := h.rotations("paused")[0]
	// a may be stopped inside a transaction holding its lease row FOR
	// SHARE: b can take the key over only once the server ends that
	// session (pgstore's idle_in_transaction_session_timeout, 10s).
	inTx := h.queryInt(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`)
	t.Logf("replica-a stopped with %d of %d DEKs re-wrapped (epoch %d), %d session(s) idle in a transaction", stopped.done, stopped.total, stopped.epoch, inTx)

	b := h.startReplicas(nil, "replica-b")[0]
	h.waitFor(90*time.Second, "replica-b finished the rotation", func() bool { return h.allDone("paused") }, a, b)
	t.Logf("replica-b finished the rotation %v after replica-a was stopped", time.Since(stoppedAt).Round(time.Millisecond))
	rs := h.rotations("paused")
	if rs[0].owner != "replica-b" || rs[0].epoch <= stopped.epoch {
		t.Errorf("after the takeover: %+v, want owner replica-b with an epoch above %d", rs[0], stopped.epoch)
	}
	// b is idle now (nothing due): what a writes after it resumes shows.
	deks, rots, trail := h.dekDigest(), h.rotationRows(), h.auditTrail()
	cycles := len(logLines(a.lines.text(), "rotation cycle done"))

	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	// a's interrupted work meets the fence, then a runs at least two more
	// cycles (check_interval 500ms) on the key it lost.
	h.waitFor(30*time.Second, "replica-a ran two cycles after SIGCONT", func() bool {
		return len(logLines(a.lines.text(), "rotation cycle done")) >= cycles+2
	}, a, b)
	stopAll(t, []*replica{a, b})
	alog := a.lines.text()
	t.Logf("replica-a resumed; it logged, after SIGCONT (%v):", resumed.Format(time.RFC3339Nano))
	for _, line := range strings.Split(alog, "\n") {
		if strings.Contains(line, "fence") || strings.Contains(line, "lease") || strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, `"level":"WARN"`) {
			t.Logf("  %s", e2eTail(line, 400))
		}
	}

	if got := h.dekDigest(); got != deks {
		t.Errorf("the DEK rows changed after replica-a resumed (digest %s, was %s)", got, deks)
	}
	if got := h.rotationRows(); got != rots {
		t.Errorf("the rotation rows changed after replica-a resumed:\nbefore: %s\nafter:  %s", rots, got)
	}
	after := h.auditTrail()
	if !slices.Equal(after[:min(len(after), len(trail))], trail) {
		t.Errorf("the audit trail's seqs/actors changed after replica-a resumed:\nbefore: %v\nafter:  %v", trail, after)
	}
	for _, e := range after[len(trail):] {
		t.Errorf("audit event after replica-a resumed: %s", e)
	}
	h.checkRotatedOnce("paused", n+3)
	h.checkFiles(files)
	h.verifyAudit()
}

// stopOutsideFileLocks stops w (SIGSTOP) at a moment it holds none of
// the home's file locks, and returns when it stopped. The replicas share
// one home, so one local keyring: a replica stopped while it holds the
// keyring's lock (reserving encryption counts) or the audit anchor's
// holds it until it resumes, and every process of the machine then fails
// its keyring changes after the 10s lock timeout. That is the local
// backend's limit (a machine-local file lock; replicas on several
// machines use a KMS), not what this test is about: a replica paused
// with its PostgreSQL transaction, leases and rows. So a stop that lands
// inside a lock is undone (SIGCONT) and tried again a little later.
func (h *pgHome) stopOutsideFileLocks(w *replica) time.Time {
	h.t.Helper()
	locks := []string{filepath.Join(h.home, "keyring.lock"), filepath.Join(h.home, "audit.anchor.lock")}
	for try := 1; ; try++ {
		if err := w.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			h.t.Fatal(err)
		}
		at := time.Now()
		time.Sleep(200 * time.Millisecond) // let a statement sent before the stop finish
		held := ""
		for _, l := range locks {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			unlock, err := fileutil.Lock(ctx, l)
			cancel()
			if err != nil {
				held = l
				break
			}
			unlock()
		}
		if held == "" {
			return at
		}
		if try == 20 {
			h.t.Fatalf("%s held %s at each of 20 stops", w.id, held)
		}
		h.t.Logf("%s was stopped holding %s: resumed, stopping it again", w.id, filepath.Base(held))
		if err := w.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			h.t.Fatal(err)
		}
		time.Sleep(time.Duration(try) * 7 * time.Millisecond)
	}
}

// TestE2E_Replicas_PostgresRestart: PostgreSQL is restarted (scripts/pg
// restart: a fast shutdown, 2s down, then a start) while two replicas re-wrap a
// key. The replicas reconnect and the rotation completes, once; /readyz
// (polled every 20ms) must have been 503 meanwhile, naming the store. The test starts a PostgreSQL of its own (scripts/pg start), so
// that the restart disturbs no other test using REKEY_TEST_PG_DSN.
func TestE2E_Replicas_PostgresRestart(t *testing.T) {
	replicaDSN(t) // PostgreSQL is installed: skip or fail as the others
	dsn := startOwnPG(t)
	const n = 20000
	h := newPGHome(t, dsn, pgOpts{batchSize: 250, leaseTTL: 3 * time.Second, checkInterval: 500 * time.Millisecond})
	h.must("key", "create", "bounce")
	h.createDEKs("bounce", n)
	files := h.sealFiles("bounce", "bounce", fileSizes(3))
	h.makeDue("bounce")

	ws := h.startReplicas(nil, "replica-a", "replica-b")
	h.waitFor(60*time.Second, "a replica re-wrapping", func() bool {
		rs := h.rotations("bounce")
		return len(rs) == 1 && rs[0].done >= 1000
	}, ws...)
	mid := h.rotations("bounce")[0]

	// Poll /readyz of both replicas while the server restarts.
	stopPoll := make(chan struct{})
	var pollWG sync.WaitGroup
	var pollMu sync.Mutex
	notReady := map[string][]string{}
	for _, w := range ws {
		pollWG.Go(func() {
			for {
				select {
				case <-stopPoll:
					return
				case <-time.After(20 * time.Millisecond):
				}
				resp, err := e2eHTTP.Get(w.base + "/readyz")
				if err != nil {
					continue
				}
				var body [512]byte
				k, _ := resp.Body.Read(body[:])
				resp.Body.Close()
				if resp.StatusCode != 200 {
					pollMu.Lock()
					notReady[w.id] = append(notReady[w.id], fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body[:k]))))
					pollMu.Unlock()
				}
			}
		})
	}
	restartStart := time.Now()
	restartPG(t, 2)
	restarted := time.Since(restartStart)
	h.pool.Reset()
	h.waitFor(90*time.Second, "the rotation done after the restart", func() bool {
		var done int64
		err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM rotations WHERE key = 'bounce' AND state = 'done'`).Scan(&done)
		return err == nil && done == 1
	}, ws...)
	close(stopPoll)
	pollWG.Wait()
	took := time.Since(restartStart)
	stopAll(t, ws)

	t.Logf("restart at %d/%d DEKs (owner %s) took %v; rotation done %v after the restart began", mid.done, mid.total, mid.owner,
		restarted.Round(time.Millisecond), took.Round(time.Millisecond))
	if len(notReady) == 0 {
		t.Errorf("/readyz of neither replica was ever 503 while PostgreSQL was down for 2s")
	}
	for _, w := range ws {
		seen := notReady[w.id]
		t.Logf("%s: /readyz not ready %d times during the restart; first: %q", w.id, len(seen), firstOr(seen))
		for _, s := range seen {
			if !strings.Contains(s, "store") {
				t.Errorf("%s: /readyz %q does not name the store", w.id, s)
				break
			}
		}
		for _, line := range logLines(w.lines.text(), "rotation cycle failed") {
			t.Logf("%s logged: rotation cycle failed: %v", w.id, line["error"])
		}
	}
	h.checkRotatedOnce("bounce", n+3)
	h.checkFiles(files)
	h.verifyAudit()
}

func firstOr(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// pgScript is scripts/pg of this repository.
func pgScript(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "scripts", "pg"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ownPGDir is the directory of the server startOwnPG started.
var ownPGDir string

// startOwnPG starts a throwaway PostgreSQL with scripts/pg start and
// returns its DSN; the test's cleanup stops it (after the cleanups
// registered later, which use it).
func startOwnPG(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(pgScript(t), "start").Output()
	if err != nil {
		t.Fatalf("scripts/pg start: %v\n%s", err, exitStderr(err))
	}
	var dsn string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "REKEY_TEST_PG_DSN="); ok {
			dsn = v
		}
		if v, ok := strings.CutPrefix(line, "REKEY_PG_DIR="); ok {
			ownPGDir = v
		}
	}
	if dsn == "" || ownPGDir == "" {
		t.Fatalf("scripts/pg start printed %q: no DSN or directory", out)
	}
	dir := ownPGDir
	t.Cleanup(func() {
		if out, err := exec.Command(pgScript(t), "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("scripts/pg stop %s: %v\n%s", dir, err, out)
		}
	})
	return dsn
}

// restartPG restarts the server startOwnPG started, down for the given
// whole seconds.
func restartPG(t *testing.T, down int) {
	t.Helper()
	if out, err := exec.Command(pgScript(t), "restart", ownPGDir, strconv.Itoa(down)).CombinedOutput(); err != nil {
		t.Fatalf("scripts/pg restart: %v\n%s", err, out)
	}
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

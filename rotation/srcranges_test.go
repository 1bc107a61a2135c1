package rotation_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/source"
)

// appTable is an application's SQLite table of wrapped DEKs (integer ids,
// so that their order is not their text order), with the plaintext of
// each row and, per worker, the swaps each row took.
type appTable struct {
	db    *sql.DB
	src   *source.Source
	plain map[string][]byte

	mu      sync.Mutex
	applied map[string]int            // row id -> swaps applied, all workers
	byOwner map[string]map[string]int // owner -> row id -> swaps applied
}

// countingSource is the source as one worker sees it, counting the swaps
// that applied (the swaps sent minus those lost).
type countingSource struct {
	*source.Source
	t     *appTable
	owner string
}

func (c *countingSource) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease) ([]string, error) {
	lost, err := c.Source.SwapDEKs(ctx, swaps, fence)
	if err != nil {
		return lost, err
	}
	lostSet := map[string]bool{}
	for _, id := range lost {
		lostSet[id] = true
	}
	c.t.mu.Lock()
	defer c.t.mu.Unlock()
	if c.t.byOwner[c.owner] == nil {
		c.t.byOwner[c.owner] = map[string]int{}
	}
	for _, sw := range swaps {
		if !lostSet[sw.ID] {
			c.t.applied[sw.ID]++
			c.t.byOwner[c.owner][sw.ID]++
		}
	}
	return lost, nil
}

// newAppTable creates the table "orders" in dir with rows 1…n, each a DEK
// of key wrapped under version 1.
func newAppTable(t *testing.T, e *env, dir, key string, n int) *appTable {
	t.Helper()
	path := filepath.Join(dir, "app.db")
	db, err := sql.Open("sqlite3", path+"?_busy_timeout=5000&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(`CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT, wrapped_dek BLOB NOT NULL, key_version INTEGER)`); err != nil {
		t.Fatal(err)
	}
	ref := e.key(t, key).BackendRef
	a := &appTable{db: db, plain: map[string][]byte{}, applied: map[string]int{}, byOwner: map[string]map[string]int{}}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		pt := make([]byte, 32)
		if _, err := rand.Read(pt); err != nil {
			t.Fatal(err)
		}
		w, err := e.kms.Wrap(e.ctx, ref, 1, pt)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO orders (id, note, wrapped_dek, key_version) VALUES (?, ?, ?, 1)`, i, "order "+strconv.Itoa(i), w); err != nil {
			t.Fatal(err)
		}
		a.plain[strconv.Itoa(i)] = pt
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	a.src, err = source.Open(source.Config{Name: "orders", Driver: source.DriverSQLite, DSN: path, Table: "orders",
		IDColumn: "id", WrappedColumn: "wrapped_dek", VersionColumn: "key_version", Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.src.Close() })
	return a
}

// withSource gives an engine the table as its source, counted under the
// engine's owner (set by the engine helper before mods run).
func (a *appTable) withSource(owner string) func(*rotation.Config) {
	return func(c *rotation.Config) {
		c.Owner = owner
		c.Sources = []rotation.Source{{Name: "orders", DEKs: &countingSource{Source: a.src, t: a, owner: owner}}}
	}
}

// check verifies that every row was swapped exactly once, is on version 2
// and unwraps to its plaintext.
func (a *appTable) check(t *testing.T, e *env, key string) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.plain {
		if a.applied[id] != 1 {
			t.Fatalf("row %s took %d swaps, want exactly 1", id, a.applied[id])
		}
	}
	ref := e.key(t, key).BackendRef
	rows, err := a.db.Query(`SELECT id, wrapped_dek, key_version FROM orders`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var (
			id      int
			w       []byte
			version int
		)
		if err := rows.Scan(&id, &w, &version); err != nil {
			t.Fatal(err)
		}
		if version != 2 {
			t.Fatalf("row %d is on version %d, want 2", id, version)
		}
		pt, err := e.kms.Unwrap(e.ctx, ref, 2, w)
		if err != nil || !bytes.Equal(pt, a.plain[strconv.Itoa(id)]) {
			t.Fatalf("row %d does not unwrap to its DEK under version 2 (err %v)", id, err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(a.plain) {
		t.Fatalf("table holds %d rows, want %d", n, len(a.plain))
	}
}

// sourceRanges returns the ranges of key's only rotation that are of the
// source, and the total DEKs they re-wrapped.
func sourceRanges(t *testing.T, e *env, key string) (all []rekey.RewrapRange, src int, done int64) {
	t.Helper()
	rs := e.rotations(t, key)
	if len(rs) != 1 {
		t.Fatalf("rotations of %s = %d, want 1", key, len(rs))
	}
	all, err := e.store.(rekey.RangeSharer).ListRewrapRanges(e.ctx, rs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, rg := range all {
		if !rg.Finished {
			t.Fatalf("range %d not finished: %+v", rg.Index, rg)
		}
		if rotation.RangeSource(rg) == "orders" {
			src++
			done += rg.Done
		}
	}
	return all, src, done
}

// Two workers share one rotation over rekey's own DEKs and a source of
// 3,000 rows on SQLite: the source is split into ranges too, both
// workers re-wrap some of its rows, every row is swapped exactly once,
// and the ranges count every row.
func TestSharedRewrap_SourceRangesTwoWorkers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e := openSQLite(t, dir, newClock().Now())
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 200)
	app := newAppTable(t, e, dir, "k", 3000)
	e.makeDue(t, "k")
	batch := func(c *rotation.Config) { c.BatchSize = 50 }
	a := e.engine(t, shared(300), batch, app.withSource("worker-a"))
	b := e.engine(t, shared(300), batch, app.withSource("worker-b"))
	started, helped := make(chan struct{}), make(chan struct{})
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBatchCommit, 1, func() error {
		close(started) // A wrote its first batch of range 0
		<-helped       // and holds it while B works
		return nil
	}))
	var (
		wg   sync.WaitGroup
		aErr error
	)
	wg.Go(func() { _, aErr = a.Rotate(e.ctx, "k", rekey.ReasonManual, "") })
	<-started
	var shared int64
	for deadline := time.Now().Add(20 * time.Second); shared < 1000 && time.Now().Before(deadline); {
		n, err := b.ShareRewrap(e.ctx, "k")
		if err != nil {
			t.Errorf("ShareRewrap: %v", err)
			break
		}
		shared += n
		time.Sleep(time.Millisecond)
	}
	close(helped)
	wg.Wait()
	if aErr != nil {
		t.Fatalf("Rotate: %v", aErr)
	}
	_, src, done := sourceRanges(t, e, "k")
	if src < 2 || done != 3000 {
		t.Fatalf("source ranges = %d re-wrapping %d rows, want several re-wrapping all 3000", src, done)
	}
	app.mu.Lock()
	byA, byB := len(app.byOwner["worker-a"]), len(app.byOwner["worker-b"])
	app.mu.Unlock()
	if byB < 1000 {
		t.Fatalf("worker B swapped %d source rows (A %d): want B to share the source's ranges", byB, byA)
	}
	app.check(t, e, "k")
	checkOneRotation(t, e, "k", 200)
}

// A worker paused in a source range past its range lease, which another
// worker took meanwhile, writes nothing to the application's table when it
// wakes; the others finish the rotation, every row swapped exactly once.
func TestSharedRewrap_SourceRangeLeaseLost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e := openSQLite(t, dir, newClock().Now())
	e.createKey(t, "k", testPolicy())
	app := newAppTable(t, e, dir, "k", 1200)
	e.makeDue(t, "k")
	batch := func(c *rotation.Config) { c.BatchSize = 50 }
	a := e.engine(t, shared(200), batch, app.withSource("worker-a"))
	b := e.engine(t, shared(200), batch, app.withSource("worker-b"))
	var swapsAt int
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBackend, 2, func() error {
		// A re-wrapped its second batch (rekey holds no DEKs: a source
		// range) but has not swapped it: it pauses past every lease, and
		// B takes over the key and A's range.
		e.clock.Advance(time.Hour)
		r := e.openRotations(t, "k")[0]
		if _, err := e.store.AcquireLease(e.ctx, "k", b.Owner(), time.Minute, e.clock.Now()); err != nil {
			return err
		}
		rs, err := e.store.(rekey.RangeSharer).ListRewrapRanges(e.ctx, r.ID)
		if err != nil {
			return err
		}
		for _, rg := range rs {
			if rotation.RangeSource(rg) == "orders" && !rg.Finished && rg.Cursor != "" {
				if _, err := e.store.AcquireLease(e.ctx, rg.LeaseKey(), b.Owner(), time.Minute, e.clock.Now()); err != nil {
					return err
				}
				if err := e.store.ReleaseLease(e.ctx, mustLease(t, e, rg.LeaseKey())); err != nil {
					return err
				}
			}
		}
		app.mu.Lock()
		swapsAt = len(app.byOwner["worker-a"])
		app.mu.Unlock()
		return nil
	}))
	kr := keyReport(t, a.RunCycle(e.ctx), "k")
	if !errors.Is(kr.Err, rekey.ErrFenced) {
		t.Fatalf("paused worker report = %+v, want fenced", kr)
	}
	app.mu.Lock()
	after := len(app.byOwner["worker-a"])
	app.mu.Unlock()
	if after != swapsAt || swapsAt == 0 {
		t.Fatalf("paused worker swapped %d rows before the pause and %d after: want some, then none", swapsAt, after-swapsAt)
	}
	if err := e.store.ReleaseLease(e.ctx, mustLease(t, e, "k")); err != nil {
		t.Fatal(err)
	}
	if rep := b.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("new owner cycle = %+v", rep)
	}
	if _, src, done := sourceRanges(t, e, "k"); src < 2 || done > 1200 {
		t.Fatalf("source ranges = %d re-wrapping %d rows", src, done)
	}
	app.check(t, e, "k")
}

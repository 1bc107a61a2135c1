package pgstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/storetest"
)

// TestCountGate: retirement counts the rows of deks, not dek_counts, even
// when the counter is set wrong by hand.
func TestCountGate(t *testing.T) {
	testDSN(t)
	storetest.RunCountGate(t, func(t *testing.T) rekey.Store { return openTemp(t) },
		func(t *testing.T, s rekey.Store, key string, version int, n int64) {
			t.Helper()
			tag, err := s.(*Store).pool.Exec(t.Context(), `UPDATE dek_counts SET n = $1 WHERE key = $2 AND version = $3`, n, key, version)
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("set the counter of %s version %d: %v (%d rows)", key, version, err, tag.RowsAffected())
			}
		})
}

// TestMigration5LeanDEKs upgrades a version-4 schema with DEKs of two keys
// on several versions: dek_counts holds their counts, deks_key_version is
// gone, the rows are untouched, and the store works on.
func TestMigration5LeanDEKs(t *testing.T) {
	ctx := t.Context()
	dsn := newSchema(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	setup := []string{`CREATE TABLE rekey_schema (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`}
	for _, m := range migrations[:4] {
		setup = append(setup, m.sql, fmt.Sprintf(`INSERT INTO rekey_schema (version, name) VALUES (%d, '%s')`, m.version, m.name))
	}
	setup = append(setup,
		`INSERT INTO keys (name, backend, backend_ref, active_version, rotation_period, rotate_within, notify_within, grace, destroy_after)
			VALUES ('a', 'local', 'a', 2, 1, 0, 0, 0, 0), ('b', 'local', 'b', 1, 1, 0, 0, 0, 0)`,
		`INSERT INTO key_versions (key, version, state) VALUES ('a', 1, 'pending_retirement'), ('a', 2, 'active'), ('b', 1, 'active')`)
	want := map[string]map[int]int64{"a": {1: 3, 2: 5}, "b": {1: 2}}
	for key, vs := range want {
		for v, n := range vs {
			setup = append(setup, fmt.Sprintf(`INSERT INTO deks (id, key, version, wrapped) SELECT '%s-%d-' || g, '%s', %d, '\x0102' FROM generate_series(1, %d) g`, key, v, key, v, n))
		}
	}
	for _, q := range setup {
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%.60s: %v", q, err)
		}
	}

	s, err := Open(ctx, Config{DSN: dsn, MaxConns: 2})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	for key, vs := range want {
		got, err := s.CountDEKs(ctx, key)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(vs) {
			t.Errorf("CountDEKs(%s) after the upgrade = %v, %v; want %v", key, got, err, vs)
		}
	}
	d, err := s.GetDEK(ctx, "a-2-5")
	if err != nil || d.Key != "a" || d.Version != 2 || fmt.Sprintf("%x", d.Wrapped) != "0102" {
		t.Errorf("dek a-2-5 after the upgrade: %+v, %v", d, err)
	}
	rows, err := conn.Query(ctx, `SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'deks' ORDER BY indexname`)
	indexes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || fmt.Sprint(indexes) != "[deks_key_id deks_pkey]" {
		t.Errorf("indexes of deks after the upgrade: %v, %v; want [deks_key_id deks_pkey]", indexes, err)
	}
	// Writes after the upgrade keep the counts.
	if err := s.InsertDEKs(ctx, []rekey.DEK{{ID: rekey.NewID(), Key: "a", Version: 2, Wrapped: []byte{1}}}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.CountDEKs(ctx, "a"); err != nil || got[2] != 6 || got[1] != 3 {
		t.Errorf("CountDEKs(a) after an insert = %v, %v; want 1: 3, 2: 6", got, err)
	}
}

// swapFixture stores key "k" with version 2 created and n DEKs on version
// 1, wrapped "w0", "w1", …, and returns the lease of the worker "w".
func swapFixture(t *testing.T, s *Store, n int) (rekey.Lease, []rekey.DEK) {
	t.Helper()
	ctx := t.Context()
	now := rekey.NormalizeTime(time.Now())
	k := rekey.Key{Name: "k", Backend: "local", BackendRef: "k", ActiveVersion: 1, Policy: rekey.DefaultPolicy(), ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO key_versions (key, version, state) VALUES ('k', 2, 'created')`); err != nil {
		t.Fatal(err)
	}
	deks := make([]rekey.DEK, n)
	for i := range deks {
		deks[i] = rekey.DEK{ID: rekey.NewID(), Key: "k", Version: 1, Wrapped: fmt.Appendf(nil, "w%d", i)}
	}
	if err := s.InsertDEKs(ctx, deks); err != nil {
		t.Fatal(err)
	}
	l, err := s.AcquireLease(ctx, "k", "w", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	return l, deks
}

// waitForLockWait returns once a session of the test database waits for a
// lock (read outside any transaction of the test: a transaction sees
// pg_stat_activity as of its first read).
func waitForLockWait(t *testing.T, s *Store) {
	t.Helper()
	for i := 0; ; i++ {
		var waiting int
		if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return
		}
		if i == 500 {
			t.Fatal("no session ever waited for a lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSwapAfterConcurrentWrite: a swap whose row another transaction
// changed (same wrapped bytes) after the swap's snapshot, while the swap
// waited for its lock, still wins (the fast statement misses the tuple;
// the locked one applies it) and moves the counters from the version the
// row held.
func TestSwapAfterConcurrentWrite(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	l, deks := swapFixture(t, s, 3)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `UPDATE deks SET label = 'touched' WHERE id = $1`, deks[0].ID); err != nil {
		t.Fatal(err)
	}
	type result struct {
		lost []string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		lost, err := s.SwapDEKs(ctx, []rekey.DEKSwap{
			{ID: deks[0].ID, OldWrapped: []byte("w0"), NewWrapped: []byte("n0"), NewVersion: 2},
			{ID: deks[1].ID, OldWrapped: []byte("w1"), NewWrapped: []byte("n1"), NewVersion: 2},
		}, l)
		done <- result{lost, err}
	}()
	waitForLockWait(t, s)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || len(r.lost) != 0 {
		t.Fatalf("SwapDEKs after a concurrent write of the same bytes = %v, %v; want no loss", r.lost, r.err)
	}
	d, err := s.GetDEK(ctx, deks[0].ID)
	if err != nil || string(d.Wrapped) != "n0" || d.Version != 2 || d.Label != "touched" {
		t.Errorf("dek after the swap: %+v, %v; want n0 on version 2, label touched", d, err)
	}
	if got, err := s.CountDEKs(ctx, "k"); err != nil || fmt.Sprint(got) != fmt.Sprint(map[int]int64{1: 1, 2: 2}) {
		t.Errorf("CountDEKs(k) = %v, %v; want 1: 1, 2: 2", got, err)
	}
}

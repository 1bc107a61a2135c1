package bench

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"time"

	"github.com/rekeyhq/rekey"
)

// row is one DEK as the naive and floor phases hold it.
type row struct {
	id      string
	version int
	wrapped []byte
}

// floorTx is the rows per transaction of the store floors.
const floorTx = 1000

// measureOthers runs the naive phase and the floors after the engine's
// rotation (every DEK is then under version 2).
func (e *runEnv) measureOthers(ctx context.Context, res *Result) error {
	sys, err := e.open(ctx)
	if err != nil {
		return err
	}
	defer sys.Close()
	k, err := sys.Store.GetKey(ctx, KeyName)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	kms := sys.Backends[k.Backend]
	db, d, err := e.db()
	if err != nil {
		return fmt.Errorf("bench: open the store's database: %w", err)
	}
	defer db.Close()

	// A version for the naive and crypto phases to wrap under. The store
	// does not know it: these phases write raw rows of a throwaway table.
	to, err := kms.RotateKey(ctx, k.BackendRef)
	if err != nil {
		return fmt.Errorf("bench: new backend version: %w", err)
	}

	if err := e.settle(ctx, "deks"); err != nil {
		return err
	}
	if res.Naive, err = e.naive(ctx, db, d, kms, k.BackendRef, to); err != nil {
		return err
	}
	rows, err := loadRows(ctx, db, d)
	if err != nil {
		return err
	}
	if res.Floor.CryptoDEKsPerS, err = e.cryptoFloor(ctx, kms, k.BackendRef, to, rows); err != nil {
		return err
	}
	if e.o.Backend == BackendAWSKMS {
		if res.Floor.RawRewrapAfterPerS, err = e.rawRewrap(ctx, rows, to); err != nil {
			return err
		}
		res.Floor.RawRewrapPerS = (res.Floor.RawRewrapBeforePerS + res.Floor.RawRewrapAfterPerS) / 2
	}
	if err := e.settle(ctx, "deks"); err != nil {
		return err
	}
	if res.Floor.StoreRowsPerS, err = e.storeFloor(ctx, db, d, "deks", rows); err != nil {
		return err
	}
	if err := makeMinimal(ctx, db, d); err != nil {
		return err
	}
	if err := e.settle(ctx, "bench_minimal"); err != nil {
		return err
	}
	if res.Floor.MinimalStoreRowsPerS, err = e.storeFloor(ctx, db, d, "bench_minimal", rows); err != nil {
		return err
	}
	_, _ = db.ExecContext(ctx, "DROP TABLE bench_minimal")
	return nil
}

// naive is the article's algorithm, faithfully: every DEK read into
// memory, then one by one unwrapped, wrapped under the new version, and
// written back by an autocommit UPDATE. It runs on min(DEKs, NaiveMax).
func (e *runEnv) naive(ctx context.Context, db *sql.DB, d dialect, kms rekey.KMS, ref string, to int) (NaiveResult, error) {
	n := min(e.o.DEKs, NaiveMax)
	start := time.Now()
	q := "SELECT id, version, wrapped FROM deks WHERE key = " + d.p(1) + " ORDER BY id LIMIT " + d.p(2)
	rs, err := db.QueryContext(ctx, q, KeyName, n)
	if err != nil {
		return NaiveResult{}, fmt.Errorf("bench: naive: read the DEKs: %w", err)
	}
	var all []row
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.id, &r.version, &r.wrapped); err != nil {
			rs.Close()
			return NaiveResult{}, fmt.Errorf("bench: naive: %w", err)
		}
		all = append(all, r)
	}
	if err := rs.Err(); err != nil {
		return NaiveResult{}, fmt.Errorf("bench: naive: %w", err)
	}
	rs.Close()
	upd := "UPDATE deks SET wrapped = " + d.p(1) + ", version = " + d.p(2) + " WHERE id = " + d.p(3)
	for i, r := range all {
		if i%1000 == 0 {
			e.o.Progress("naive", i, len(all))
		}
		pt, err := kms.Unwrap(ctx, ref, r.version, r.wrapped)
		if err != nil {
			return NaiveResult{}, fmt.Errorf("bench: naive: unwrap dek %s: %w", r.id, err)
		}
		w, err := kms.Wrap(ctx, ref, to, pt)
		clear(pt)
		if err != nil {
			return NaiveResult{}, fmt.Errorf("bench: naive: wrap dek %s: %w", r.id, err)
		}
		if _, err := db.ExecContext(ctx, upd, w, to, r.id); err != nil {
			return NaiveResult{}, fmt.Errorf("bench: naive: update dek %s: %w", r.id, err)
		}
	}
	e.o.Progress("naive", len(all), len(all))
	return NaiveResult{DEKs: len(all), DEKsPerS: float64(len(all)) / time.Since(start).Seconds()}, nil
}

func loadRows(ctx context.Context, db *sql.DB, d dialect) ([]row, error) {
	rs, err := db.QueryContext(ctx, "SELECT id, version, wrapped FROM deks WHERE key = "+d.p(1)+" ORDER BY id", KeyName)
	if err != nil {
		return nil, fmt.Errorf("bench: read the DEKs: %w", err)
	}
	defer rs.Close()
	var all []row
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.id, &r.version, &r.wrapped); err != nil {
			return nil, fmt.Errorf("bench: read the DEKs: %w", err)
		}
		all = append(all, r)
	}
	return all, rs.Err()
}

// cryptoFloor unwraps and wraps every DEK in memory with the backend,
// max(GOMAXPROCS, the engine's concurrency) at a time (a remote backend
// is bound by its latency): no store.
func (e *runEnv) cryptoFloor(ctx context.Context, kms rekey.KMS, ref string, to int, rows []row) (float64, error) {
	workers := max(runtime.GOMAXPROCS(0), e.settings.Concurrency)
	return e.timedPool("crypto floor", workers, len(rows), 10_000, func(i int) error {
		pt, err := kms.Unwrap(ctx, ref, rows[i].version, rows[i].wrapped)
		if err == nil {
			_, err = kms.Wrap(ctx, ref, to, pt)
			clear(pt)
		}
		if err != nil {
			return fmt.Errorf("bench: crypto floor: dek %s: %w", rows[i].id, err)
		}
		return nil
	})
}

// makeMinimal copies the DEKs into a table of only a text primary key and
// a blob (WITHOUT ROWID in SQLite).
func makeMinimal(ctx context.Context, db *sql.DB, d dialect) error {
	ddl := "CREATE TABLE bench_minimal (id TEXT PRIMARY KEY, wrapped BLOB NOT NULL) WITHOUT ROWID"
	if d.pg {
		ddl = "CREATE TABLE bench_minimal (id text PRIMARY KEY, wrapped bytea NOT NULL)"
	}
	if _, err := db.ExecContext(ctx, ddl); err != nil {
		return fmt.Errorf("bench: minimal table: %w", err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO bench_minimal (id, wrapped) SELECT id, wrapped FROM deks WHERE key = "+d.p(1), KeyName); err != nil {
		return fmt.Errorf("bench: minimal table: %w", err)
	}
	return nil
}

// storeFloor updates every row of table (deks or bench_minimal) in
// transactions of floorTx rows, one writer, compare-and-swap on the old
// bytes as the engine does, no crypto: SQLite with a statement prepared
// per transaction, PostgreSQL with one unnest UPDATE per transaction (the
// engine's own statements). The rows' bytes in memory become the new ones.
func (e *runEnv) storeFloor(ctx context.Context, db *sql.DB, d dialect, table string, rows []row) (float64, error) {
	phase := "store floor"
	if table != "deks" {
		phase = "minimal store"
	}
	newBytes := make([][]byte, len(rows))
	for i, r := range rows {
		b := append([]byte(nil), r.wrapped...)
		b[len(b)-1] ^= 1
		newBytes[i] = b
	}
	start := time.Now()
	for lo := 0; lo < len(rows); lo += floorTx {
		hi := min(lo+floorTx, len(rows))
		e.o.Progress(phase, lo, len(rows))
		if err := floorBatch(ctx, db, d, table, rows[lo:hi], newBytes[lo:hi]); err != nil {
			return 0, fmt.Errorf("bench: %s: %w", phase, err)
		}
	}
	took := time.Since(start)
	for i := range rows {
		rows[i].wrapped = newBytes[i]
	}
	e.o.Progress(phase, len(rows), len(rows))
	return float64(len(rows)) / took.Seconds(), nil
}

func floorBatch(ctx context.Context, db *sql.DB, d dialect, table string, rows []row, nb [][]byte) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int64
	switch {
	case d.pg && table == "deks":
		ids, olds := make([]string, len(rows)), make([][]byte, len(rows))
		vers := make([]int32, len(rows))
		for i, r := range rows {
			ids[i], olds[i], vers[i] = r.id, r.wrapped, int32(r.version)
		}
		res, err := tx.ExecContext(ctx, `UPDATE deks d SET wrapped = s.new_wrapped, version = s.new_version, updated_at = $5
			FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int[]) AS s(id, old_wrapped, new_wrapped, new_version)
			WHERE d.id = s.id AND d.key = $6 AND d.wrapped = s.old_wrapped`, ids, olds, nb, vers, time.Now(), KeyName)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
	case d.pg:
		ids, olds := make([]string, len(rows)), make([][]byte, len(rows))
		for i, r := range rows {
			ids[i], olds[i] = r.id, r.wrapped
		}
		res, err := tx.ExecContext(ctx, `UPDATE bench_minimal d SET wrapped = s.new_wrapped
			FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS s(id, old_wrapped, new_wrapped)
			WHERE d.id = s.id AND d.wrapped = s.old_wrapped`, ids, olds, nb)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
	default:
		q := "UPDATE deks SET wrapped = ?, version = ?, updated_at = ? WHERE id = ? AND key = ? AND wrapped = ?"
		if table != "deks" {
			q = "UPDATE bench_minimal SET wrapped = ? WHERE id = ? AND wrapped = ?"
		}
		st, err := tx.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		defer st.Close()
		now := time.Now().UnixNano()
		for i, r := range rows {
			var res sql.Result
			if table == "deks" {
				res, err = st.ExecContext(ctx, nb[i], r.version, now, r.id, KeyName, r.wrapped)
			} else {
				res, err = st.ExecContext(ctx, nb[i], r.id, r.wrapped)
			}
			if err != nil {
				return err
			}
			m, _ := res.RowsAffected()
			n += m
		}
	}
	if n != int64(len(rows)) {
		return fmt.Errorf("updated %d rows of %d: the table changed under the bench", n, len(rows))
	}
	return tx.Commit()
}

package sqlitestore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

const dekColumns = `id, key, version, wrapped, label, created_at, updated_at`

// briefColumns are the columns of a ListDEKs with Brief (the key is the
// query's: see briefDEK).
const briefColumns = `id, version, wrapped`

func scanDEK(sc scanner) (rekey.DEK, error) {
	var d rekey.DEK
	var created, updated sql.NullInt64
	if err := sc.Scan(&d.ID, &d.Key, &d.Version, &d.Wrapped, &d.Label, &created, &updated); err != nil {
		return rekey.DEK{}, err
	}
	d.CreatedAt, d.UpdatedAt = fromMicros(created), fromMicros(updated)
	return d, nil
}

// InsertDEKs implements rekey.Store: one transaction, one prepared
// statement executed for every row. A zero CreatedAt is set to now and a
// zero UpdatedAt to CreatedAt.
func (s *Store) InsertDEKs(ctx context.Context, deks []rekey.DEK) error {
	const op = "insert deks"
	if len(deks) == 0 {
		return nil
	}
	now := s.nowTime()
	batch := make([]rekey.DEK, len(deks))
	for i := range deks {
		d, err := storecheck.PrepareNewDEK(deks[i], now)
		if err != nil {
			return s.fail(op, err)
		}
		batch[i] = d
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		// Check every DEK's version against its key's active version
		// before writing anything; batches are of one key in practice.
		type activeVersion struct {
			version int
			state   rekey.VersionState
		}
		active := map[string]activeVersion{}
		for _, d := range batch {
			av, ok := active[d.Key]
			if !ok {
				err := tx.QueryRowContext(ctx, `SELECT k.active_version, COALESCE(v.state, '') FROM keys k
					LEFT JOIN key_versions v ON v.key = k.name AND v.version = k.active_version WHERE k.name = ?`, d.Key).Scan(&av.version, &av.state)
				if errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("dek %s: key %q: %w", d.ID, d.Key, rekey.ErrKeyNotFound)
				}
				if err != nil {
					return err
				}
				active[d.Key] = av
			}
			if err := storecheck.CheckNewDEKVersion(d, av.version, av.state); err != nil {
				return err
			}
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO deks (`+dekColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		rowCtx := batchContext(ctx)
		added := map[keyVersion]int64{}
		for _, d := range batch {
			if err := ctx.Err(); err != nil {
				return err
			}
			if _, err := stmt.ExecContext(rowCtx, d.ID, d.Key, d.Version, d.Wrapped, d.Label, micros(d.CreatedAt), micros(d.UpdatedAt)); err != nil {
				if errors.Is(mapErr(err), rekey.ErrConflict) {
					return fmt.Errorf("dek %s exists: %w", d.ID, rekey.ErrConflict)
				}
				return err
			}
			added[keyVersion{d.Key, d.Version}]++
		}
		return addCounts(ctx, tx, added)
	})
}

// GetDEK implements rekey.Store.
func (s *Store) GetDEK(ctx context.Context, id string) (rekey.DEK, error) {
	d, err := scanDEK(s.r.QueryRowContext(ctx, `SELECT `+dekColumns+` FROM deks WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return rekey.DEK{}, s.fail("get dek", fmt.Errorf("dek %s: %w", id, rekey.ErrDEKNotFound))
	}
	if err != nil {
		return rekey.DEK{}, s.fail("get dek", err)
	}
	return d, nil
}

// ListDEKs implements rekey.DEKSource. It reads the DEKs of the key in id
// order from the After cursor on, filtering on the version if asked (there
// is no index on the version: see migration 0007): through the (key, id)
// index, or through the table itself when the key holds most DEKs
// (mostlyOf).
func (s *Store) ListDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	const op = "list deks"
	if err := storecheck.ValidateDEKQuery(q); err != nil {
		return nil, s.fail(op, err)
	}
	limit := storecheck.ListLimit(q.Limit)
	byID, err := s.mostlyOf(ctx, q.Key)
	if err != nil {
		return nil, s.fail(op, err)
	}
	query, args := listDEKsSQL(q, limit, byID)
	out := make([]rekey.DEK, 0, min(limit, 1024))
	if q.Brief {
		if out, err = s.listBrief(ctx, query, args, q.Key, out); err != nil {
			return nil, s.fail(op, err)
		}
		return out, nil
	}
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	for rows.Next() {
		d, err := scanDEK(rows)
		if err != nil {
			return nil, s.fail(op, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// listBrief runs a brief list (briefColumns) of key's DEKs, appending
// them to out. It reads on a reader's driver connection (conn.Raw), below
// database/sql, which copied every wrapped DEK a second time and converted
// every version by reflection: the list of the next batch shares the
// machine's cores with the re-wrap's writer.
func (s *Store) listBrief(ctx context.Context, query string, args []any, key string, out []rekey.DEK) ([]rekey.DEK, error) {
	conn, err := s.r.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	named := make([]driver.NamedValue, len(args))
	for i, a := range args {
		if n, ok := a.(int); ok {
			a = int64(n)
		}
		named[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	err = conn.Raw(func(dc any) error {
		pc, err := preparer(dc)
		if err != nil {
			return err
		}
		st, qc, err := prepareAs[driver.StmtQueryContext](ctx, pc, query)
		if err != nil {
			return err
		}
		defer st.Close()
		rows, err := qc.QueryContext(ctx, named)
		if err != nil {
			return err
		}
		defer rows.Close()
		var dest [3]driver.Value
		for {
			err := rows.Next(dest[:])
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			d, err := briefDEK(key, dest)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
	})
	return out, err
}

// briefDEK is the DEK of key in a row of briefColumns.
func briefDEK(key string, row [3]driver.Value) (rekey.DEK, error) {
	id, okID := row[0].(string)
	v, okV := row[1].(int64)
	w, okW := row[2].([]byte)
	if !okID || !okV || !okW {
		return rekey.DEK{}, fmt.Errorf("a row of deks holds %T, %T, %T for its id, version and wrapped bytes: the table was changed outside rekey", row[0], row[1], row[2])
	}
	return rekey.DEK{ID: id, Key: key, Version: int(v), Wrapped: w}, nil
}

// listDEKsSQL is ListDEKs' statement for q (validated) and its arguments:
// with byID the key's condition is written +key, which SQLite cannot
// answer from an index, so it walks the table's primary key from the
// cursor on (TestListPlans).
func listDEKsSQL(q rekey.DEKQuery, limit int, byID bool) (string, []any) {
	var sb strings.Builder
	cols, key := dekColumns, `key`
	if q.Brief {
		cols = briefColumns
	}
	if byID {
		key = `+key`
	}
	sb.WriteString(`SELECT ` + cols + ` FROM deks WHERE ` + key + ` = ?`)
	args := []any{q.Key}
	if q.Version > 0 {
		sb.WriteString(` AND version = ?`)
		args = append(args, q.Version)
	}
	if q.NotVersion > 0 {
		sb.WriteString(` AND version <> ?`)
		args = append(args, q.NotVersion)
	}
	if q.After != "" {
		sb.WriteString(` AND id > ?`)
		args = append(args, q.After)
	}
	sb.WriteString(` ORDER BY id LIMIT ?`)
	return sb.String(), append(args, limit)
}

// mostlyOf reports whether key holds at least half of the DEKs, by the
// counters of dek_counts (a counter off only costs time here). ListDEKs
// then walks the table itself in id order, filtering the key, instead of
// the index on (key, id), which costs a search of the table per row: at
// 1,000,000 DEKs of one key, 1.4 s against 2.0 s of the reader's time in
// a rotation, which shares the machine's cores with the writer. With
// several keys the index keeps each list to its own key's rows.
func (s *Store) mostlyOf(ctx context.Context, key string) (bool, error) {
	var mostly bool
	err := s.r.QueryRowContext(ctx, `SELECT coalesce(sum(n) FILTER (WHERE key = ?), 0) * 2 >= coalesce(sum(n), 0) FROM dek_counts`, key).Scan(&mostly)
	return mostly, err
}

// SwapDEKs implements rekey.DEKSource: in one transaction, the fence
// check, then one prepared UPDATE … WHERE id = ? AND key = ? AND wrapped = ?
// per swap. A swap of a DEK of another key than fence.Key loses. A
// NewVersion the key does not have gives ErrVersionNotFound and nothing is
// written.
func (s *Store) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease) ([]string, error) {
	const op = "swap deks"
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, s.fail(op, err)
	}
	now := s.nowTime()
	var lost []string
	err := s.writeOn(ctx, op, func(tx *sql.Tx, conn *sql.Conn) (err error) {
		lost, err = swapDEKs(ctx, tx, conn, swaps, fence, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// swapDEKs applies swaps in tx (on conn) as SwapDEKs documents, with now as the
// DEKs' UpdatedAt, and returns the ids of the swaps that lost. On an error
// the caller rolls tx back.
func swapDEKs(ctx context.Context, tx *sql.Tx, conn *sql.Conn, swaps []rekey.DEKSwap, fence rekey.Lease, now time.Time) ([]string, error) {
	if err := checkFence(ctx, tx, fence.Key, fence); err != nil {
		return nil, err
	}
	if len(swaps) == 0 {
		return nil, nil
	}
	if err := checkVersionsExist(ctx, tx, fence.Key, swaps); err != nil {
		return nil, err
	}
	return swapRows(ctx, tx, conn, swaps, fence.Key, now, nil)
}

// swapSQL is the compare-and-swap of one DEK, for rows moving from
// version from to version to at time at (micros): those three integers are
// written into the statement (see swapper), and the four arguments are the
// new wrapped bytes, the id, the key and the old wrapped bytes. Each
// argument costs the driver a call into SQLite per row; seven of them were
// a quarter of the statement's time.
func swapSQL(to, from int, at int64) string {
	return `UPDATE deks SET wrapped = ?, version = ` + strconv.Itoa(to) + `, updated_at = ` + strconv.FormatInt(at, 10) +
		` WHERE id = ? AND key = ? AND wrapped = ? AND version = ` + strconv.Itoa(from)
}

// findSQL reads the version of the row a swap would change.
const findSQL = `SELECT version FROM deks WHERE id = ? AND key = ? AND wrapped = ?`

// swapper holds the compare-and-swap statements of one transaction, one
// per (to, from) pair of versions met, prepared on first use. They run on
// the driver's connection itself (the transaction's, through conn.Raw):
// database/sql's work around each statement (its locks, the conversion of
// the arguments, a result object) was ~15% of a swap's time.
type swapper struct {
	conn  driver.ConnPrepareContext
	at    int64
	stmts map[[2]int]driver.StmtExecContext
	find  driver.StmtQueryContext
	open  []driver.Stmt // to close
	args  [4]driver.NamedValue
	dest  [1]driver.Value
}

func newSwapper(dc any, at int64) (*swapper, error) {
	conn, err := preparer(dc)
	if err != nil {
		return nil, err
	}
	w := &swapper{conn: conn, at: at, stmts: map[[2]int]driver.StmtExecContext{}}
	for i := range w.args {
		w.args[i].Ordinal = i + 1
	}
	return w, nil
}

func (w *swapper) close() {
	for _, st := range w.open {
		_ = st.Close()
	}
}

// prepareIn prepares query on w's connection as a statement of kind S,
// closed with w.
func prepareIn[S any](ctx context.Context, w *swapper, query string) (S, error) {
	st, s, err := prepareAs[S](ctx, w.conn, query)
	if err == nil {
		w.open = append(w.open, st)
	}
	return s, err
}

// swap runs the compare-and-swap of sw from version from and reports
// whether it changed the row.
func (w *swapper) swap(ctx context.Context, sw rekey.DEKSwap, key string, from int) (bool, error) {
	st, ok := w.stmts[[2]int{sw.NewVersion, from}]
	if !ok {
		var err error
		if st, err = prepareIn[driver.StmtExecContext](ctx, w, swapSQL(sw.NewVersion, from, w.at)); err != nil {
			return false, err
		}
		w.stmts[[2]int{sw.NewVersion, from}] = st
	}
	w.args[0].Value, w.args[1].Value, w.args[2].Value, w.args[3].Value = sw.NewWrapped, sw.ID, key, sw.OldWrapped
	res, err := st.ExecContext(ctx, w.args[:])
	w.args[0].Value, w.args[3].Value = nil, nil
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// version reads the version of the row sw would change (found false when
// no row of key holds sw.OldWrapped under sw.ID).
func (w *swapper) version(ctx context.Context, sw rekey.DEKSwap, key string) (v int, found bool, err error) {
	if w.find == nil {
		if w.find, err = prepareIn[driver.StmtQueryContext](ctx, w, findSQL); err != nil {
			return 0, false, err
		}
	}
	args := []driver.NamedValue{{Ordinal: 1, Value: sw.ID}, {Ordinal: 2, Value: key}, {Ordinal: 3, Value: sw.OldWrapped}}
	rows, err := w.find.QueryContext(ctx, args)
	if err != nil {
		return 0, false, err
	}
	defer rows.Close()
	switch err := rows.Next(w.dest[:]); {
	case errors.Is(err, io.EOF):
		return 0, false, nil
	case err != nil:
		return 0, false, err
	}
	n, ok := w.dest[0].(int64)
	if !ok {
		return 0, false, fmt.Errorf("sqlitestore: dek %s: version is %T, not an integer", sw.ID, w.dest[0])
	}
	return int(n), true, nil
}

// swapRows compare-and-swaps each of swaps in order, moves the DEKs it
// changed from their old version's count to the new one's in dek_counts,
// and returns the ids of the swaps that changed no row. A swap whose id
// inRange refuses (nil: none) is lost without a statement: the ids of a
// range are fixed, and a DEK's id never changes.
//
// The old version of a row is guessed: the swap's OldVersion when it has
// one (the engine's do), else the version of the row swapped just before
// (in a re-wrap every row of a batch leaves the same version, so the guess
// holds for all but the first). A swap that changes no row with
// the guess reads the row's version (findSQL) and, if the row still holds
// OldWrapped on another version, runs again with it. The write lock is
// held throughout (one writer), so the count moved is exactly that of the
// rows changed.
func swapRows(ctx context.Context, tx *sql.Tx, conn *sql.Conn, swaps []rekey.DEKSwap, key string, now time.Time, inRange func(id string) bool) ([]string, error) {
	moved := map[keyVersion]int64{}
	var lost []string
	err := conn.Raw(func(dc any) error {
		w, err := newSwapper(dc, rekey.NormalizeTime(now).UnixMicro())
		if err != nil {
			return err
		}
		defer w.close()
		lost, err = w.swapAll(ctx, swaps, key, inRange, moved)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := addCounts(ctx, tx, moved); err != nil {
		return nil, err
	}
	return lost, nil
}

// swapAll is swapRows' loop, on the driver's connection: it adds the DEKs
// moved to moved.
func (w *swapper) swapAll(ctx context.Context, swaps []rekey.DEKSwap, key string, inRange func(id string) bool, moved map[keyVersion]int64) ([]string, error) {
	rowCtx := batchContext(ctx)
	guess := 0
	var lost []string
	for _, sw := range swaps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if inRange != nil && !inRange(sw.ID) {
			lost = append(lost, sw.ID)
			continue
		}
		if sw.OldVersion > 0 {
			guess = sw.OldVersion
		}
		ok, err := w.swap(rowCtx, sw, key, guess)
		if err != nil {
			return nil, err
		}
		if !ok {
			v, found, err := w.version(rowCtx, sw, key)
			if err != nil {
				return nil, err
			}
			if found && v != guess {
				if ok, err = w.swap(rowCtx, sw, key, v); err != nil {
					return nil, err
				}
				if ok {
					guess = v
				}
			}
		}
		if !ok {
			lost = append(lost, sw.ID)
			continue
		}
		moved[keyVersion{key, guess}]--
		moved[keyVersion{key, sw.NewVersion}]++
	}
	return lost, nil
}

// checkVersionsExist returns ErrVersionNotFound unless every NewVersion of
// swaps is a version of key.
func checkVersionsExist(ctx context.Context, tx *sql.Tx, key string, swaps []rekey.DEKSwap) error {
	seen := map[int]bool{}
	for _, sw := range swaps {
		if seen[sw.NewVersion] {
			continue
		}
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM key_versions WHERE key = ? AND version = ?`, key, sw.NewVersion).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("dek %s: key %q version %d: %w", sw.ID, key, sw.NewVersion, rekey.ErrVersionNotFound)
		}
		if err != nil {
			return err
		}
		seen[sw.NewVersion] = true
	}
	return nil
}

// keyVersion names one counter of dek_counts.
type keyVersion struct {
	key     string
	version int
}

// addCounts adds delta to the counters of dek_counts in tx, creating those
// missing; zero deltas write nothing.
func addCounts(ctx context.Context, tx *sql.Tx, delta map[keyVersion]int64) error {
	for kv, n := range delta {
		if n == 0 {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO dek_counts (key, version, n) VALUES (?, ?, ?)
			ON CONFLICT (key, version) DO UPDATE SET n = n + excluded.n`, kv.key, kv.version, n); err != nil {
			return fmt.Errorf("count DEKs of key %q version %d: %w", kv.key, kv.version, err)
		}
	}
	return nil
}

// CountDEKs implements rekey.DEKSource from dek_counts, the counters kept
// by every write of DEKs in its own transaction: one row per version, not
// a scan of the DEKs. What must not be wrong on a counter's word (retiring
// or destroying a version) counts the rows instead: see
// ChangeVersionState.
func (s *Store) CountDEKs(ctx context.Context, key string) (map[int]int64, error) {
	const op = "count deks"
	rows, err := s.r.QueryContext(ctx, `SELECT version, n FROM dek_counts WHERE key = ? AND n > 0`, key)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	out := map[int]int64{}
	for rows.Next() {
		var v int
		var n int64
		if err := rows.Scan(&v, &n); err != nil {
			return nil, s.fail(op, err)
		}
		out[v] = n
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// countRowsSQL counts the rows of a key on a version themselves:
// CountDEKRows, and ChangeVersionState with RequireUnused.
const countRowsSQL = `SELECT count(*) FROM deks WHERE key = ? AND version = ?`

// CountDEKRows implements rekey.DEKRowCounter: the rows of key on version,
// counted (a scan of the key's deks_key_id entries), not read from
// dek_counts.
func (s *Store) CountDEKRows(ctx context.Context, key string, version int) (int64, error) {
	var n int64
	if err := s.r.QueryRowContext(ctx, countRowsSQL, key, version).Scan(&n); err != nil {
		return 0, s.fail("count dek rows", err)
	}
	return n, nil
}

var _ rekey.DEKRowCounter = (*Store)(nil)

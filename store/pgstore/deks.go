package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

const dekColumns = `id, key, version, wrapped, label, created_at, updated_at`

// briefColumns are the columns of a ListDEKs with Brief: not the key,
// which the query names.
const briefColumns = `id, version, wrapped`

func scanBrief(sc scanner, key string) (rekey.DEK, error) {
	d := rekey.DEK{Key: key}
	err := sc.Scan(&d.ID, &d.Version, &d.Wrapped)
	return d, err
}

func scanDEK(sc scanner) (rekey.DEK, error) {
	var d rekey.DEK
	var created, updated *time.Time
	if err := sc.Scan(&d.ID, &d.Key, &d.Version, &d.Wrapped, &d.Label, &created, &updated); err != nil {
		return rekey.DEK{}, err
	}
	d.CreatedAt, d.UpdatedAt = fromTS(created), fromTS(updated)
	return d, nil
}

// InsertDEKs implements rekey.Store: in one transaction, each key's row
// and active version row read FOR SHARE (a concurrent activation or
// retirement waits), then every row in one INSERT … SELECT FROM unnest(…)
// statement. A zero CreatedAt is set to now and a zero UpdatedAt to
// CreatedAt.
func (s *Store) InsertDEKs(ctx context.Context, deks []rekey.DEK) error {
	const op = "insert deks"
	if len(deks) == 0 {
		return nil
	}
	now := s.nowTime()
	n := len(deks)
	ids, keys, labels := make([]string, n), make([]string, n), make([]string, n)
	versions := make([]int32, n)
	wrapped := make([][]byte, n)
	created, updated := make([]time.Time, n), make([]time.Time, n)
	for i := range deks {
		d, err := storecheck.PrepareNewDEK(deks[i], now)
		if err != nil {
			return s.fail(op, err)
		}
		ids[i], keys[i], labels[i], versions[i], wrapped[i] = d.ID, d.Key, d.Label, int32(d.Version), d.Wrapped
		created[i], updated[i] = d.CreatedAt, d.UpdatedAt
	}
	return s.write(ctx, op, func(tx pgx.Tx) error {
		type activeVersion struct {
			version int
			state   string
		}
		active := map[string]activeVersion{}
		for i := range ids {
			av, ok := active[keys[i]]
			if !ok {
				err := tx.QueryRow(ctx, `SELECT active_version FROM keys WHERE name = $1 FOR SHARE`, keys[i]).Scan(&av.version)
				if errors.Is(err, pgx.ErrNoRows) {
					return fmt.Errorf("dek %s: key %q: %w", ids[i], keys[i], rekey.ErrKeyNotFound)
				}
				if err != nil {
					return err
				}
				// The version row too: a concurrent change of its state
				// (compromised) waits for this insert, or is seen by it.
				err = tx.QueryRow(ctx, `SELECT state FROM key_versions WHERE key = $1 AND version = $2 FOR SHARE`,
					keys[i], av.version).Scan(&av.state)
				if err != nil && !errors.Is(err, pgx.ErrNoRows) {
					return err
				}
				active[keys[i]] = av
			}
			d := rekey.DEK{ID: ids[i], Key: keys[i], Version: int(versions[i])}
			if err := storecheck.CheckNewDEKVersion(d, av.version, rekey.VersionState(av.state)); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, insertDEKsSQL, ids, keys, versions, wrapped, labels, created, updated)
		if err != nil {
			if errors.Is(mapErr(err), rekey.ErrConflict) {
				return fmt.Errorf("a dek of the batch exists (%s): %w", mapErr(err), rekey.ErrConflict)
			}
			return err
		}
		return nil
	})
}

// insertDEKsSQL inserts the rows, then adds them to the counters of
// dek_counts in the same statement, in (key, version) order (see
// migration 0005 for the lock order).
const insertDEKsSQL = `WITH ins AS (
		INSERT INTO deks (` + dekColumns + `)
		SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::text[], $6::timestamptz[], $7::timestamptz[])
		RETURNING key, version)
	INSERT INTO dek_counts (key, version, n)
		SELECT key, version, count(*) FROM ins GROUP BY key, version ORDER BY key, version
	ON CONFLICT (key, version) DO UPDATE SET n = dek_counts.n + EXCLUDED.n`

// GetDEK implements rekey.Store.
func (s *Store) GetDEK(ctx context.Context, id string) (rekey.DEK, error) {
	if s.closed.Load() {
		return rekey.DEK{}, errClosed
	}
	d, err := scanDEK(s.pool.QueryRow(ctx, `SELECT `+dekColumns+` FROM deks WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return rekey.DEK{}, s.fail("get dek", fmt.Errorf("dek %s: %w", id, rekey.ErrDEKNotFound))
	}
	if err != nil {
		return rekey.DEK{}, s.fail("get dek", err)
	}
	return d, nil
}

// ListDEKs implements rekey.DEKSource. It reads one index range, (key, id)
// or the primary key, from the After cursor on, filtering the versions.
func (s *Store) ListDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	const op = "list deks"
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := storecheck.ValidateDEKQuery(q); err != nil {
		return nil, s.fail(op, err)
	}
	query, args := listDEKsSQL(q)
	// In index order, pinned (inOrderScan): on a table not yet analyzed
	// the planner would read every DEK of the key above the cursor and
	// sort them for each batch (EXPLAIN ANALYZE with 100,000 DEKs left:
	// 24 ms against 0.3 ms; TestListDEKsPlan).
	var out []rekey.DEK
	n := storecheck.ListLimit(q.Limit)
	err := s.inOrderScan(ctx, query, args, func(rows pgx.Rows, err error) error {
		if q.Brief {
			out, err = collectBrief(rows, err, n, q.Key)
		} else {
			out, err = collectN(rows, err, n, scanDEK)
		}
		return err
	})
	if err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// listDEKsSQL is ListDEKs' statement for q (validated) and its arguments:
// one index range, (key, id), from the After cursor on, filtering the
// versions.
func listDEKsSQL(q rekey.DEKQuery) (string, []any) {
	var sb strings.Builder
	cols := dekColumns
	if q.Brief {
		cols = briefColumns
	}
	sb.WriteString(`SELECT ` + cols + ` FROM deks WHERE key = $1`)
	args := []any{q.Key}
	param := func() string { return "$" + strconv.Itoa(len(args)) }
	if q.Version > 0 {
		args = append(args, q.Version)
		sb.WriteString(` AND version = ` + param())
	}
	if q.NotVersion > 0 {
		args = append(args, q.NotVersion)
		sb.WriteString(` AND version <> ` + param())
	}
	if q.After != "" {
		args = append(args, q.After)
		sb.WriteString(` AND id > ` + param())
	}
	args = append(args, storecheck.ListLimit(q.Limit))
	sb.WriteString(` ORDER BY id LIMIT ` + param())
	return sb.String(), args
}

// SwapDEKs implements rekey.DEKSource: in one transaction, the fence
// check, then one UPDATE … FROM unnest(…) per batch (see swapDEKs). A swap
// of a DEK of another key than fence.Key loses. A NewVersion the key does
// not have gives ErrVersionNotFound and nothing is written.
func (s *Store) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease) ([]string, error) {
	const op = "swap deks"
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, s.fail(op, err)
	}
	now := s.nowTime()
	var lost []string
	err := s.write(ctx, op, func(tx pgx.Tx) (err error) {
		lost, err = swapDEKs(ctx, tx, swaps, fence, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// swapSQL is the compare-and-swap of a whole batch: the batch goes as
// arrays, joined to deks by id, and a row is updated only if it still
// holds the old wrapped bytes. The counters of dek_counts need the
// version each row that won left; a plain UPDATE … RETURNING shows only
// the new values, so each statement gets it its own way.
//
// The guessed statement, for a round whose every swap carries the version
// it was read under (rekey.DEKSwap.OldVersion: a re-wrap's swaps all do),
// is a plain UPDATE … FROM unnest that also compares the row's version
// with that hint: a row that won left exactly the version its swap named,
// so it returns nothing, and its count of rows changed tells whether every
// swap won. It also names the span of the batch, its first and last ids:
// a re-wrap's batch is a run of consecutive ids of one key, and PostgreSQL
// then reads the span once, in one index range scan, and joins it to the
// batch by hash, where a join by id descended the index once per row (a
// third of the statement's time, most of it comparing ids). Nested loops
// are off for the statement (guessedAround): over a span PostgreSQL
// underestimates, a nested loop would rescan the batch for every row of
// it. A hash join costs at most the span, which the listing that made the
// batch has just read, rows already on the target version included. A
// swap outside the span (a batch not in the column's order) is a miss.
//
// The fast statement, for a round with a swap of unknown old version,
// reads the rows to swap in the CTE o (their ctid and version as of the
// statement's snapshot) and updates exactly those tuples (ctid = o.tid, a
// TID scan, no second index lookup): if another transaction changed a row
// since the snapshot, its newest tuple has another ctid and the swap is
// not applied, so the version returned is always the one the row left. It
// returns the ids that won with the version each left.
//
// Should the guessed or the fast statement miss a swap (a concurrent
// writer changed a row it had read, or a hint was wrong), the round goes
// through the locked statement instead (see swapRound): the CTE locks the
// rows (FOR UPDATE), which reads a row changed since the snapshot again at
// its newest version, compares there, and returns that version; a swap it
// does not apply lost. In a re-wrap nothing else writes the rows, so the
// locked statement never runs.
//
// Rows are locked in id order, so that two batches sharing rows wait for
// each other rather than deadlock (storetest's CountsConcurrent
// deadlocked in 11 of 15 runs before; 0 of 55 after): the locked CTE sorts
// before it locks, o is materialized sorted, and the guessed statement
// runs only for swaps already in id order (byte order, which is the
// column's order for rekey's ids under the C, C.UTF-8 and usual UTF-8
// collations), which its hash join follows: both of its sides come in id
// order (the batch's arrays, and the span read through an index), and a
// hash join that fits in memory returns its rows in the order of the side
// it probes with. A plan that takes the rows in another order (a hash
// join that spills to disk) could still deadlock; PostgreSQL then
// cancels one of the two statements, and a cancelled guessed or fast
// statement sends its round back to its savepoint and through the locked
// statement (swapRound; a cancelled locked statement fails the
// transaction as transient, *rekey.UnreachableError, for the caller to
// repeat: see mapErr).
//
// Measured (BenchmarkSwap: 1000-row batches of 60-byte wrapped DEKs, one
// transaction each, over 20,000 DEKs of one key; PostgreSQL 15 on
// 127.0.0.1 with fsync, synchronous_commit and full_page_writes off; 2
// cores shared with other work, so the spread is wide): unnest arrays
// 30,000-45,000 rows/s, pgx.Batch pipelining (one UPDATE per row, one round
// trip) 15,500-20,600 rows/s, COPY into a temp table + UPDATE … FROM
// 8,000-11,700 rows/s (the temp table costs catalog work in every
// transaction). unnest is the fastest and the simplest: one statement, no
// temp table. On a quiet machine (-benchtime 100x, two runs each) the
// guessed statement swaps 169,600-175,600 rows/s (153,600-156,100 while it
// still returned the ids; 251,300-272,200 with the span, against
// 165,500-166,500 for the plain UPDATE in the same run), the fast one
// 112,000-114,100, the locked one 89,700-91,600, and a plain UPDATE with no counters and no savepoint
// 175,700-186,000: the CTE's sort, materialization and second lookup of
// every row are gone.
var swapSQL = newSwapStatements(`
		WHERE d.key = $6 AND d.wrapped = s.old_wrapped`, 0)

// swapStatements are the statements of a compare-and-swap (swapSQL): $1-$4
// the batch, $5 the time, $6 the key, the range's bounds after them in
// rangeSwapSQL, and the guessed statement's old versions last.
type swapStatements struct{ guessed, fast, locked string }

// newSwapStatements returns the statements of a compare-and-swap whose
// rows to swap are those of s JOIN deks d meeting where, which uses
// extras parameters after $6. Each takes the rows in id order (see
// swapSQL).
func newSwapStatements(where string, extras int) swapStatements {
	const s = `WITH s AS (
		SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int[]) AS s(id, old_wrapped, new_wrapped, new_version)),
	o AS `
	const o = `(
		SELECT d.ctid AS tid, d.id, d.version AS old_version, s.new_wrapped, s.new_version FROM s JOIN deks d ON d.id = s.id`
	const set = `
	UPDATE deks d SET wrapped = o.new_wrapped, version = o.new_version, updated_at = $5 FROM o`
	const returning = `
	RETURNING d.id, o.old_version`
	param := func(i int) string { return "$" + strconv.Itoa(i+extras) }
	return swapStatements{
		guessed: `UPDATE deks d SET wrapped = s.new_wrapped, version = s.new_version, updated_at = $5
	FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int[], ` + param(7) + `::int[]) AS s(id, old_wrapped, new_wrapped, new_version, old_version)` +
			where + ` AND d.id >= ` + param(8) + ` AND d.id <= ` + param(9) + ` AND d.id = s.id AND d.version = s.old_version`,
		fast:   s + `MATERIALIZED ` + o + where + ` ORDER BY d.id)` + set + ` WHERE d.ctid = o.tid` + returning,
		locked: s + o + where + ` ORDER BY d.id FOR UPDATE OF d)` + set + ` WHERE d.id = o.id` + returning,
	}
}

// swapDEKs applies swaps in tx as SwapDEKs documents, with now as the
// DEKs' UpdatedAt, and returns the ids of the swaps that lost. A batch
// that names an id twice is applied in rounds without repeats, in order,
// so that the second swap of a DEK compares with what the first wrote (as
// one UPDATE per row would). On an error the caller rolls tx back.
func swapDEKs(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, fence rekey.Lease, now time.Time) ([]string, error) {
	if err := checkFence(ctx, tx, fence.Key, fence); err != nil {
		return nil, err
	}
	if len(swaps) == 0 {
		return nil, nil
	}
	if err := checkVersionsExist(ctx, tx, fence.Key, swaps); err != nil {
		return nil, err
	}
	return swapRounds(ctx, tx, swapSQL, swaps, fence.Key, now)
}

// swapRounds runs the statements of query (swapSQL, or rangeSwapSQL with
// the range's bounds as extra) for swaps in rounds without a repeated id, then moves the
// counters of dek_counts by the swaps that won, once, after every row (the
// lock order of migration 0005). It returns the ids that lost.
func swapRounds(ctx context.Context, tx pgx.Tx, query swapStatements, swaps []rekey.DEKSwap, key string, now time.Time, extra ...any) ([]string, error) {
	lost, delta, err := swapRoundsDelta(ctx, tx, query, swaps, key, now, extra...)
	if err != nil {
		return nil, err
	}
	if err := addCounts(ctx, tx, key, delta); err != nil {
		return nil, err
	}
	return lost, nil
}

// swapRoundsDelta is swapRounds without the counters' write: it returns
// the change the swaps that won make to them, for the caller to write
// (queueCounts) before any later lock of the package's order.
func swapRoundsDelta(ctx context.Context, tx pgx.Tx, query swapStatements, swaps []rekey.DEKSwap, key string, now time.Time, extra ...any) ([]string, countDelta, error) {
	var lost []string
	delta := countDelta{}
	for rest := swaps; len(rest) > 0; {
		round, next := splitRepeats(rest)
		l, err := swapRound(ctx, tx, query, round, key, now, delta, extra...)
		if err != nil {
			return nil, nil, err
		}
		lost = append(lost, l...)
		rest = next
	}
	return lost, delta, nil
}

// countDelta is a change of the DEK counters of one key, per version.
type countDelta map[int]int64

// addCounts adds delta to key's counters in dek_counts, creating those
// missing, in version order; versions whose change is 0 are left alone.
func addCounts(ctx context.Context, tx pgx.Tx, key string, delta countDelta) error {
	b := &pgx.Batch{}
	queueCounts(b, key, delta)
	if b.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, b).Close()
}

// queueCounts queues addCounts' statement on b (nothing when no counter
// changes).
func queueCounts(b *pgx.Batch, key string, delta countDelta) {
	versions := make([]int32, 0, len(delta))
	for v, n := range delta {
		if n != 0 {
			versions = append(versions, int32(v))
		}
	}
	if len(versions) == 0 {
		return
	}
	slices.Sort(versions)
	ns := make([]int64, len(versions))
	for i, v := range versions {
		ns[i] = delta[int(v)]
	}
	b.Queue(`INSERT INTO dek_counts (key, version, n)
		SELECT $1, v, n FROM unnest($2::int[], $3::bigint[]) AS c(v, n)
		ON CONFLICT (key, version) DO UPDATE SET n = dek_counts.n + EXCLUDED.n`, key, versions, ns)
}

// splitRepeats returns the longest prefix of swaps without a repeated id,
// and the rest.
func splitRepeats(swaps []rekey.DEKSwap) (round, rest []rekey.DEKSwap) {
	seen := make(map[string]bool, len(swaps))
	for i, sw := range swaps {
		if seen[sw.ID] {
			return swaps[:i], swaps[i:]
		}
		seen[sw.ID] = true
	}
	return swaps, nil
}

// swapRound runs the statements of query (swapSQL, or rangeSwapSQL with
// the range's bounds as extra) for swaps (no id twice), adds the versions
// the winners left and took to delta, and returns the ids that lost, in
// the order of swaps.
//
// The guessed statement (every swap has its OldVersion, and the swaps are
// in id order, as a re-wrap lists them) or else the fast one runs behind
// a savepoint, sent with it in one round trip. Should it not apply every
// swap (a concurrent writer changed a row it had read, or
// a hint was wrong), or be cancelled as one side of a deadlock, the round
// goes back to the savepoint, which releases the rows it locked, and the
// locked statement runs for the whole round, locking the rows in id
// order. Going back only for the rows the first statement missed would
// lock them after rows of higher ids, and two such transactions could
// deadlock.
func swapRound(ctx context.Context, tx pgx.Tx, query swapStatements, swaps []rekey.DEKSwap, key string, now time.Time, delta countDelta, extra ...any) ([]string, error) {
	guessed := slices.IsSortedFunc(swaps, byID) &&
		!slices.ContainsFunc(swaps, func(sw rekey.DEKSwap) bool { return sw.OldVersion <= 0 })
	fast := countDelta{}
	var all bool
	var err error
	if guessed {
		// Every row that won left its swap's OldVersion: only whether
		// they all won matters.
		if all, err = swapGuessed(ctx, tx, query.guessed, swaps, key, now, extra); all {
			for _, sw := range swaps {
				fast[sw.OldVersion]--
				fast[sw.NewVersion]++
			}
		}
	} else {
		b := &pgx.Batch{}
		b.Queue(`SAVEPOINT swap_round`)
		b.Queue(query.fast, swapArgs(swaps, key, now, extra)...)
		br := tx.SendBatch(ctx, b)
		all, err = func() (bool, error) {
			if _, err := br.Exec(); err != nil {
				return false, err
			}
			rows, err := br.Query()
			won, err := winners(rows, err, swaps, fast)
			return len(won) == len(swaps), err
		}()
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}
	switch {
	case err == nil && all:
		delta.add(fast)
		return nil, nil
	case err != nil && !isDeadlock(err):
		return nil, err
	}
	if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT swap_round`); err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, query.locked, swapArgs(swaps, key, now, extra)...)
	won, err := winners(rows, err, swaps, delta)
	if err != nil {
		return nil, err
	}
	var lost []string
	for _, sw := range swaps {
		if !won[sw.ID] {
			lost = append(lost, sw.ID)
		}
	}
	return lost, nil
}

func byID(a, b rekey.DEKSwap) int { return strings.Compare(a.ID, b.ID) }

// add adds other to d.
func (d countDelta) add(other countDelta) {
	for v, n := range other {
		d[v] += n
	}
}

// swapArgs are the arguments of a swapStatements statement for swaps,
// but the guessed statement's old versions.
func swapArgs(swaps []rekey.DEKSwap, key string, now time.Time, extra []any) []any {
	n := len(swaps)
	ids := make([]string, n)
	olds, news := make([][]byte, n), make([][]byte, n)
	versions := make([]int32, n)
	for i, sw := range swaps {
		ids[i], olds[i], news[i], versions[i] = sw.ID, sw.OldWrapped, sw.NewWrapped, int32(sw.NewVersion)
		if olds[i] == nil {
			olds[i] = []byte{} // NULL would never compare equal
		}
	}
	return append([]any{ids, olds, news, versions, now, key}, extra...)
}

// winners reads the ids that won and the versions they left from the
// fast or the locked statement, adds the versions left and taken to
// delta, and returns the ids that won.
func winners(rows pgx.Rows, err error, swaps []rekey.DEKSwap, delta countDelta) (map[string]bool, error) {
	type winner struct {
		id         string
		oldVersion int
	}
	won, err := collect(rows, err, func(sc scanner) (winner, error) {
		var w winner
		return w, sc.Scan(&w.id, &w.oldVersion)
	})
	if err != nil {
		return nil, err
	}
	applied := make(map[string]bool, len(won))
	for _, w := range won {
		applied[w.id] = true
		delta[w.oldVersion]--
	}
	for _, sw := range swaps {
		if applied[sw.ID] {
			delta[sw.NewVersion]++
		}
	}
	return applied, nil
}

// checkVersionsExist returns ErrVersionNotFound unless every NewVersion of
// swaps is a version of key; it reads the version rows FOR SHARE, so a
// retirement counting the DEKs of a version waits for the swap.
func checkVersionsExist(ctx context.Context, tx pgx.Tx, key string, swaps []rekey.DEKSwap) error {
	seen := map[int]bool{}
	for _, sw := range swaps {
		if seen[sw.NewVersion] {
			continue
		}
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM key_versions WHERE key = $1 AND version = $2 FOR SHARE`, key, sw.NewVersion).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("dek %s: key %q version %d: %w", sw.ID, key, sw.NewVersion, rekey.ErrVersionNotFound)
		}
		if err != nil {
			return err
		}
		seen[sw.NewVersion] = true
	}
	return nil
}

// CountDEKs implements rekey.DEKSource from dek_counts, the counters kept
// by every write of DEKs in its own transaction (one row per version, not
// a count of the rows: see migration 0005); versions whose counter is 0
// or less are left out. Retirement never relies on it
// (ChangeVersionState counts the rows).
func (s *Store) CountDEKs(ctx context.Context, key string) (map[int]int64, error) {
	const op = "count deks"
	if s.closed.Load() {
		return nil, errClosed
	}
	type vc struct {
		v int
		n int64
	}
	rows, err := s.pool.Query(ctx, `SELECT version, n FROM dek_counts WHERE key = $1 AND n > 0`, key)
	counts, err := collect(rows, err, func(sc scanner) (vc, error) {
		var c vc
		return c, sc.Scan(&c.v, &c.n)
	})
	if err != nil {
		return nil, s.fail(op, err)
	}
	out := make(map[int]int64, len(counts))
	for _, c := range counts {
		out[c.v] = c.n
	}
	return out, nil
}

// countRowsSQL counts the rows of a key ($1) on a version ($2) themselves:
// CountDEKRows, and ChangeVersionState with RequireUnused.
const countRowsSQL = `SELECT count(*) FROM deks WHERE key = $1 AND version = $2`

// CountDEKRows implements rekey.DEKRowCounter: the rows of key on version,
// counted (a scan of the key's deks_key_id entries), not read from
// dek_counts.
func (s *Store) CountDEKRows(ctx context.Context, key string, version int) (int64, error) {
	if s.closed.Load() {
		return 0, errClosed
	}
	var n int64
	if err := s.pool.QueryRow(ctx, countRowsSQL, key, version).Scan(&n); err != nil {
		return 0, s.fail("count dek rows", err)
	}
	return n, nil
}

var _ rekey.DEKRowCounter = (*Store)(nil)

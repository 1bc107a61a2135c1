package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

var _ rekey.RangeSharer = (*Store)(nil)

// boundsSQL is DEKBounds in one statement: a keyset walk done by the
// server, each step skipping every-1 DEKs ($3) from the previous bound in
// the (key, id) index and taking the next.
//
// Measured (go test -run '^$' -bench DEKBounds -benchtime 10x -count 3
// ./store/pgstore/; BenchmarkDEKBounds: 100,000 DEKs of one key plus 10,000 on
// notVersion; PostgreSQL 15 on 127.0.0.1; 2 cores shared with other work,
// load average about 15, so the spread is wide; ms per call):
//
//	                       every 10,000   every 1,000
//	recursive (boundsSQL)  53-80         33-105
//	window                 191-264       185-252
//	walk (from Go)         57-80         72-107
//
// The window query (row_number() OVER (ORDER BY id), kept where rn %
// every = 0) numbers every row, which costs more than the scan itself;
// the walk from Go (boundsWalkSQL, OFFSET every-1 LIMIT 1 per bound) pays
// a round trip per bound and reads each bound in its own snapshot. The
// recursive query does the walk's work in one statement and one snapshot.
const boundsSQL = `WITH RECURSIVE b(id) AS (
		(SELECT id FROM deks WHERE key = $1 AND version <> $2 ORDER BY id OFFSET $3 LIMIT 1)
		UNION ALL
		SELECT (SELECT d.id FROM deks d WHERE d.key = $1 AND d.version <> $2 AND d.id > b.id ORDER BY d.id OFFSET $3 LIMIT 1)
		FROM b WHERE b.id IS NOT NULL
	) SELECT id FROM b WHERE id IS NOT NULL`

// boundsWindowSQL and boundsWalkSQL are the other ways to compute
// DEKBounds, kept for the benchmark: one window query; one query per
// bound.
const (
	boundsWindowSQL = `SELECT id FROM (
		SELECT id, row_number() OVER (ORDER BY id) AS rn FROM deks WHERE key = $1 AND version <> $2
	) n WHERE rn % $3 = 0 ORDER BY id`
	boundsWalkSQL = `SELECT id FROM deks WHERE key = $1 AND version <> $2 AND id > $3 ORDER BY id OFFSET $4 LIMIT 1`
)

// DEKBounds implements rekey.RangeSharer with boundsSQL.
func (s *Store) DEKBounds(ctx context.Context, key string, notVersion int, every int) ([]string, error) {
	const op = "dek bounds"
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := storecheck.ValidateEvery(key, every); err != nil {
		return nil, s.fail(op, err)
	}
	var out []string
	err := s.inOrderScan(ctx, boundsSQL, []any{key, notVersion, every - 1}, func(rows pgx.Rows, err error) error {
		out, err = collect(rows, err, scanID)
		return err
	})
	if err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// inOrderScan runs query in a read-only transaction whose planner walks the
// (key, id) index in order instead of collecting the rows in a bitmap and
// sorting them (enable_bitmapscan and enable_sort off, SET LOCAL: for this
// transaction only).
//
// boundsSQL needs it. Without statistics on deks (a table just filled,
// before autovacuum's ANALYZE) the planner expects a few hundred rows per
// key and plans each step of the walk as a bitmap scan of every DEK above
// the previous bound plus a sort, so the walk reads the table once per
// bound: at 1,000,000 DEKs (64 bounds) 11.0 s in EXPLAIN ANALYZE, and 5 s
// to 55 s inside rekey bench, against 0.65 s with the plan pinned (0.32 s
// after ANALYZE, when the planner chooses the index scan by itself).
func (s *Store) inOrderScan(ctx context.Context, query string, args []any, read func(rows pgx.Rows, err error) error) error {
	// One round trip: the transaction, its settings, the query and the
	// end of the transaction go in one pipelined batch. Should the query
	// fail, COMMIT ends the aborted transaction as a ROLLBACK.
	b := &pgx.Batch{}
	b.Queue(`BEGIN READ ONLY`)
	b.Queue(`SET LOCAL enable_bitmapscan = off`)
	b.Queue(`SET LOCAL enable_sort = off`)
	b.Queue(query, args...)
	b.Queue(`COMMIT`)
	br := s.pool.SendBatch(ctx, b)
	err := func() error {
		for range 3 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err := read(rows, err); err != nil {
			return err
		}
		_, err = br.Exec()
		return err
	}()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// dekBoundsWindow is DEKBounds with boundsWindowSQL (for the benchmark).
func (s *Store) dekBoundsWindow(ctx context.Context, key string, notVersion int, every int) ([]string, error) {
	rows, err := s.pool.Query(ctx, boundsWindowSQL, key, notVersion, every)
	return collect(rows, err, scanID)
}

// dekBoundsWalk is DEKBounds with boundsWalkSQL (for the benchmark).
func (s *Store) dekBoundsWalk(ctx context.Context, key string, notVersion int, every int) ([]string, error) {
	var out []string
	after := ""
	for {
		var id string
		err := s.pool.QueryRow(ctx, boundsWalkSQL, key, notVersion, after, every-1).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return out, nil
		}
		if err != nil {
			return nil, s.fail("dek bounds", err)
		}
		out = append(out, id)
		after = id
	}
}

func scanID(sc scanner) (string, error) {
	var id string
	return id, sc.Scan(&id)
}

// lockRotation reads the key and state of rotation id in tx FOR UPDATE
// (the first lock of the package's lock order), or ErrRotationNotFound.
func lockRotation(ctx context.Context, tx pgx.Tx, id string) (key string, state rekey.RotationState, err error) {
	var st string
	err = tx.QueryRow(ctx, `SELECT key, state FROM rotations WHERE id = $1 FOR UPDATE`, id).Scan(&key, &st)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", fmt.Errorf("rotation %s: %w", id, rekey.ErrRotationNotFound)
	}
	return key, rekey.RotationState(st), err
}

// SplitRewrap implements rekey.RangeSharer: in one transaction, the
// rotation locked FOR UPDATE (so two splits of one rotation serialise),
// the fence on the rotation's key, the state, then every range in one
// INSERT … SELECT FROM unnest(…) and the events.
func (s *Store) SplitRewrap(ctx context.Context, rotationID string, bounds []string, fence rekey.Lease, events ...rekey.AuditEvent) error {
	const op = "split rewrap"
	if err := storecheck.ValidateBounds(rotationID, bounds); err != nil {
		return s.fail(op, err)
	}
	evs, err := storecheck.PrepareEvents(events, s.nowTime())
	if err != nil {
		return s.fail(op, err)
	}
	lo, hi := storecheck.RangeBounds(bounds)
	return s.write(ctx, op, func(tx pgx.Tx) error {
		key, state, err := lockRotation(ctx, tx, rotationID)
		if err != nil {
			return err
		}
		if err := checkFence(ctx, tx, key, fence); err != nil {
			return err
		}
		if state != rekey.RotationRewrapping {
			return fmt.Errorf("split of rotation %s of key %q: it is %s, not rewrapping: %w", rotationID, key, state, rekey.ErrStale)
		}
		var split bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rewrap_ranges WHERE rotation_id = $1)`, rotationID).Scan(&split); err != nil {
			return err
		}
		if split {
			return fmt.Errorf("split of rotation %s of key %q: it was split already (list its ranges): %w", rotationID, key, rekey.ErrConflict)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO rewrap_ranges (rotation_id, idx, key, lo, hi)
			SELECT $1, u.i - 1, $2, u.lo, u.hi FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS u(lo, hi, i)`,
			rotationID, key, lo, hi); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}

const rangeColumns = `rotation_id, key, idx, lo, hi, cursor, deks_done, deks_failed, finished`

func scanRange(sc scanner) (rekey.RewrapRange, error) {
	var r rekey.RewrapRange
	err := sc.Scan(&r.RotationID, &r.Key, &r.Index, &r.From, &r.To, &r.Cursor, &r.Done, &r.Failed, &r.Finished)
	return r, err
}

// ListRewrapRanges implements rekey.RangeSharer.
func (s *Store) ListRewrapRanges(ctx context.Context, rotationID string) ([]rekey.RewrapRange, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	rows, err := s.pool.Query(ctx, `SELECT `+rangeColumns+` FROM rewrap_ranges WHERE rotation_id = $1 ORDER BY idx`, rotationID)
	out, err := collect(rows, err, scanRange)
	if err != nil {
		return nil, s.fail("list rewrap ranges", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// rangeSwapSQL is swapSQL restricted to the ids of one range, (lo, hi]
// ($7, $8; an empty hi is no upper bound).
var rangeSwapSQL = newSwapStatements(`
		WHERE d.key = $6 AND d.wrapped = s.old_wrapped AND d.id > $7 AND ($8 = '' OR d.id <= $8)`, 2)

// CommitRangeBatch implements rekey.RangeSharer, in one transaction and
// in the package's lock order: the rotation FOR KEY SHARE
// (ErrRotationNotFound), the range's lease FOR SHARE (ErrFenced), the
// rotation's state and the range row FOR UPDATE (ErrStale), the versions
// the swaps name FOR SHARE (ErrVersionNotFound), the swaps (rangeSwapSQL,
// in rounds as SwapDEKs), the counters of the key, of the range and of the
// rotation as increments in SQL, and the events last.
//
// FOR KEY SHARE lets batches of different ranges of one rotation (several
// replicas, or one engine's range workers: rekey.ConcurrentWriter) run
// their swaps at the same time: it conflicts with AdvanceRotation's FOR
// UPDATE, so a state change waits for the batches in flight (and a batch
// that comes after it waits for it), but not with another batch's KEY
// SHARE, nor with the UPDATE of the rotation's counters (FOR NO KEY
// UPDATE: no key column changes). The batches meet only at their end: the
// key's counters, the rotation's row and the chain head, taken in that
// order by all of them. With the rotation FOR UPDATE from the start, two
// range workers re-wrapped no faster than one (1,000,000 DEKs: 59,000
// DEKs/s; 86,000-88,000 with KEY SHARE, 2 cores shared with the server).
func (s *Store) CommitRangeBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, cp rekey.RangeCheckpoint) ([]string, error) {
	const op = "commit range batch"
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, s.fail(op, err)
	}
	if err := storecheck.ValidateRangeCheckpoint(cp); err != nil {
		return nil, s.fail(op, err)
	}
	now := s.nowTime()
	evs, err := storecheck.PrepareEvents(cp.Events, now)
	if err != nil {
		return nil, s.fail(op, err)
	}
	var lost []string
	err = s.write(ctx, op, func(tx pgx.Tx) error {
		key, lo, hi, err := checkRangeBatch(ctx, tx, swaps, fence, cp)
		if err != nil {
			return err
		}
		var delta countDelta
		if len(swaps) > 0 {
			if lost, delta, err = swapRoundsDelta(ctx, tx, rangeSwapSQL, swaps, key, now, lo, hi); err != nil {
				return err
			}
		}
		applied := len(swaps) - len(lost)
		done, failed := cp.Done+int64(applied), int64(len(cp.FailedIDs))
		// The writes after the swaps and the chain head's reads, in one
		// round trip, in the package's lock order (counters, the range
		// locked already, the rotation's row, then the chain head).
		b := &pgx.Batch{}
		queueCounts(b, key, delta)
		b.Queue(`UPDATE rewrap_ranges SET cursor = $3, deks_done = deks_done + $4, deks_failed = deks_failed + $5,
			finished = $6 WHERE rotation_id = $1 AND idx = $2`,
			cp.RotationID, cp.Index, cp.Cursor, done, failed, cp.Finished)
		// failed_deks keeps the first MaxFailedDEKs ids: the new ones
		// appended, the whole cut to the limit, in the statement.
		b.Queue(`UPDATE rotations SET deks_done = deks_done + $2, deks_failed = deks_failed + $3,
			failed_deks = CASE WHEN COALESCE(cardinality($4::text[]), 0) = 0 THEN failed_deks
				ELSE (COALESCE(failed_deks, '{}'::text[]) || $4::text[])[1:$5] END,
			updated_at = $6 WHERE id = $1`,
			cp.RotationID, done, failed, cp.FailedIDs, storecheck.MaxFailedDEKs, now)
		writes := b.Len()
		evs := storecheck.AddEventDEKs(evs, applied)
		if len(evs) > 0 {
			queueHead(b)
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		for range writes {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		if len(evs) == 0 {
			return br.Close()
		}
		h, err := readHead(br)
		if err != nil {
			return err
		}
		if err := br.Close(); err != nil {
			return err
		}
		b = &pgx.Batch{}
		queueEvents(b, evs, h)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// checkRangeBatch makes the checks of CommitRangeBatch in tx, in one round
// trip and the package's lock order: the rotation FOR KEY SHARE
// (ErrRotationNotFound), the fence on the range's lease, held FOR SHARE,
// and its expiry (ErrFenced), the rotation's state and the range, FOR
// UPDATE (ErrStale), and the versions the swaps name, FOR SHARE
// (ErrVersionNotFound). It returns the rotation's key and the range's
// bounds.
func checkRangeBatch(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, fence rekey.Lease, cp rekey.RangeCheckpoint) (key, lo, hi string, err error) {
	lk := rekey.RangeLeaseKey(cp.RotationID, cp.Index)
	var versions []int32
	for _, sw := range swaps {
		if !slices.Contains(versions, int32(sw.NewVersion)) {
			versions = append(versions, int32(sw.NewVersion))
		}
	}
	slices.Sort(versions)
	b := &pgx.Batch{}
	b.Queue(`SELECT key, state FROM rotations WHERE id = $1 FOR KEY SHARE`, cp.RotationID)
	b.Queue(`SELECT owner, epoch, released, expires_at FROM leases WHERE key = $1 FOR SHARE`, lk)
	b.Queue(`SELECT lo, hi, finished FROM rewrap_ranges WHERE rotation_id = $1 AND idx = $2 FOR UPDATE`, cp.RotationID, cp.Index)
	if len(versions) > 0 {
		b.Queue(`SELECT version FROM key_versions WHERE key = (SELECT key FROM rotations WHERE id = $1) AND version = ANY($2)
			ORDER BY version FOR SHARE`, cp.RotationID, versions)
	}
	br := tx.SendBatch(ctx, b)
	defer br.Close()
	var state string
	err = br.QueryRow().Scan(&key, &state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", "", fmt.Errorf("rotation %s: %w", cp.RotationID, rekey.ErrRotationNotFound)
	}
	if err != nil {
		return "", "", "", err
	}
	var owner string
	var epoch int64
	var released bool
	var expires time.Time
	err = br.QueryRow().Scan(&owner, &epoch, &released, &expires)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", "", "", err
	}
	if fence.Key != lk || err != nil || released || owner != fence.Owner || epoch != fence.Epoch {
		return "", "", "", fmt.Errorf("key %q owner %s epoch %d: %w", lk, fence.Owner, fence.Epoch, rekey.ErrFenced)
	}
	// A range lease fences by expiry too (see rekey.RangeCheckpoint.Now).
	if !expires.After(cp.Now) {
		return "", "", "", fmt.Errorf("range lease %q owner %s epoch %d expired at %s: %w", lk, fence.Owner, fence.Epoch,
			expires.UTC().Format(time.RFC3339), rekey.ErrFenced)
	}
	if rekey.RotationState(state) != rekey.RotationRewrapping {
		return "", "", "", fmt.Errorf("rotation %s of key %q is %s, not rewrapping: %w", cp.RotationID, key, state, rekey.ErrStale)
	}
	var finished bool
	err = br.QueryRow().Scan(&lo, &hi, &finished)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", "", fmt.Errorf("rotation %s of key %q has no range %d (was it split?): %w", cp.RotationID, key, cp.Index, rekey.ErrStale)
	}
	if err != nil {
		return "", "", "", err
	}
	if finished {
		return "", "", "", fmt.Errorf("range %d of rotation %s of key %q is finished: %w", cp.Index, cp.RotationID, key, rekey.ErrStale)
	}
	if len(versions) > 0 {
		rows, err := br.Query()
		have, err := collect(rows, err, func(sc scanner) (int32, error) {
			var v int32
			return v, sc.Scan(&v)
		})
		if err != nil {
			return "", "", "", err
		}
		for _, sw := range swaps {
			if !slices.Contains(have, int32(sw.NewVersion)) {
				return "", "", "", fmt.Errorf("dek %s: key %q version %d: %w", sw.ID, key, sw.NewVersion, rekey.ErrVersionNotFound)
			}
		}
	}
	return key, lo, hi, br.Close()
}

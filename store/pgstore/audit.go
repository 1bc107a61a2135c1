package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

const auditColumns = `seq, time, type, key, from_version, to_version, rotation_id, deks, status,
	error, actor, reason, backend_request_id, prev_hash, hash`

func scanEvent(sc scanner) (rekey.AuditEvent, error) {
	var e rekey.AuditEvent
	var at *time.Time
	var typ string
	err := sc.Scan(&e.Seq, &at, &typ, &e.Key, &e.FromVersion, &e.ToVersion, &e.RotationID, &e.DEKs, &e.Status,
		&e.Error, &e.Actor, &e.Reason, &e.BackendRequestID, &e.PrevHash, &e.Hash)
	if err != nil {
		return rekey.AuditEvent{}, err
	}
	e.Type = rekey.AuditType(typ)
	e.Time = fromTS(at)
	return e, nil
}

// appendEvents chains evs after the chain head and inserts them, in the
// caller's transaction, in two round trips (queueHead, then queueEvents).
// The head row is locked FOR UPDATE until the transaction ends, so
// appenders in any number of processes serialise: seqs have no gap, commit
// in seq order, and each event links to the one before. The caller takes
// this lock last.
func appendEvents(ctx context.Context, tx pgx.Tx, evs []rekey.AuditEvent) error {
	if len(evs) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	queueHead(b)
	br := tx.SendBatch(ctx, b)
	h, err := readHead(br)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	b = &pgx.Batch{}
	queueEvents(b, evs, h)
	return tx.SendBatch(ctx, b).Close()
}

// chainHead is the head of the trail new events follow: its seq and hash
// (the genesis hash for an empty trail), and its event's time (zero for
// an empty trail).
type chainHead struct {
	seq  int64
	hash string
	prev time.Time
}

// queueHead queues the two reads of the chain head that readHead reads:
// the head row, locked FOR UPDATE, then the time of its event. Two
// statements, not a join: the second takes its snapshot once the lock is
// held, so it sees the event of a head another transaction moved while
// this one waited (a join's snapshot would be older than the lock).
func queueHead(b *pgx.Batch) {
	b.Queue(`SELECT seq, hash FROM audit_head WHERE id FOR UPDATE`)
	b.Queue(`SELECT coalesce(time, 'epoch') FROM audit_events WHERE seq = (SELECT seq FROM audit_head WHERE id)`)
}

// readHead reads the results of queueHead from br.
func readHead(br pgx.BatchResults) (chainHead, error) {
	var h chainHead
	if err := br.QueryRow().Scan(&h.seq, &h.hash); err != nil {
		return h, fmt.Errorf("audit chain head: %w", err)
	}
	err := br.QueryRow().Scan(&h.prev)
	switch {
	case h.seq == 0:
		h.hash, h.prev = rekey.GenesisHash, time.Time{}
		if errors.Is(err, pgx.ErrNoRows) {
			err = nil
		}
		return h, err
	case err != nil:
		return h, fmt.Errorf("audit chain head event %d: %w", h.seq, err)
	}
	return h, nil
}

// queueEvents chains evs after h and queues their INSERT and the head's
// move on b.
func queueEvents(b *pgx.Batch, evs []rekey.AuditEvent, h chainHead) {
	seq, hash, prev := h.seq, h.hash, h.prev
	rows := make([][]any, len(evs))
	for i := range evs {
		e := &evs[i]
		// Times follow the chain: an event is never dated before the one
		// it follows (several writers, several clocks, and the moment a
		// writer took its time is before it got the chain head).
		if !prev.IsZero() && e.Time.Before(prev) {
			e.Time = rekey.NormalizeTime(prev)
		}
		prev = e.Time
		e.Chain(seq, hash)
		rows[i] = []any{e.Seq, ts(e.Time), string(e.Type), e.Key, e.FromVersion, e.ToVersion,
			e.RotationID, e.DEKs, e.Status, e.Error, e.Actor, e.Reason, e.BackendRequestID, e.PrevHash, e.Hash}
		seq, hash = e.Seq, e.Hash
	}
	var sb strings.Builder
	sb.WriteString(`INSERT INTO audit_events (` + auditColumns + `) VALUES `)
	args := make([]any, 0, 15*len(rows))
	for i, r := range rows {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(")
		for j := range r {
			if j > 0 {
				sb.WriteString(", ")
			}
			args = append(args, r[j])
			sb.WriteString("$" + strconv.Itoa(len(args)))
		}
		sb.WriteString(")")
	}
	b.Queue(sb.String(), args...)
	b.Queue(`UPDATE audit_head SET seq = $1, hash = $2 WHERE id`, seq, hash)
}

// AppendAudit implements rekey.Store. A zero event Time is set to now.
func (s *Store) AppendAudit(ctx context.Context, events ...rekey.AuditEvent) error {
	const op = "append audit"
	evs, err := storecheck.PrepareEvents(events, s.nowTime())
	if err != nil {
		return s.fail(op, err)
	}
	if len(evs) == 0 {
		return nil
	}
	return s.write(ctx, op, func(tx pgx.Tx) error { return appendEvents(ctx, tx, evs) })
}

// ListAudit implements rekey.Store.
func (s *Store) ListAudit(ctx context.Context, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	const op = "list audit"
	if s.closed.Load() {
		return nil, errClosed
	}
	limit := storecheck.ListLimit(q.Limit)
	where := []string{`seq > $1`}
	args := []any{max(q.AfterSeq, 0)}
	if q.Key != "" {
		args = append(args, q.Key)
		where = append(where, `key = $`+strconv.Itoa(len(args)))
	}
	if !q.Since.IsZero() {
		args = append(args, ts(q.Since))
		where = append(where, `time >= $`+strconv.Itoa(len(args)))
	}
	args = append(args, limit)
	rows, err := s.pool.Query(ctx, `SELECT `+auditColumns+` FROM audit_events WHERE `+
		strings.Join(where, ` AND `)+` ORDER BY seq LIMIT $`+strconv.Itoa(len(args)), args...)
	out, err := collect(rows, err, scanEvent)
	if err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// AppendAuditCheckpoint implements rekey.Store. The event it names is read
// in the same transaction, so a checkpoint is only ever stored for an
// event the trail holds with that hash (events are never changed).
func (s *Store) AppendAuditCheckpoint(ctx context.Context, cp rekey.AuditCheckpoint) error {
	const op = "append audit checkpoint"
	cp, err := storecheck.PrepareCheckpoint(cp, s.nowTime())
	if err != nil {
		return s.fail(op, err)
	}
	return s.write(ctx, op, func(tx pgx.Tx) error {
		var hash string
		err := tx.QueryRow(ctx, `SELECT hash FROM audit_events WHERE seq = $1`, cp.Seq).Scan(&hash)
		found := !errors.Is(err, pgx.ErrNoRows)
		if found && err != nil {
			return err
		}
		if err := storecheck.ValidateCheckpointEvent(cp, found, hash); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO audit_checkpoints (seq, hash, mac, key_id, created_at) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (seq) DO NOTHING`, cp.Seq, cp.Hash, cp.MAC, cp.KeyID, cp.CreatedAt)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("audit checkpoint at seq %d exists: %w", cp.Seq, rekey.ErrConflict)
		}
		return nil
	})
}

const checkpointColumns = `seq, hash, mac, key_id, created_at`

func scanCheckpoint(sc scanner) (rekey.AuditCheckpoint, error) {
	var cp rekey.AuditCheckpoint
	if err := sc.Scan(&cp.Seq, &cp.Hash, &cp.MAC, &cp.KeyID, &cp.CreatedAt); err != nil {
		return rekey.AuditCheckpoint{}, err
	}
	cp.CreatedAt = cp.CreatedAt.UTC()
	return cp, nil
}

// ListAuditCheckpoints implements rekey.Store.
func (s *Store) ListAuditCheckpoints(ctx context.Context, afterSeq int64, limit int) ([]rekey.AuditCheckpoint, error) {
	const op = "list audit checkpoints"
	if s.closed.Load() {
		return nil, errClosed
	}
	rows, err := s.pool.Query(ctx, `SELECT `+checkpointColumns+` FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2`,
		max(afterSeq, 0), storecheck.ListLimit(limit))
	out, err := collect(rows, err, scanCheckpoint)
	if err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// LastAuditCheckpoint implements rekey.Store.
func (s *Store) LastAuditCheckpoint(ctx context.Context) (rekey.AuditCheckpoint, error) {
	const op = "last audit checkpoint"
	if s.closed.Load() {
		return rekey.AuditCheckpoint{}, errClosed
	}
	cp, err := scanCheckpoint(s.pool.QueryRow(ctx, `SELECT `+checkpointColumns+` FROM audit_checkpoints WHERE seq > 0 ORDER BY seq DESC LIMIT 1`))
	if errors.Is(err, pgx.ErrNoRows) {
		return rekey.AuditCheckpoint{}, s.fail(op, rekey.ErrCheckpointNotFound)
	}
	if err != nil {
		return rekey.AuditCheckpoint{}, s.fail(op, err)
	}
	return cp, nil
}

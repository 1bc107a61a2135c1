package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

const auditColumns = `seq, time, type, key, from_version, to_version, rotation_id, deks, status,
	error, actor, reason, backend_request_id, prev_hash, hash`

func scanEvent(sc scanner) (rekey.AuditEvent, error) {
	var e rekey.AuditEvent
	var at sql.NullInt64
	err := sc.Scan(&e.Seq, &at, &e.Type, &e.Key, &e.FromVersion, &e.ToVersion, &e.RotationID, &e.DEKs, &e.Status,
		&e.Error, &e.Actor, &e.Reason, &e.BackendRequestID, &e.PrevHash, &e.Hash)
	if err != nil {
		return rekey.AuditEvent{}, err
	}
	e.Time = fromMicros(at)
	return e, nil
}

// appendEvents chains evs after the last stored event and inserts them, in
// the caller's write transaction: the chain head is read under the write
// lock, so concurrent appenders (goroutines or processes) serialise and
// the chain stays unbroken.
func appendEvents(ctx context.Context, tx *sql.Tx, evs []rekey.AuditEvent) error {
	if len(evs) == 0 {
		return nil
	}
	seq, hash, last := int64(0), rekey.GenesisHash, int64(0)
	err := tx.QueryRowContext(ctx, `SELECT seq, hash, coalesce(time, 0) FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash, &last)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	// Times follow the chain: an event is never dated before the one it
	// follows (writers' clocks, and the moments they took their times,
	// differ; the chain's order is the truth).
	prev := time.UnixMicro(last).UTC()
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO audit_events (`+auditColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	rowCtx := batchContext(ctx)
	for i := range evs {
		e := &evs[i]
		if seq > 0 && e.Time.Before(prev) {
			e.Time = prev
		}
		prev = e.Time
		e.Chain(seq, hash)
		_, err := stmt.ExecContext(rowCtx, e.Seq, micros(e.Time), string(e.Type), e.Key, e.FromVersion, e.ToVersion,
			e.RotationID, e.DEKs, e.Status, e.Error, e.Actor, e.Reason, e.BackendRequestID, e.PrevHash, e.Hash)
		if err != nil {
			return err
		}
		seq, hash = e.Seq, e.Hash
	}
	return nil
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
	return s.write(ctx, op, func(tx *sql.Tx) error { return appendEvents(ctx, tx, evs) })
}

// ListAudit implements rekey.Store.
func (s *Store) ListAudit(ctx context.Context, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	const op = "list audit"
	limit := storecheck.ListLimit(q.Limit)
	where := []string{`seq > ?`}
	args := []any{max(q.AfterSeq, 0)}
	if q.Key != "" {
		where, args = append(where, `key = ?`), append(args, q.Key)
	}
	if !q.Since.IsZero() {
		where, args = append(where, `time >= ?`), append(args, micros(q.Since))
	}
	args = append(args, limit)
	rows, err := s.r.QueryContext(ctx, `SELECT `+auditColumns+` FROM audit_events WHERE `+
		strings.Join(where, ` AND `)+` ORDER BY seq LIMIT ?`, args...)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	var out []rekey.AuditEvent
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, s.fail(op, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/rekeyhq/rekey"
)

// Export writes the events matching q to w as JSON lines: one object per
// event, in seq order, with the fields of the audit trail contract (seq,
// time in RFC 3339 UTC, type, key, from_version, to_version, rotation_id,
// deks, status, error, actor, reason, backend_request_id, prev_hash, hash).
// It reads the trail in pages, so memory does not grow with it. q.Key,
// q.Since and q.AfterSeq select events as in rekey.Store.ListAudit; q.Limit,
// if positive, caps the number written (<= 0: no cap). It returns the
// number of events written.
//
// An export of the whole trail can be checked offline: each line's hash is
// rekey.AuditEvent.ComputeHash of its fields, and links to the line before.
func Export(ctx context.Context, s rekey.Store, w io.Writer, q rekey.AuditQuery) (int64, error) {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	limit := int64(q.Limit)
	var n int64
	err := eachEvent(ctx, s, q, func(e rekey.AuditEvent) error {
		if limit > 0 && n == limit {
			return errStop
		}
		e.Time = e.Time.UTC()
		if err := enc.Encode(e); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		n++
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		_ = bw.Flush()
		return n, fmt.Errorf("audit: export: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return n, fmt.Errorf("audit: export: write: %w", err)
	}
	return n, nil
}

// errStop ends eachEvent early without an error.
var errStop = errors.New("stop")

// eachEvent calls fn with every event matching q (q.Limit ignored), in seq
// order, reading pages of pageSize, until fn returns an error.
func eachEvent(ctx context.Context, s rekey.Store, q rekey.AuditQuery, fn func(rekey.AuditEvent) error) error {
	q.Limit = pageSize
	for {
		page, err := s.ListAudit(ctx, q)
		if err != nil {
			return fmt.Errorf("read audit events after seq %d: %w", q.AfterSeq, err)
		}
		for _, e := range page {
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(page) < pageSize {
			return nil
		}
		last := page[len(page)-1].Seq
		if last <= q.AfterSeq {
			return fmt.Errorf("read audit events after seq %d: the store returned seq %d", q.AfterSeq, last)
		}
		q.AfterSeq = last
	}
}

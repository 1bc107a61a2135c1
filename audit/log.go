package audit

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/rekeyhq/rekey"
)

// LogMessage is the message of the records LogEvent writes.
const LogMessage = "audit_event"

// LogEvent writes e to l as one structured record for a SIEM, message
// LogMessage, with the article's fields — event_type, key_id (the key's
// name), from_version, to_version, deks_rotated (the event's DEK count),
// status, error, timestamp (the event's time, UTC) — and seq, rotation_id,
// actor, reason, backend_request_id and hash, so that a log line can be
// matched to the trail. rotation.failed and events with status "failure"
// are logged at level Error; retirement.blocked, version.compromised and
// other events carrying an error at Warn; the rest at Info. A nil l does
// nothing. Events hold no key material.
func LogEvent(l *slog.Logger, e rekey.AuditEvent) {
	if l == nil {
		return
	}
	ctx := context.Background()
	level := logLevel(e)
	if !l.Enabled(ctx, level) {
		return
	}
	l.LogAttrs(ctx, level, LogMessage,
		slog.String("event_type", string(e.Type)),
		slog.String("key_id", e.Key),
		slog.Int("from_version", e.FromVersion),
		slog.Int("to_version", e.ToVersion),
		slog.Int64("deks_rotated", e.DEKs),
		slog.String("status", e.Status),
		slog.String("error", e.Error),
		slog.Time("timestamp", e.Time.UTC()),
		slog.Int64("seq", e.Seq),
		slog.String("rotation_id", e.RotationID),
		slog.String("actor", e.Actor),
		slog.String("reason", e.Reason),
		slog.String("backend_request_id", e.BackendRequestID),
		slog.String("hash", e.Hash),
	)
}

func logLevel(e rekey.AuditEvent) slog.Level {
	switch {
	case e.Type == rekey.AuditRotationFailed || e.Status == "failure":
		return slog.LevelError
	case e.Type == rekey.AuditRetirementBlocked || e.Type == rekey.AuditVersionCompromised || e.Error != "":
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// Tail calls fn with every event with a seq greater than afterSeq, in seq
// order, reading the trail in pages, and returns the seq of the last event
// fn accepted (afterSeq if none). It stops at fn's first error and returns
// it; call again from the returned seq to go on. The worker calls it each
// cycle with the seq it returned last time, to forward every event written
// since — by itself or by any other process sharing the store — to the log:
//
//	last, err = audit.Tail(ctx, store, last, func(e rekey.AuditEvent) error {
//		audit.LogEvent(logger, e)
//		return nil
//	})
func Tail(ctx context.Context, s rekey.Store, afterSeq int64, fn func(rekey.AuditEvent) error) (int64, error) {
	last := afterSeq
	err := eachEvent(ctx, s, rekey.AuditQuery{AfterSeq: afterSeq}, func(e rekey.AuditEvent) error {
		if err := fn(e); err != nil {
			return err
		}
		last = e.Seq
		return nil
	})
	if err != nil {
		return last, fmt.Errorf("audit: tail: %w", err)
	}
	return last, nil
}

// LogSince logs (LogEvent) every event with a seq greater than afterSeq and
// returns the seq of the last one logged (afterSeq if none): Tail with
// LogEvent.
func LogSince(ctx context.Context, l *slog.Logger, s rekey.Store, afterSeq int64) (int64, error) {
	return Tail(ctx, s, afterSeq, func(e rekey.AuditEvent) error {
		LogEvent(l, e)
		return nil
	})
}

// HeadSeq returns the seq of the last event of the trail (0 when it is
// empty), reading only the events after the last checkpoint. A worker that
// starts forwarding events to the log from here logs only new ones; start
// from 0 (or from a seq kept elsewhere) to forward the history too.
func HeadSeq(ctx context.Context, s rekey.Store) (int64, error) {
	from, err := lastCheckpointSeq(ctx, s)
	if err != nil {
		return 0, fmt.Errorf("audit: head: %w", err)
	}
	head := from
	err = eachEvent(ctx, s, rekey.AuditQuery{AfterSeq: from}, func(e rekey.AuditEvent) error {
		head = e.Seq
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("audit: head: %w", err)
	}
	return head, nil
}

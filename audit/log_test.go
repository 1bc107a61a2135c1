package audit_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

func jsonLogger(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestLogEvent(t *testing.T) {
	t.Parallel()
	e := testEvent(4)
	e.Chain(41, rekey.GenesisHash)
	var buf bytes.Buffer
	audit.LogEvent(jsonLogger(&buf), e)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log record %q: %v", buf.String(), err)
	}
	want := map[string]any{
		"msg":                audit.LogMessage,
		"level":              "INFO",
		"event_type":         string(e.Type),
		"key_id":             e.Key,
		"from_version":       float64(e.FromVersion),
		"to_version":         float64(e.ToVersion),
		"deks_rotated":       float64(e.DEKs),
		"status":             e.Status,
		"error":              "",
		"timestamp":          e.Time.UTC().Format(time.RFC3339Nano),
		"seq":                float64(42),
		"rotation_id":        e.RotationID,
		"actor":              e.Actor,
		"reason":             e.Reason,
		"backend_request_id": e.BackendRequestID,
		"hash":               e.Hash,
	}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("field %s = %v, want %v", k, rec[k], v)
		}
	}

	levels := []struct {
		e     rekey.AuditEvent
		level string
	}{
		{rekey.AuditEvent{Type: rekey.AuditRotationFailed, Status: "failure", Error: "kms unreachable"}, "ERROR"},
		{rekey.AuditEvent{Type: rekey.AuditRotationCompleted, Status: "failure"}, "ERROR"},
		{rekey.AuditEvent{Type: rekey.AuditRetirementBlocked}, "WARN"},
		{rekey.AuditEvent{Type: rekey.AuditVersionCompromised}, "WARN"},
		{rekey.AuditEvent{Type: rekey.AuditRewrapProgress, Error: "2 deks corrupt"}, "WARN"},
		{rekey.AuditEvent{Type: rekey.AuditVersionRetired, Status: "retired"}, "INFO"},
	}
	for _, tc := range levels {
		buf.Reset()
		audit.LogEvent(jsonLogger(&buf), tc.e)
		if !strings.Contains(buf.String(), `"level":"`+tc.level+`"`) {
			t.Errorf("%s (status %q, error %q) logged as %s, want %s", tc.e.Type, tc.e.Status, tc.e.Error, buf.String(), tc.level)
		}
	}
	audit.LogEvent(nil, e) // a nil logger does nothing
}

func TestTail(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := memstore.New()
	appendEvents(t, s, 0, 1500)
	var seen []int64
	collect := func(e rekey.AuditEvent) error { seen = append(seen, e.Seq); return nil }
	last, err := audit.Tail(ctx, s, 0, collect)
	if err != nil || last != 1500 || len(seen) != 1500 || seen[0] != 1 || seen[1499] != 1500 {
		t.Fatalf("Tail(0) = %d, %v after %d events", last, err, len(seen))
	}
	// The next cycle sees only what was written since.
	seen = nil
	if last, err = audit.Tail(ctx, s, last, collect); err != nil || last != 1500 || len(seen) != 0 {
		t.Fatalf("Tail with nothing new = %d, %v, %v", last, err, seen)
	}
	appendEvents(t, s, 1500, 3)
	if last, err = audit.Tail(ctx, s, last, collect); err != nil || last != 1503 || len(seen) != 3 || seen[0] != 1501 {
		t.Fatalf("Tail after 3 new = %d, %v, %v", last, err, seen)
	}
	// An error stops it at the last event accepted.
	stop := errors.New("log sink down")
	seen = nil
	last, err = audit.Tail(ctx, s, 1495, func(e rekey.AuditEvent) error {
		if e.Seq == 1498 {
			return stop
		}
		return collect(e)
	})
	if !errors.Is(err, stop) || last != 1497 || len(seen) != 2 {
		t.Errorf("Tail stopped by an error = %d, %v, %v; want 1497 and the error", last, err, seen)
	}
}

func TestLogSince(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	appendEvents(t, s, 0, 5)
	var buf bytes.Buffer
	last, err := audit.LogSince(t.Context(), jsonLogger(&buf), s, 2)
	if err != nil || last != 5 {
		t.Fatalf("LogSince = %d, %v", last, err)
	}
	if n := strings.Count(buf.String(), `"msg":"`+audit.LogMessage+`"`); n != 3 {
		t.Errorf("logged %d events, want 3:\n%s", n, buf.String())
	}
}

func TestHeadSeq(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	if h, err := audit.HeadSeq(t.Context(), s); err != nil || h != 0 {
		t.Errorf("HeadSeq of an empty trail = %d, %v", h, err)
	}
	appendEvents(t, s, 0, 1200)
	if h, err := audit.HeadSeq(t.Context(), s); err != nil || h != 1200 {
		t.Errorf("HeadSeq = %d, %v; want 1200", h, err)
	}
	checkpoint(t, s, memkms.New(), 1200)
	if h, err := audit.HeadSeq(t.Context(), s); err != nil || h != 1200 {
		t.Errorf("HeadSeq at a checkpoint = %d, %v; want 1200", h, err)
	}
	appendEvents(t, s, 1200, 3)
	if h, err := audit.HeadSeq(t.Context(), s); err != nil || h != 1203 {
		t.Errorf("HeadSeq = %d, %v; want 1203", h, err)
	}
}

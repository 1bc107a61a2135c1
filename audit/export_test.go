package audit_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/store/memstore"
)

// contractFields are the JSON fields of an audit event (DESIGN.md).
var contractFields = []string{"seq", "time", "type", "key", "from_version", "to_version", "rotation_id", "deks",
	"status", "error", "actor", "reason", "backend_request_id", "prev_hash", "hash"}

func TestExportRoundTrip(t *testing.T) {
	t.Parallel()
	tr := buildTrail(t)
	s := tr.open(t)
	// An event with characters JSON must escape, and one HTML would.
	odd := testEvent(99)
	odd.Error = "quote \" backslash \\ newline \n <tag> & ünïcode"
	if err := s.AppendAudit(t.Context(), odd); err != nil {
		t.Fatal(err)
	}
	stored, err := s.ListAudit(t.Context(), rekey.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	n, err := audit.Export(t.Context(), s, &buf, rekey.AuditQuery{})
	if err != nil || n != int64(len(stored)) {
		t.Fatalf("Export = %d, %v; want %d events", n, err, len(stored))
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != len(stored) {
		t.Fatalf("Export wrote %d lines, want %d", len(lines), len(stored))
	}
	prev := rekey.GenesisHash
	for i, line := range lines {
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if got := slices.Sorted(maps.Keys(fields)); !slices.Equal(got, slices.Sorted(slices.Values(contractFields))) {
			t.Errorf("line %d has fields %v, want %v", i+1, got, contractFields)
		}
		ts, _ := fields["time"].(string)
		if at, err := time.Parse(time.RFC3339, ts); err != nil || !strings.HasSuffix(ts, "Z") || at.Location() != time.UTC {
			t.Errorf("line %d: time %q is not RFC 3339 UTC (%v)", i+1, ts, err)
		}
		var e rekey.AuditEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		want := stored[i]
		if !e.Time.Equal(want.Time) {
			t.Errorf("line %d: time %v, want %v", i+1, e.Time, want.Time)
		}
		e.Time, want.Time = time.Time{}, time.Time{}
		if e != want {
			t.Errorf("line %d:\n got  %+v\n want %+v", i+1, e, want)
		}
		// The export verifies offline.
		e.Time = stored[i].Time
		if e.PrevHash != prev || e.ComputeHash() != e.Hash {
			t.Errorf("line %d does not chain", i+1)
		}
		prev = e.Hash
	}
}

func TestExportQuery(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	appendEvents(t, s, 0, 2500) // three pages
	tests := []struct {
		name  string
		q     rekey.AuditQuery
		count int64
		first int64
	}{
		{"all", rekey.AuditQuery{}, 2500, 1},
		{"after seq", rekey.AuditQuery{AfterSeq: 1999}, 501, 2000},
		{"limit", rekey.AuditQuery{Limit: 1200}, 1200, 1},
		{"key", rekey.AuditQuery{Key: "orders"}, 833, 2},
		{"since", rekey.AuditQuery{Since: t0.Add(2400 * time.Minute)}, 100, 2401},
		{"key, after seq and limit", rekey.AuditQuery{Key: "users", AfterSeq: 1000, Limit: 5}, 5, 1002},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			n, err := audit.Export(t.Context(), s, &buf, tc.q)
			if err != nil || n != tc.count {
				t.Fatalf("Export(%+v) = %d, %v; want %d", tc.q, n, err, tc.count)
			}
			sc := bufio.NewScanner(&buf)
			var lines, prevSeq int64
			for sc.Scan() {
				var e rekey.AuditEvent
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
					t.Fatal(err)
				}
				if lines == 0 && e.Seq != tc.first {
					t.Errorf("first seq %d, want %d", e.Seq, tc.first)
				}
				if e.Seq <= prevSeq || tc.q.Key != "" && e.Key != tc.q.Key {
					t.Errorf("line %d: seq %d key %q out of order or not selected", lines+1, e.Seq, e.Key)
				}
				prevSeq = e.Seq
				lines++
			}
			if lines != tc.count {
				t.Errorf("%d lines, want %d", lines, tc.count)
			}
		})
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write(p []byte) (int, error) { return 0, w.err }

func TestExportWriteError(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	appendEvents(t, s, 0, 3000)
	broken := errors.New("disk full")
	if _, err := audit.Export(t.Context(), s, failingWriter{broken}, rekey.AuditQuery{}); !errors.Is(err, broken) {
		t.Errorf("Export to a failing writer = %v, want %v", err, broken)
	}
}

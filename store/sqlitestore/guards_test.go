package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
)

// TestAuditGuards: a dropped and an altered append-only trigger are
// reported by AuditGuardProblems and Ping while the store runs, and the
// next Open restores them (logging that it did) and keeps reporting the
// restore; a fresh database has none to report.
func TestAuditGuards(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "rekey.db")
	s, err := Open(ctx, Config{Path: path, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.AuditGuardProblems(ctx); err != nil || p != nil {
		t.Fatalf("fresh database: problems %q, %v; want none", p, err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("fresh database: Ping: %v", err)
	}
	// A row in each table, for the triggers (FOR EACH ROW) to refuse.
	if err := s.AppendAudit(ctx, rekey.AuditEvent{Type: rekey.AuditRotationFailed, Key: "a"}); err != nil {
		t.Fatal(err)
	}
	evs, err := s.ListAudit(ctx, rekey.AuditQuery{})
	if err != nil || len(evs) != 1 {
		t.Fatalf("ListAudit: %v, %v", evs, err)
	}
	if err := s.AppendAuditCheckpoint(ctx, rekey.AuditCheckpoint{Seq: 1, Hash: evs[0].Hash, MAC: []byte("mac")}); err != nil {
		t.Fatal(err)
	}
	// Someone with the file: one trigger dropped, another made harmless.
	raw, err := sql.Open("sqlite3", path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, q := range []string{
		`DROP TRIGGER audit_events_no_delete`,
		`DROP TRIGGER audit_checkpoints_no_update`,
		`CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints BEGIN SELECT 1; END`,
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	p, err := s.AuditGuardProblems(ctx)
	if err != nil || len(p) != 2 || !strings.Contains(p[0]+p[1], "audit_events_no_delete of the audit trail is missing") || !strings.Contains(p[0]+p[1], "audit_checkpoints_no_update of the audit trail was altered") {
		t.Errorf("after the tampering: problems %q, %v; want the dropped and the altered trigger", p, err)
	}
	if err := s.Ping(ctx); err == nil || !strings.Contains(err.Error(), "audit_events_no_delete") {
		t.Errorf("after the tampering: Ping = %v, want an error naming audit_events_no_delete", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	var logBuf bytes.Buffer
	s, err = Open(ctx, Config{Path: path, Logger: slog.New(slog.NewJSONHandler(&logBuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.Contains(logBuf.String(), "restored an append-only trigger") || !strings.Contains(logBuf.String(), "audit_events_no_delete") {
		t.Errorf("Open did not log the restore:\n%s", logBuf.String())
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("after the restore: Ping = %v", err)
	}
	p, err = s.AuditGuardProblems(ctx)
	if err != nil || len(p) != 2 || !strings.Contains(p[0], "restored when this process opened") {
		t.Errorf("after the restore: problems %q, %v; want both, reported as restored", p, err)
	}
	if _, err := raw.Exec(`DELETE FROM audit_events`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("DELETE after the restore: %v, want the trigger's refusal", err)
	}
	if _, err := raw.Exec(`UPDATE audit_checkpoints SET hash = ''`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("UPDATE of checkpoints after the restore: %v, want the trigger's refusal", err)
	}
}

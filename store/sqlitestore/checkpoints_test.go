package sqlitestore

import (
	"bytes"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// TestMigration2KeepsCheckpoints upgrades a version-1 database holding a
// checkpoint: the row keeps its values and gets an empty key_id, and from
// then on checkpoints refuse UPDATE and DELETE like the events do.
func TestMigration2KeepsCheckpoints(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "rekey.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	ev := rekey.AuditEvent{Type: rekey.AuditKeyCreated, Key: "a", Time: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	ev.Chain(0, rekey.GenesisHash)
	mac := []byte{1, 2, 3}
	setup := []string{migrations[0].sql, "PRAGMA user_version = 1"}
	for _, q := range setup {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO audit_events (`+auditColumns+`) VALUES (?, ?, ?, ?, 0, 0, '', 0, '', '', '', '', '', ?, ?)`,
		ev.Seq, ev.Time.UnixMicro(), string(ev.Type), ev.Key, ev.PrevHash, ev.Hash); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, hash, mac, created_at) VALUES (1, ?, ?, ?)`,
		ev.Hash, mac, ev.Time.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, Config{Create: true, Path: path})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	cp, err := s.LastAuditCheckpoint(ctx)
	if err != nil {
		t.Fatalf("LastAuditCheckpoint: %v", err)
	}
	if cp.Seq != 1 || cp.Hash != ev.Hash || !bytes.Equal(cp.MAC, mac) || cp.KeyID != "" || !cp.CreatedAt.Equal(ev.Time) {
		t.Errorf("checkpoint after the upgrade = %+v", cp)
	}
	for _, q := range []string{`UPDATE audit_checkpoints SET mac = x'00'`, `DELETE FROM audit_checkpoints`} {
		_, err := s.w.ExecContext(ctx, q)
		if err == nil {
			t.Errorf("%s succeeded on an append-only table", q)
		}
	}
	if _, err := s.LastAuditCheckpoint(ctx); err != nil {
		t.Errorf("LastAuditCheckpoint after refused changes: %v", err)
	}
	if _, err := s.ListAuditCheckpoints(ctx, 1, 0); err != nil {
		t.Errorf("ListAuditCheckpoints: %v", err)
	}
	if err := s.AppendAuditCheckpoint(ctx, rekey.AuditCheckpoint{Seq: 1, Hash: ev.Hash, MAC: mac}); !errors.Is(err, rekey.ErrConflict) {
		t.Errorf("a second checkpoint of seq 1 = %v, want ErrConflict", err)
	}
}

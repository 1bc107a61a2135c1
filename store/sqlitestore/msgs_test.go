package sqlitestore

import (
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// TestOpenEmptyFile: an existing empty database file (a truncated one) is
// refused without Create, for writing and reading, and left as it is; with
// Create (rekey init) an empty file is a new database.
func TestOpenEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rekey.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []Config{{Path: path}, {Path: path, ReadOnly: true}} {
		s, err := Open(t.Context(), cfg)
		if err == nil {
			s.Close()
			t.Fatalf("Open(%+v) of an empty file succeeded", cfg)
		}
		if !errors.Is(err, ErrEmptyFile) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "restore it from a backup") {
			t.Errorf("Open(%+v): %v; want ErrEmptyFile naming %s and saying to restore it", cfg, err, path)
		}
		if st, err := os.Stat(path); err != nil || st.Size() != 0 {
			t.Fatalf("Open changed the empty file: %v, %v", st, err)
		}
		for _, side := range []string{path + "-wal", path + "-shm"} {
			if _, err := os.Stat(side); err == nil {
				t.Errorf("Open left %s behind", side)
			}
		}
	}
	s, err := Open(t.Context(), Config{Path: path, Create: true})
	if err != nil {
		t.Fatalf("Open with Create of an empty file: %v", err)
	}
	s.Close()
}

// TestOpenDoesNotWaitForWriters: opening a database whose schema is
// current takes no write lock, so it succeeds while another process holds
// one; CheckWrite then reports the lock, saying what to do.
func TestOpenDoesNotWaitForWriters(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	other, err := sql.Open("sqlite3", s.Path()+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	tx, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	start := time.Now()
	s2, err := Open(ctx, Config{Path: s.Path(), BusyTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("Open while another connection holds the write lock: %v", err)
	}
	defer s2.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("Open took %v: it waited for the write lock", took)
	}
	err = s2.CheckWrite(ctx)
	if !rekey.IsTransient(err) || !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), "stop it") {
		t.Errorf("CheckWrite while the lock is held = %v; want a transient error saying the database is locked and what to do", err)
	}
	_ = tx.Rollback()
	if err := s2.CheckWrite(ctx); err != nil {
		t.Errorf("CheckWrite after the lock was released: %v", err)
	}
}

// TestDamagedFileSaysRestore: a file that is not a database is refused
// with SQLite's reason and the advice to restore it.
func TestDamagedFileSaysRestore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rekey.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a database ", 600)), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), Config{Path: path})
	if err == nil {
		s.Close()
		t.Fatal("Open of a file that is not a database succeeded")
	}
	if !strings.Contains(err.Error(), "not a database") || !strings.Contains(err.Error(), "restore it from a backup") {
		t.Errorf("Open: %v; want SQLite's reason and the advice to restore the file", err)
	}
}

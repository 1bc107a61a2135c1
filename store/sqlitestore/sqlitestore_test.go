package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// openTemp opens a store on a new file in t's temp dir and closes it at the
// end of the test.
func openTemp(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Create: true, Path: filepath.Join(t.TempDir(), "rekey.db")})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) rekey.Store { return openTemp(t) })
}

func TestFileMode(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	k := rekey.Key{Name: "a", Backend: "local", BackendRef: "a", ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		t.Fatal(err)
	}
	for _, db := range []*sql.DB{s.w, s.r} {
		var mode string
		if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
			t.Errorf("journal_mode = %q, %v; want wal", mode, err)
		}
	}
	for _, p := range []string{s.Path(), s.Path() + "-wal", s.Path() + "-shm"} {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		if perm := info.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", filepath.Base(p), perm)
		}
	}
}

func TestRefusesOpenFile(t *testing.T) {
	for _, suffix := range []string{"", "-wal"} {
		t.Run("mode of file"+suffix, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rekey.db")
			if suffix != "" {
				if err := os.WriteFile(path, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(path+suffix, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path+suffix, 0o644); err != nil { // whatever the umask
				t.Fatal(err)
			}
			s, err := Open(t.Context(), Config{Create: true, Path: path})
			if err == nil {
				_ = s.Close()
				t.Fatalf("Open of a 0644 file succeeded")
			}
			if !errors.Is(err, rekey.ErrInvalidArgument) || !strings.Contains(err.Error(), "chmod 600") {
				t.Errorf("Open: %v; want ErrInvalidArgument saying chmod 600", err)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{"", filepath.Join(dir, "a?b.db"), "file:" + filepath.Join(dir, "x.db"), filepath.Join(dir, "missing", "x.db"), dir} {
		s, err := Open(t.Context(), Config{Create: true, Path: path})
		if err == nil {
			_ = s.Close()
			t.Errorf("Open(%q) succeeded", path)
		}
	}
}

func TestMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rekey.db")
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	s, err := Open(t.Context(), Config{Create: true, Path: path, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "applied migration"); n != len(migrations) {
		t.Errorf("first open logged %d migrations, want %d:\n%s", n, len(migrations), logs.String())
	}
	var v int
	if err := s.r.QueryRowContext(t.Context(), "PRAGMA user_version").Scan(&v); err != nil || v != len(migrations) {
		t.Errorf("user_version = %d, %v; want %d", v, err, len(migrations))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening applies nothing.
	logs.Reset()
	s, err = Open(t.Context(), Config{Create: true, Path: path, Logger: logger})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if strings.Contains(logs.String(), "applied migration") {
		t.Errorf("reopen applied migrations again:\n%s", logs.String())
	}
	applied, err := migrate(t.Context(), s.w, time.Second)
	if err != nil || len(applied) != 0 {
		t.Errorf("migrate on an up-to-date database = %v, %v", applied, err)
	}

	// A schema newer than this binary is refused, and left alone.
	if _, err := s.w.ExecContext(t.Context(), fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(t.Context(), Config{Create: true, Path: path})
	if err == nil {
		_ = s.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "newer than this rekey knows") {
		t.Errorf("Open of a newer schema: %v", err)
	}
}

func TestLoadMigrations(t *testing.T) {
	ms, err := loadMigrations(migrationFS)
	if err != nil || len(ms) == 0 || ms[0].version != 1 {
		t.Fatalf("loadMigrations = %d, %v", len(ms), err)
	}
}

// TestTwoStoresOneFile stands for two processes on one database: two Stores
// (separate connection pools, so separate SQLite connections and locks),
// opened at once, writing at once.
func TestTwoStoresOneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rekey.db")
	ctx := t.Context()
	stores := make([]*Store, 2)
	var wg sync.WaitGroup
	for i := range stores {
		wg.Go(func() {
			s, err := Open(ctx, Config{Create: true, Path: path})
			if err != nil {
				t.Errorf("Open %d: %v", i, err)
				return
			}
			stores[i] = s
		})
	}
	wg.Wait()
	for _, s := range stores {
		if s == nil {
			t.FailNow()
		}
		t.Cleanup(func() { _ = s.Close() })
	}

	k := rekey.Key{Name: "a", Backend: "local", BackendRef: "a", ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
	if err := stores[0].CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		t.Fatal(err)
	}
	l, err := stores[1].AcquireLease(ctx, "a", "p1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, err = stores[0].AcquireLease(ctx, "a", "p0", time.Hour, time.Now())
	if !errors.Is(err, rekey.ErrLeaseHeld) {
		t.Errorf("lease held through the other store: %v, want ErrLeaseHeld", err)
	}

	const rounds, batch = 20, 50
	var mu sync.Mutex
	var all []rekey.DEK
	for i, s := range stores {
		wg.Go(func() {
			for r := range rounds {
				deks := make([]rekey.DEK, batch)
				for j := range deks {
					deks[j] = rekey.DEK{ID: rekey.NewID(), Key: "a", Version: 1, Wrapped: []byte(fmt.Sprintf("w-%d-%d-%d", i, r, j))}
				}
				if err := s.InsertDEKs(ctx, deks); err != nil {
					t.Errorf("store %d: InsertDEKs: %v", i, err)
					return
				}
				// Each store swaps the other's latest batch when it can.
				mu.Lock()
				all = append(all, deks...)
				mu.Unlock()
				if err := s.AppendAudit(ctx, rekey.AuditEvent{Type: rekey.AuditRewrapProgress, Key: "a", Actor: fmt.Sprint("store-", i)}); err != nil {
					t.Errorf("store %d: AppendAudit: %v", i, err)
					return
				}
				var swaps []rekey.DEKSwap
				for _, d := range deks[:10] {
					swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: append([]byte("s-"), d.Wrapped...), NewVersion: 1})
				}
				if lost, err := s.SwapDEKs(ctx, swaps, l); err != nil || len(lost) != 0 {
					t.Errorf("store %d: SwapDEKs = %v, %v", i, lost, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, s := range stores {
		c, err := s.CountDEKs(ctx, "a")
		if err != nil || c[1] != int64(len(all)) || len(all) != 2*rounds*batch {
			t.Errorf("store %d sees %v DEKs (%v), want %d", i, c, err, 2*rounds*batch)
		}
		evs, err := s.ListAudit(ctx, rekey.AuditQuery{Limit: 10000})
		if err != nil || len(evs) != 2*rounds {
			t.Fatalf("store %d sees %d events (%v), want %d", i, len(evs), err, 2*rounds)
		}
		prev := rekey.GenesisHash
		for j, e := range evs {
			if e.Seq != int64(j+1) || e.PrevHash != prev || e.Hash != e.ComputeHash() {
				t.Fatalf("store %d: chain broken at %d: %+v", i, j, e)
			}
			prev = e.Hash
		}
	}
}

// TestConcurrentOpenFreshFile has three "processes" open a new file at the
// same moment, many times: switching a new file to WAL mode races, and
// SQLite answers the loser SQLITE_BUSY at once, busy timeout or not.
func TestConcurrentOpenFreshFile(t *testing.T) {
	for range 30 {
		path := filepath.Join(t.TempDir(), "rekey.db")
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				s, err := Open(t.Context(), Config{Create: true, Path: path})
				if err != nil {
					t.Errorf("concurrent Open of a new file: %v", err)
					return
				}
				if err := s.Ping(t.Context()); err != nil {
					t.Errorf("Ping: %v", err)
				}
				_ = s.Close()
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
	}
}

func TestPing(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"removed", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
		{"unreadable", func(t *testing.T, path string) {
			if err := os.Chmod(path, 0o200); err != nil {
				t.Fatal(err)
			}
		}},
		{"replaced", func(t *testing.T, path string) {
			if err := os.Rename(path, path+".old"); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t)
			if err := s.Ping(t.Context()); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			tc.damage(t, s.Path())
			err := s.Ping(t.Context())
			if !rekey.IsTransient(err) {
				t.Errorf("Ping after the file was %s: %v, want an UnreachableError", tc.name, err)
			}
		})
	}
	s := openTemp(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Use after Close is a bug, not an outage: an error no decorator
	// retries.
	if err := s.Ping(t.Context()); err == nil || rekey.IsTransient(err) || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Ping after Close: %v, want a non-transient error saying the store is closed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestMapErr(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	// Busy: another connection holds the write lock past the timeout.
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
	busy, err := Open(ctx, Config{Create: true, Path: s.Path(), BusyTimeout: 50 * time.Millisecond})
	if err == nil {
		err = busy.AppendAudit(ctx, rekey.AuditEvent{Type: rekey.AuditRotationFailed})
		_ = busy.Close()
	}
	var u *rekey.UnreachableError
	if !errors.As(err, &u) || u.Service != "store:sqlite" {
		t.Errorf("write while another connection holds the lock: %v, want an UnreachableError of store:sqlite", err)
	}
	// The trail is append-only even for a bug in this package.
	_ = tx.Rollback()
	if err := s.AppendAudit(ctx, rekey.AuditEvent{Type: rekey.AuditRotationFailed}); err != nil {
		t.Fatal(err)
	}
	_, err = s.w.ExecContext(ctx, "DELETE FROM audit_events")
	if err == nil || !errors.Is(mapErr(err), rekey.ErrInvalidArgument) {
		t.Errorf("DELETE FROM audit_events: %v", err)
	}
}

func TestNeverStoresOrLogsWrappedInErrors(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	secret := []byte("SECRET-WRAPPED-BYTES")
	k := rekey.Key{Name: "a", Backend: "local", BackendRef: "a", ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		t.Fatal(err)
	}
	d := rekey.DEK{ID: rekey.NewID(), Key: "a", Version: 1, Wrapped: secret}
	if err := s.InsertDEKs(ctx, []rekey.DEK{d}); err != nil {
		t.Fatal(err)
	}
	err := s.InsertDEKs(ctx, []rekey.DEK{d})
	if err == nil || strings.Contains(err.Error(), string(secret)) {
		t.Errorf("duplicate insert error %v names the wrapped bytes", err)
	}
}

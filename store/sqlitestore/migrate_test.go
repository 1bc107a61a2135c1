package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/rekeyhq/rekey"
)

// TestMigration3BackfillsVersionExpiry upgrades a version-2 database: the
// active version of each key gets the key's expiry, an earlier version its
// activation plus the key's rotation period, a version never activated
// none; the rows keep their other values.
func TestMigration3BackfillsVersionExpiry(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "rekey.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	day := func(n int) time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, n) }
	us := func(tm time.Time) int64 { return tm.UnixMicro() }
	const period = 30 * rekey.Day
	setup := []string{migrations[0].sql, migrations[1].sql, "PRAGMA user_version = 2",
		// Key a: v1 retired, v2 pending retirement, v3 active, v4 created.
		fmt.Sprintf(`INSERT INTO keys VALUES ('a', 'local', 'a', 3, %d, %d, 0, 0, 0, 0, %d, %d)`, us(day(95)), int64(period), us(day(0)), us(day(65))),
		fmt.Sprintf(`INSERT INTO key_versions (key, version, state, created_at, activated_at, retired_at) VALUES ('a', 1, 'retired', %d, %d, %d)`, us(day(0)), us(day(0)), us(day(40))),
		fmt.Sprintf(`INSERT INTO key_versions (key, version, state, created_at, activated_at, retire_after) VALUES ('a', 2, 'pending_retirement', %d, %d, %d)`, us(day(30)), us(day(31)), us(day(70))),
		fmt.Sprintf(`INSERT INTO key_versions (key, version, state, created_at, activated_at) VALUES ('a', 3, 'active', %d, %d)`, us(day(64)), us(day(65))),
		fmt.Sprintf(`INSERT INTO key_versions (key, version, state, created_at) VALUES ('a', 4, 'created', %d)`, us(day(90))),
		// Key b: one version, active, the key without an expiry.
		fmt.Sprintf(`INSERT INTO keys VALUES ('b', 'local', 'b', 1, NULL, %d, 0, 0, 0, 0, %d, %d)`, int64(period), us(day(0)), us(day(0))),
		fmt.Sprintf(`INSERT INTO key_versions (key, version, state, created_at, activated_at) VALUES ('b', 1, 'active', %d, %d)`, us(day(0)), us(day(0))),
	}
	for _, q := range setup {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, Config{Create: true, Path: path})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	tests := []struct {
		key     string
		version int
		state   rekey.VersionState
		expires time.Time
	}{
		{"a", 1, rekey.VersionRetired, day(0).Add(period)},
		{"a", 2, rekey.VersionPendingRetirement, day(31).Add(period)},
		{"a", 3, rekey.VersionActive, day(95)},
		{"a", 4, rekey.VersionCreated, time.Time{}},
		{"b", 1, rekey.VersionActive, time.Time{}},
	}
	vs := map[string][]rekey.KeyVersion{}
	for _, key := range []string{"a", "b"} {
		if vs[key], err = s.ListVersions(ctx, key); err != nil {
			t.Fatalf("ListVersions(%s): %v", key, err)
		}
	}
	for _, tc := range tests {
		if tc.version > len(vs[tc.key]) {
			t.Fatalf("key %s has %d versions after the upgrade", tc.key, len(vs[tc.key]))
		}
		v := vs[tc.key][tc.version-1]
		if v.Version != tc.version || v.State != tc.state || !v.ExpiresAt.Equal(tc.expires) {
			t.Errorf("key %s version %d after the upgrade: %+v; want %s expiring %v", tc.key, tc.version, v, tc.state, tc.expires)
		}
	}
	if v := vs["a"][1]; !v.RetireAfter.Equal(day(70)) || !v.ActivatedAt.Equal(day(31)) {
		t.Errorf("the upgrade changed other fields: %+v", v)
	}
	// From then on a policy change moves the active version's expiry.
	if err := s.UpdateKeyPolicy(ctx, "a", rekey.DefaultPolicy(), day(200)); err != nil {
		t.Fatal(err)
	}
	vs["a"], err = s.ListVersions(ctx, "a")
	if err != nil || !vs["a"][2].ExpiresAt.Equal(day(200)) || !vs["a"][1].ExpiresAt.Equal(day(31).Add(period)) {
		t.Errorf("after a policy change: %+v, %v", vs["a"], err)
	}
}

// TestNotCommitted pins down which COMMIT failures prove that nothing was
// written (and may be reported as transient) and which leave the outcome
// unknown.
func TestNotCommitted(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"busy", sqlite3.Error{Code: sqlite3.ErrBusy}, true},
		{"locked", fmt.Errorf("commit: %w", sqlite3.Error{Code: sqlite3.ErrLocked}), true},
		{"context", context.Canceled, true},
		{"transaction done", sql.ErrTxDone, true},
		{"I/O error", sqlite3.Error{Code: sqlite3.ErrIoErr}, false},
		{"disk full", sqlite3.Error{Code: sqlite3.ErrFull}, false},
	}
	for _, tc := range tests {
		if got := notCommitted(tc.err); got != tc.want {
			t.Errorf("notCommitted(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
	// mapErr alone would call an I/O error transient: write must not pass
	// an ambiguous COMMIT failure through it.
	if !rekey.IsTransient(mapErr(sqlite3.Error{Code: sqlite3.ErrIoErr})) {
		t.Errorf("mapErr(I/O error) is not transient")
	}
}

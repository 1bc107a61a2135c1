package sqlitestore

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/storetest"
)

// TestCountGate: retirement counts the rows of deks, not dek_counts, even
// when the counter is set wrong by hand.
func TestCountGate(t *testing.T) {
	storetest.RunCountGate(t, func(t *testing.T) rekey.Store { return openTemp(t) },
		func(t *testing.T, s rekey.Store, key string, version int, n int64) {
			t.Helper()
			if _, err := s.(*Store).w.ExecContext(t.Context(), `UPDATE dek_counts SET n = ? WHERE key = ? AND version = ?`, n, key, version); err != nil {
				t.Fatalf("set the counter of %s version %d: %v", key, version, err)
			}
		})
}

// TestMigration6LeanDEKs upgrades a version-5 database with DEKs of two
// keys on several versions: the rows keep every value, dek_counts holds
// their counts, deks_key_version is gone, and the store works on.
func TestMigration6LeanDEKs(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "rekey.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	var setup []string
	for _, m := range migrations[:5] {
		setup = append(setup, m.sql)
	}
	setup = append(setup, "PRAGMA user_version = 5",
		`INSERT INTO keys VALUES ('a', 'local', 'a', 2, NULL, 1, 0, 0, 0, 0, 1, 1)`,
		`INSERT INTO key_versions (key, version, state) VALUES ('a', 1, 'pending_retirement'), ('a', 2, 'active')`,
		`INSERT INTO keys VALUES ('b', 'local', 'b', 1, NULL, 1, 0, 0, 0, 0, 1, 1)`,
		`INSERT INTO key_versions (key, version, state) VALUES ('b', 1, 'active')`)
	want := map[string]map[int]int64{"a": {1: 3, 2: 5}, "b": {1: 2}}
	var ids []string
	for key, vs := range want {
		for v, n := range vs {
			for i := range n {
				id := fmt.Sprintf("%s-%d-%d", key, v, i)
				ids = append(ids, id)
				setup = append(setup, fmt.Sprintf(`INSERT INTO deks VALUES ('%s', '%s', %d, x'0102%02x', 'l-%s', 10, 20)`, id, key, v, i, id))
			}
		}
	}
	for _, q := range setup {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%.60s: %v", q, err)
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
	for key, vs := range want {
		got, err := s.CountDEKs(ctx, key)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(vs) {
			t.Errorf("CountDEKs(%s) after the upgrade = %v, %v; want %v", key, got, err, vs)
		}
	}
	for _, id := range ids {
		d, err := s.GetDEK(ctx, id)
		parts := strings.Split(id, "-")
		if err != nil || d.Key != parts[0] || fmt.Sprint(d.Version) != parts[1] || fmt.Sprintf("%x", d.Wrapped) != "0102"+fmt.Sprintf("%02s", parts[2]) ||
			d.Label != "l-"+id || !d.CreatedAt.Equal(time.UnixMicro(10).UTC()) || !d.UpdatedAt.Equal(time.UnixMicro(20).UTC()) {
			t.Errorf("dek %s after the upgrade: %+v, %v", id, d, err)
		}
	}
	var indexes []string
	rows, err := s.r.QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'deks' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		indexes = append(indexes, n)
	}
	rows.Close()
	if fmt.Sprint(indexes) != "[deks_key_id]" {
		t.Errorf("indexes of deks after the upgrade: %v, want [deks_key_id]", indexes)
	}
	// Writes after the upgrade keep the counts.
	if err := s.InsertDEKs(ctx, []rekey.DEK{{ID: rekey.NewID(), Key: "a", Version: 2, Wrapped: []byte{1}}}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.CountDEKs(ctx, "a"); err != nil || got[2] != 6 || got[1] != 3 {
		t.Errorf("CountDEKs(a) after an insert = %v, %v; want 1: 3, 2: 6", got, err)
	}
}

package sqlitestore

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSchemaTables: schemaTables is exactly the tables the migrations
// leave, so checkTables neither misses a table nor asks for one that is
// gone.
func TestSchemaTables(t *testing.T) {
	s := openTemp(t)
	rows, err := s.r.QueryContext(t.Context(), `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		got = append(got, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(schemaTables))
	if !slices.Equal(got, want) {
		t.Errorf("tables after every migration: %v; schemaTables: %v", got, want)
	}
}

// TestOpenRefusesDroppedTable: a table dropped by hand makes Open fail,
// writable or read-only, with an error naming the table and the fix, and
// nothing recreates it.
func TestOpenRefusesDroppedTable(t *testing.T) {
	for _, table := range []string{"deks", "dek_counts", "audit_events"} {
		t.Run(table, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rekey.db")
			s, err := Open(t.Context(), Config{Create: true, Path: path})
			if err != nil {
				t.Fatal(err)
			}
			// The audit tables' triggers refuse nothing about DROP.
			if _, err := s.w.ExecContext(t.Context(), "DROP TABLE "+table); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			for _, ro := range []bool{false, true} {
				s, err := Open(t.Context(), Config{Path: path, ReadOnly: ro})
				if err == nil {
					_ = s.Close()
					t.Fatalf("Open (read-only %v) of a database without table %s succeeded", ro, table)
				}
				for _, want := range []string{"table " + table + " missing", "restore the database file from a backup", path} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("Open (read-only %v): %v; want it to say %q", ro, err, want)
					}
				}
			}
			// Still missing: neither Open recreated it.
			s, err = Open(t.Context(), Config{Path: path, ReadOnly: true})
			if err == nil {
				_ = s.Close()
				t.Fatalf("the third Open succeeded: table %s was recreated", table)
			}
		})
	}
}

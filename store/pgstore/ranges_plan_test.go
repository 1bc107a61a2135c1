package pgstore

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestDEKBoundsPlan: on a deks table without statistics (just filled, not
// yet analyzed), DEKBounds' statement walks the (key, id) index in order:
// no bitmap scan of every DEK above a bound and no sort per step, which
// made the walk quadratic (11 s at 1,000,000 DEKs instead of 0.65 s).
func TestDEKBoundsPlan(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	if _, err := s.pool.Exec(ctx, `INSERT INTO deks (id, key, version, wrapped)
		SELECT 'dek-' || lpad(g::text, 7, '0'), 'k', 1, '\x00'::bytea FROM generate_series(0, 19999) g`); err != nil {
		t.Fatal(err)
	}
	explain := func(tx pgx.Tx) (string, error) {
		rows, err := tx.Query(ctx, `EXPLAIN `+boundsSQL, "k", 2, 999)
		lines, err := collect(rows, err, scanID)
		return strings.Join(lines, "\n"), err
	}
	var pinned string
	if err := s.inOrderScan(ctx, func(tx pgx.Tx) (err error) {
		pinned, err = explain(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(pinned, "Sort") || strings.Contains(pinned, "Bitmap") || !strings.Contains(pinned, "Index Scan") {
		t.Errorf("DEKBounds' plan sorts or scans a bitmap (want an index scan in id order):\n%s", pinned)
	}
	// The same statement outside inOrderScan, for the record: what the
	// pinning avoids on this server.
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	free, err := explain(tx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("unpinned plan (sorts: %v):\n%s", strings.Contains(free, "Sort"), free)
}

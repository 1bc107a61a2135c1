package pgstore

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
)

// TestScanPlans: on a deks table without statistics (just filled, not yet
// analyzed), DEKBounds' walk and ListDEKs' batch read the (key, id) index
// in order: no bitmap scan of every DEK above the cursor and no sort. Left
// to itself the planner sorts there, which made the bounds walk quadratic
// (11 s at 1,000,000 DEKs instead of 0.65 s) and each batch's list read
// the rest of the key (24 ms against 0.3 ms with 100,000 DEKs left).
func TestScanPlans(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	if _, err := s.pool.Exec(ctx, `INSERT INTO deks (id, key, version, wrapped)
		SELECT 'dek-' || lpad(g::text, 7, '0'), 'k', 1, '\x00'::bytea FROM generate_series(0, 19999) g`); err != nil {
		t.Fatal(err)
	}
	list, listArgs := listDEKsSQL(rekey.DEKQuery{Key: "k", NotVersion: 2, After: "dek-0000100", Limit: 1000})
	for _, c := range []struct {
		name  string
		query string
		args  []any
	}{
		{"DEKBounds", boundsSQL, []any{"k", 2, 999}},
		{"ListDEKs", list, listArgs},
	} {
		explain := func(tx pgx.Tx) (string, error) {
			rows, err := tx.Query(ctx, `EXPLAIN `+c.query, c.args...)
			lines, err := collect(rows, err, scanID)
			return strings.Join(lines, "\n"), err
		}
		var pinned string
		if err := s.inOrderScan(ctx, `EXPLAIN `+c.query, c.args, func(rows pgx.Rows, err error) error {
			lines, err := collect(rows, err, scanID)
			pinned = strings.Join(lines, "\n")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(pinned, "Sort") || strings.Contains(pinned, "Bitmap") || !strings.Contains(pinned, "Index Scan") {
			t.Errorf("%s's plan sorts or scans a bitmap (want an index scan in id order):\n%s", c.name, pinned)
		}
		// The same statement outside inOrderScan, for the record: what
		// the pinning avoids on this server.
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		free, err := explain(tx)
		_ = tx.Rollback(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s unpinned (sorts: %v):\n%s", c.name, strings.Contains(free, "Sort"), free)
	}
}

package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// schemaTables are the tables of the current schema (after every
// migration). TestSchemaTables keeps the list in step with the migrations.
var schemaTables = []string{
	"audit_checkpoints", "audit_events", "dek_counts", "deks", "key_versions",
	"keys", "leases", "rewrap_ranges", "rotations", "wrap_counts",
}

// checkTables returns an error naming the tables of the current schema
// that db lacks. A table dropped by hand would otherwise show only when a
// command reads it: rekey status reads the DEK counters, not deks, and
// would report a store that lost every DEK as healthy.
func checkTables(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table'`)
	if err != nil {
		return fmt.Errorf("list the tables: %w", mapErr(err))
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return fmt.Errorf("list the tables: %w", mapErr(err))
		}
		have[name] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list the tables: %w", mapErr(err))
	}
	var missing []string
	for _, t := range schemaTables {
		if !have[t] {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the database schema is damaged: table %s missing (removed by hand?); nothing was changed: restore the database file from a backup",
			strings.Join(missing, ", "))
	}
	return nil
}

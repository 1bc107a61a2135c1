package sqlitestore

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migration is one numbered schema change.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations are the embedded migrations in order; migration i has version
// i+1 (numbers are checked to have no gap).
var migrations = mustLoadMigrations(migrationFS)

func mustLoadMigrations(fsys fs.FS) []migration {
	ms, err := loadMigrations(fsys)
	if err != nil {
		panic("sqlitestore: embedded migrations: " + err.Error())
	}
	return ms
}

// loadMigrations reads migrations/NNNN_name.sql files, numbered 1, 2, 3, …
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %s: name it NNNN_what.sql", base)
		}
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(body)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return cmp.Compare(a.version, b.version) })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d (no gaps, no duplicates)", m.name, i+1)
		}
	}
	return ms, nil
}

// migrate brings the schema of db up to the newest embedded migration, in
// one transaction (BEGIN IMMEDIATE: a second process opening the same file
// at once waits, then finds nothing left to do). The schema version is
// PRAGMA user_version, which SQLite keeps in the file header and writes
// transactionally. It returns the versions it applied. wait is how long
// beginImmediate tries again for the write lock (0 for a connection whose
// own busy timeout is the wait).
func migrate(ctx context.Context, db *sql.DB, wait time.Duration) (applied []int, err error) {
	tx, err := beginImmediate(ctx, db, wait)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", mapErr(err))
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var current int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&current); err != nil {
		return nil, fmt.Errorf("migrate: read schema version: %w", mapErr(err))
	}
	if current > len(migrations) {
		return nil, fmt.Errorf("database schema version %d is newer than this rekey knows (%d): upgrade rekey, or restore a backup made before the upgrade", current, len(migrations))
	}
	for _, m := range migrations[current:] {
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return nil, fmt.Errorf("migrate: apply %s: %w", m.name, mapErr(err))
		}
		// PRAGMA takes no parameters; m.version is an int.
		if _, err := tx.ExecContext(ctx, "PRAGMA user_version = "+strconv.Itoa(m.version)); err != nil {
			return nil, fmt.Errorf("migrate: record version %d: %w", m.version, mapErr(err))
		}
		applied = append(applied, m.version)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("migrate: commit: %w", mapErr(err))
	}
	return applied, nil
}

package pgstore

import (
	"cmp"
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
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
// i+1.
var migrations = mustLoadMigrations(migrationFS)

func mustLoadMigrations(fsys fs.FS) []migration {
	ms, err := loadMigrations(fsys)
	if err != nil {
		panic("pgstore: embedded migrations: " + err.Error())
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

// migrationLock is the first half of the advisory lock key taken around a
// migration; the second is a hash of the schema migrated, so that stores
// in different schemas of one database do not wait for each other.
const migrationLock = 0x72656b79 // "reky"

// migrate brings the schema up to the newest embedded migration, in one
// transaction holding a transaction-level advisory lock: replicas starting
// together wait for the first, then find nothing left to do (DDL is
// transactional in PostgreSQL, so a failed migration leaves nothing
// behind). The version applied is recorded in rekey_schema. It returns the
// versions it applied.
func (s *Store) migrate(ctx context.Context) (applied []int, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w%s", mapErr(err), connectAdvice(err))
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	var schema *string
	if err := tx.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return nil, fmt.Errorf("migrate: %w", mapErr(err))
	}
	if schema == nil {
		return nil, fmt.Errorf("migrate: no schema to create the tables in: the search_path names none that exists (create it: CREATE SCHEMA name, or fix search_path in the DSN)")
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, migrationLock, *schema); err != nil {
		return nil, fmt.Errorf("migrate: take the migration lock: %w", mapErr(err))
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS rekey_schema (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("migrate: create rekey_schema in schema %q (does the user have CREATE on it?): %w", *schema, mapErr(err))
	}
	var current int
	if err := tx.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM rekey_schema`).Scan(&current); err != nil {
		return nil, fmt.Errorf("migrate: read schema version: %w", mapErr(err))
	}
	if current > len(migrations) {
		return nil, fmt.Errorf("database schema version %d (schema %q) is newer than this rekey knows (%d): upgrade rekey, or restore a backup made before the upgrade", current, *schema, len(migrations))
	}
	if err := checkTables(ctx, tx, *schema, current); err != nil {
		return nil, err
	}
	for _, m := range migrations[current:] {
		// A multi-statement string goes over the simple protocol.
		if _, err := tx.Exec(ctx, m.sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			return nil, fmt.Errorf("migrate: apply %s: %w", m.name, mapErr(err))
		}
		if _, err := tx.Exec(ctx, `INSERT INTO rekey_schema (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return nil, fmt.Errorf("migrate: record version %d: %w", m.version, mapErr(err))
		}
		applied = append(applied, m.version)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("migrate: commit: %w", mapErr(err))
	}
	return applied, nil
}

package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// connectAdvice says how to fix a failure to connect (err as pgx returned
// it, before mapErr), or "" when there is nothing to add: the server's
// error names the problem (no such database, no such role, wrong
// password) but not what to do about it.
func connectAdvice(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "3D000": // invalid_catalog_name
			return ": create the database (CREATE DATABASE), or fix the database name in store.dsn; if it was dropped, restore it from a backup"
		case "28000", "28P01": // invalid_authorization_specification, invalid_password
			return ": check the user and password of store.dsn (a ${VARIABLE} there, or PGUSER/PGPASSWORD), and that the server lets this user connect (pg_hba.conf)"
		}
		return ""
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || connectionLost(err) {
		return ": check that PostgreSQL is running and reachable at the host and port of store.dsn (or PGHOST/PGPORT), then retry"
	}
	return ""
}

// baseTables are the tables of migration 1: a schema whose rekey_schema
// records it while one of them is gone was damaged or restored in part.
var baseTables = []string{"keys", "key_versions", "deks", "rotations", "leases", "audit_events", "audit_head", "audit_checkpoints"}

// checkTables refuses a schema at version current that lacks one of the
// tables its migrations made: creating them again, empty, would lose the
// DEKs they held while their keys stay in the backend.
func checkTables(ctx context.Context, tx pgx.Tx, schema string, current int) error {
	if current == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT t FROM unnest($1::text[]) AS t
		WHERE to_regclass(quote_ident(current_schema()) || '.' || quote_ident(t)) IS NULL ORDER BY t`, baseTables)
	if err != nil {
		return fmt.Errorf("migrate: check the tables: %w", mapErr(err))
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("migrate: check the tables: %w", mapErr(err))
	}
	if len(missing) > 0 {
		return fmt.Errorf("schema %q is at rekey schema version %d but the tables %s are missing: they were dropped, or the database was restored in part; restore it from a backup (rekey does not create them again, empty: the DEKs they held would be lost). Nothing was changed",
			schema, current, strings.Join(missing, ", "))
	}
	return nil
}

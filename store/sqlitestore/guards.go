package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// auditGuards are the triggers that keep the audit tables append-only, by
// name, with the SQL the migrations create them with. They stop a bug, not
// someone with write access to the file (the hash chain and the MACed
// checkpoints are for that), but a dropped or altered one is evidence of
// such a writer: the store reports it (AuditGuardProblems, Ping) and
// restores it when it opens.
var auditGuards = []struct{ name, sql string }{
	{"audit_events_no_update", `CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END`},
	{"audit_events_no_delete", `CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END`},
	{"audit_checkpoints_no_update", `CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END`},
	{"audit_checkpoints_no_delete", `CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END`},
}

// normSQL collapses whitespace, so that a trigger's SQL compares equal
// whatever its layout.
func normSQL(s string) string { return strings.Join(strings.Fields(s), " ") }

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// brokenGuards returns, for each audit trigger that is missing or whose
// SQL is not the expected one, its name and what is wrong with it.
func brokenGuards(ctx context.Context, q querier) (names, problems []string, err error) {
	rows, err := q.QueryContext(ctx, `SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'`)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	have := map[string]string{}
	for rows.Next() {
		var name, tbl string
		var text sql.NullString
		if err := rows.Scan(&name, &tbl, &text); err != nil {
			return nil, nil, err
		}
		have[name] = text.String
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	for _, g := range auditGuards {
		got, ok := have[g.name]
		switch {
		case !ok:
			names, problems = append(names, g.name), append(problems, fmt.Sprintf("the append-only trigger %s of the audit trail is missing (dropped)", g.name))
		case normSQL(got) != normSQL(g.sql):
			names, problems = append(names, g.name), append(problems, fmt.Sprintf("the append-only trigger %s of the audit trail was altered (its SQL is %q)", g.name, normSQL(got)))
		}
	}
	return names, problems, nil
}

// restoreGuards recreates every missing or altered audit trigger, in one
// write transaction, and returns what it found wrong (nil when all were
// intact).
func (s *Store) restoreGuards(ctx context.Context) ([]string, error) {
	// Checked first without the write lock: intact triggers (the usual
	// case) need no write.
	if names, _, err := brokenGuards(ctx, s.w); err != nil {
		return nil, mapErr(err)
	} else if len(names) == 0 {
		return nil, nil
	}
	var found []string
	err := s.write(ctx, "restore audit triggers", func(tx *sql.Tx) error {
		names, problems, err := brokenGuards(ctx, tx)
		if err != nil {
			return err
		}
		for i, n := range names {
			if _, err := tx.ExecContext(ctx, `DROP TRIGGER IF EXISTS "`+n+`"`); err != nil {
				return err
			}
			for _, g := range auditGuards {
				if g.name == n {
					if _, err := tx.ExecContext(ctx, g.sql); err != nil {
						return err
					}
				}
			}
			found = append(found, problems[i])
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// AuditGuardProblems reports what is wrong with the database's own guards
// of the audit trail (its append-only triggers): each trigger missing or
// altered now, and each one Open found missing or altered and restored
// (evidence that someone with write access to the file dropped it: check
// the trail). Nil means nothing is wrong. The error is the database's.
func (s *Store) AuditGuardProblems(ctx context.Context) ([]string, error) {
	_, problems, err := brokenGuards(ctx, s.r)
	if err != nil {
		return nil, s.fail("check audit triggers", err)
	}
	for _, p := range s.restored {
		problems = append(problems, p+"; restored when this process opened the database")
	}
	return problems, nil
}

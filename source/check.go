package source

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// CheckError lists what is wrong with a source, each problem naming the
// table or column and how to fix it.
type CheckError struct {
	Source   string
	Problems []string
}

// Error lists the problems after the source name.
func (e *CheckError) Error() string {
	return fmt.Sprintf("source %s: %s", e.Source, strings.Join(e.Problems, "; "))
}

type column struct {
	typ string // lower case: pg format_type, sqlite declared type
}

// describe returns the table's columns by name, or an empty map when the
// table does not exist (or rekey may not see it).
func (s *Source) describe(ctx context.Context) (map[string]column, error) {
	cols := map[string]column{}
	var (
		rows *sql.Rows
		err  error
	)
	schema, table := "", s.cfg.Table
	if i := strings.IndexByte(table, '.'); i >= 0 {
		schema, table = table[:i], table[i+1:]
	}
	if s.pg {
		q := `SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f')
  AND (($2 = '' AND pg_table_is_visible(c.oid)) OR n.nspname = $2)`
		rows, err = s.db.QueryContext(ctx, q, table, schema)
	} else if s.my {
		// information_schema shows only what rekey's user has a privilege
		// on: a table it may not read looks missing.
		q := "SELECT column_name, column_type FROM information_schema.columns WHERE table_schema = COALESCE(NULLIF(?, ''), DATABASE()) AND table_name = ?"
		rows, err = s.db.QueryContext(ctx, q, schema, table)
	} else {
		q := "SELECT name, type FROM pragma_table_info(?)"
		args := []any{table}
		if schema != "" {
			q = "SELECT name, type FROM pragma_table_info(?, ?)"
			args = append(args, schema)
		}
		rows, err = s.db.QueryContext(ctx, q, args...)
	}
	if err != nil {
		return nil, s.wrap("read the table's columns", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, s.wrap("read the table's columns", err)
		}
		cols[name] = column{typ: strings.ToLower(typ)}
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("read the table's columns", err)
	}
	return cols, nil
}

// Check verifies the source online: the database answers, the table and
// every configured column exist, their types fit (an integer version, a
// binary wrapped column, an integer or text id), the filter is valid SQL,
// and rekey may SELECT the columns it reads and UPDATE the wrapped and
// version columns. It returns a *CheckError naming every problem, or
// another error when the check itself could not run.
func (s *Source) Check(ctx context.Context) error {
	if err := s.Ping(ctx); err != nil {
		return &CheckError{Source: s.cfg.Name, Problems: []string{fmt.Sprintf("cannot connect to the %s database: %s: check dsn", s.cfg.Driver, err.Error())}}
	}
	cols, err := s.describe(ctx)
	if err != nil {
		return &CheckError{Source: s.cfg.Name, Problems: []string{err.Error()}}
	}
	if len(cols) == 0 {
		return &CheckError{Source: s.cfg.Name, Problems: []string{fmt.Sprintf("table %s does not exist (or rekey's database user cannot see it): check table and the GRANTs", s.cfg.Table)}}
	}
	var probs []string
	need := func(role, name string, fits func(string) bool, want string) {
		if name == "" {
			return
		}
		c, ok := cols[name]
		switch {
		case !ok:
			probs = append(probs, fmt.Sprintf("%s %q does not exist in table %s: check %s", role, name, s.cfg.Table, role))
		case !fits(c.typ):
			probs = append(probs, fmt.Sprintf("%s %q has type %s; it must be %s", role, name, c.typ, want))
		}
	}
	if s.pg {
		need("id_column", s.cfg.IDColumn, func(t string) bool {
			return isPGInt(t) || strings.HasPrefix(t, "text") || strings.HasPrefix(t, "character varying") || t == "uuid"
		}, "an integer, text, varchar or uuid")
		need("wrapped_column", s.cfg.WrappedColumn, func(t string) bool { return t == "bytea" }, "bytea")
		need("version_column", s.cfg.VersionColumn, isPGInt, "an integer (smallint, integer or bigint)")
		need("key_column", s.cfg.KeyColumn, func(t string) bool { return strings.HasPrefix(t, "text") || strings.HasPrefix(t, "character varying") }, "text or varchar")
	} else if s.my {
		has := func(subs ...string) func(string) bool {
			return func(t string) bool {
				for _, sub := range subs {
					if strings.Contains(t, sub) {
						return true
					}
				}
				return false
			}
		}
		need("id_column", s.cfg.IDColumn, has("int", "char"), "an integer, char or varchar")
		need("wrapped_column", s.cfg.WrappedColumn, has("blob", "binary"), "a BLOB or VARBINARY")
		need("version_column", s.cfg.VersionColumn, has("int"), "an integer (INT, BIGINT, …)")
		need("key_column", s.cfg.KeyColumn, has("char", "text"), "VARCHAR, CHAR or TEXT")
	} else {
		need("id_column", s.cfg.IDColumn, func(string) bool { return true }, "")
		need("wrapped_column", s.cfg.WrappedColumn, func(t string) bool { return t == "" || strings.Contains(t, "blob") }, "BLOB")
		need("version_column", s.cfg.VersionColumn, func(t string) bool { return strings.Contains(t, "int") }, "INTEGER")
		need("key_column", s.cfg.KeyColumn, func(t string) bool { return t == "" || strings.Contains(t, "text") || strings.Contains(t, "char") }, "TEXT")
	}
	if len(probs) > 0 {
		return &CheckError{Source: s.cfg.Name, Problems: probs}
	}
	// SELECT the columns rekey reads, through the filter: the database
	// checks the filter's SQL and every SELECT privilege it needs. LIMIT 0
	// reads no row.
	if err := s.readNothing(ctx); err != nil {
		probs = append(probs, fmt.Sprintf("cannot read the columns through the filter (%s): GRANT SELECT on them and on the filter's columns, and check where", err.Error()))
	}
	if s.pg {
		for _, c := range []struct{ col, priv string }{
			{s.cfg.WrappedColumn, "UPDATE"}, {s.cfg.VersionColumn, "UPDATE"},
		} {
			var ok bool
			err := s.db.QueryRowContext(ctx, "SELECT has_column_privilege(CAST($1 AS regclass), $2, $3)", s.table(), c.col, c.priv).Scan(&ok)
			switch {
			case err != nil:
				probs = append(probs, s.wrap("check privileges", err).Error())
			case !ok:
				probs = append(probs, fmt.Sprintf("rekey's database user may not %s column %s of %s: GRANT %s (%s, %s) ON %s TO <rekey user>",
					c.priv, c.col, s.cfg.Table, c.priv, s.cfg.WrappedColumn, s.cfg.VersionColumn, s.cfg.Table))
			}
		}
	} else if s.my {
		// MySQL checks column privileges when it resolves a statement: an
		// UPDATE of both columns that matches no row, rolled back, proves
		// them (or names the one denied).
		if err := s.probeWrite(ctx); err != nil {
			probs = append(probs, fmt.Sprintf("rekey's database user may not update the wrapped and version columns (%s): GRANT UPDATE (%s, %s) ON %s TO <rekey user>",
				err.Error(), s.cfg.WrappedColumn, s.cfg.VersionColumn, s.cfg.Table))
		}
	} else {
		// SQLite has no grants: the file must be writable. An UPDATE that
		// matches no row inside a rolled-back transaction proves it.
		if err := s.probeWrite(ctx); err != nil {
			probs = append(probs, fmt.Sprintf("cannot write the table (%s): make the database file writable by rekey", err.Error()))
		}
	}
	if len(probs) > 0 {
		return &CheckError{Source: s.cfg.Name, Problems: probs}
	}
	return nil
}

func (s *Source) probeWrite(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap("begin", err)
	}
	defer func() { _ = tx.Rollback() }()
	// BEGIN IMMEDIATE is not available through database/sql here; a write
	// statement takes the write lock (and fails on a read-only file) even
	// when no row matches, since SQLite must open the table for writing.
	w, v := s.quoteIdent(s.cfg.WrappedColumn), s.quoteIdent(s.cfg.VersionColumn)
	_, err = tx.ExecContext(ctx, "UPDATE "+s.table()+" SET "+w+" = "+w+", "+v+" = "+v+" WHERE 1 = 0")
	if err != nil {
		return s.wrap("update", err)
	}
	return nil
}

func isPGInt(t string) bool { return t == "smallint" || t == "integer" || t == "bigint" }

// readNothing SELECTs the columns rekey reads, through the filter, with
// LIMIT 0: the database checks the table, the columns, the filter's SQL
// and the SELECT privileges, and reads no row.
func (s *Source) readNothing(ctx context.Context) error {
	read := []string{s.quoteIdent(s.cfg.IDColumn), s.quoteIdent(s.cfg.WrappedColumn), s.quoteIdent(s.cfg.VersionColumn)}
	if s.cfg.KeyColumn != "" {
		read = append(read, s.quoteIdent(s.cfg.KeyColumn))
	}
	q := "SELECT " + strings.Join(read, ", ") + " FROM " + s.table()
	if s.cfg.Where != "" {
		q += " WHERE (" + s.cfg.Where + ")"
	}
	rows, err := s.db.QueryContext(ctx, q+" LIMIT 0")
	if err != nil {
		return s.wrap("select", err)
	}
	return rows.Close()
}

// Probe returns nil when the source's database answers and rekey can read
// its table (the columns it reads, through the filter), reading no row:
// the readiness check of `rekey run`. Unlike Check it does not look at
// types or UPDATE privileges.
func (s *Source) Probe(ctx context.Context) error {
	if err := s.readNothing(ctx); err != nil {
		return err
	}
	return nil
}

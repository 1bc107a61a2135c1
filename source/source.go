// Package source is a rekey.DEKSource over one table of an application's
// own database (DESIGN.md, "DEK sources"): wrapped DEKs that live next to
// the data they encrypt, with a column naming the root-key version that
// wrapped each one. The rotation engine counts, lists and re-wraps them in
// place as it does its own DEKs.
//
// What it promises:
//   - It reads only the id, wrapped, version (and key) columns and the
//     columns the operator's filter names, and it writes only the wrapped
//     and version columns, with a compare-and-swap on the wrapped bytes
//     (UPDATE … WHERE id = ? AND wrapped = ?): a row the application
//     changed meanwhile is never overwritten.
//   - It pages by the id column (keyset pagination), never by offset.
//   - It keeps no state in the application's database: checkpoints and
//     leases live in rekey's store.
//
// The filter (Config.Where) is the operator's SQL, inserted into every
// query as it is: it is trusted configuration, like the DSN. Identifiers
// (table, columns) are quoted.
//
// Drivers: "sqlite" (github.com/mattn/go-sqlite3), "postgres" (pgx
// through database/sql) and "mysql" (MySQL or MariaDB, through
// github.com/go-sql-driver/mysql; the table's SCHEMA is its database).
//
// Formats (Config.Format): "rekey", the bytes rekey's GenerateDataKey
// returns, and "aws-native", CiphertextBlobs the application made with the
// AWS SDK; the SQL is the same, the engine re-wraps the latter natively
// (rotation.Source.Native) and trusts no version column of theirs.
package source

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/redact"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "github.com/mattn/go-sqlite3"    // database/sql driver "sqlite3"
)

// Drivers.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
	DriverMySQL    = "mysql"
)

// Config declares one source. Its fields mirror config.SourceConfig.
type Config struct {
	Name          string
	Driver        string // DriverSQLite, DriverPostgres or DriverMySQL
	DSN           string // never printed
	Table         string // NAME or SCHEMA.NAME
	IDColumn      string
	WrappedColumn string
	VersionColumn string
	Key           string // every row's key, or
	KeyColumn     string // a column naming each row's key
	Where         string // optional SQL condition (trusted)
	// Format is what the wrapped column holds: FormatRekey (also when
	// empty) or FormatAWSNative. The SQL is the same for both; the engine
	// re-wraps an aws-native row natively (see rotation.Source.Native).
	Format string
	// EncryptionContext is the encryption context of aws-native
	// ciphertexts (nil: none).
	EncryptionContext map[string]string
}

// Formats of the wrapped column (Config.Format).
const (
	FormatRekey     = "rekey"      // what rekey's GenerateDataKey returns
	FormatAWSNative = "aws-native" // an AWS SDK CiphertextBlob, made without rekey
)

// Native reports whether the source holds the backend's own ciphertexts
// made outside rekey (FormatAWSNative).
func (c Config) Native() bool { return c.Format == FormatAWSNative }

// Source is a rekey.DEKSource over one table. It is safe for concurrent
// use.
type Source struct {
	cfg Config
	db  *sql.DB
	pg  bool
	my  bool // MySQL / MariaDB

	mu     sync.Mutex
	idType string // the id column's SQL type (pg: format_type), read once
}

var _ rekey.DEKSource = (*Source)(nil)

// Open prepares the source; it does not connect (the first query does, and
// Check reports what is wrong). It returns an error wrapping
// rekey.ErrInvalidArgument for a config that lacks a field.
func Open(cfg Config) (*Source, error) {
	var missing []string
	for _, f := range []struct{ n, v string }{{"name", cfg.Name}, {"dsn", cfg.DSN}, {"table", cfg.Table}, {"id_column", cfg.IDColumn}, {"wrapped_column", cfg.WrappedColumn}, {"version_column", cfg.VersionColumn}} {
		if f.v == "" {
			missing = append(missing, f.n)
		}
	}
	if (cfg.Key == "") == (cfg.KeyColumn == "") {
		missing = append(missing, "exactly one of key and key_column")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: source %s: set %s", rekey.ErrInvalidArgument, cfg.Name, strings.Join(missing, ", "))
	}
	switch cfg.Format {
	case "", FormatRekey, FormatAWSNative:
	default:
		return nil, fmt.Errorf("%w: source %s: unknown format %q: use %s or %s", rekey.ErrInvalidArgument, cfg.Name, cfg.Format, FormatRekey, FormatAWSNative)
	}
	if len(cfg.EncryptionContext) > 0 && !cfg.Native() {
		return nil, fmt.Errorf("%w: source %s: an encryption context is only for format %s", rekey.ErrInvalidArgument, cfg.Name, FormatAWSNative)
	}
	s := &Source{cfg: cfg}
	var err error
	switch cfg.Driver {
	case DriverSQLite:
		dsn := cfg.DSN
		// Only a busy timeout: the application's journal mode and other
		// settings are its own.
		if !strings.Contains(dsn, "_busy_timeout") {
			sep := "?"
			if strings.Contains(dsn, "?") {
				sep = "&"
			}
			dsn += sep + "_busy_timeout=5000"
		}
		s.db, err = sql.Open("sqlite3", dsn)
	case DriverPostgres:
		s.pg = true
		s.db, err = sql.Open("pgx", cfg.DSN)
		if err == nil {
			s.db.SetMaxOpenConns(4)
		}
	case DriverMySQL:
		s.my = true
		var mc *mysql.Config
		mc, err = mysql.ParseDSN(cfg.DSN)
		if err != nil {
			return nil, fmt.Errorf("%w: source %s: dsn is not a MySQL DSN (USER:PASSWORD@tcp(HOST:3306)/DB): %s", rekey.ErrInvalidArgument, cfg.Name, redact.Text(err.Error()))
		}
		// Rows "affected" must be the rows matched: the compare-and-swap
		// counts on it.
		mc.ClientFoundRows = true
		var conn driver.Connector
		if conn, err = mysql.NewConnector(mc); err == nil {
			s.db = sql.OpenDB(conn)
			s.db.SetMaxOpenConns(4)
		}
	default:
		return nil, fmt.Errorf("%w: source %s: unknown driver %q: use sqlite, postgres or mysql", rekey.ErrInvalidArgument, cfg.Name, cfg.Driver)
	}
	if err != nil {
		return nil, fmt.Errorf("source %s: open %s database: %s", cfg.Name, cfg.Driver, redact.Text(err.Error()))
	}
	return s, nil
}

// Name returns the source's name.
func (s *Source) Name() string { return s.cfg.Name }

// Config returns the source's configuration (its DSN included: do not
// print it).
func (s *Source) Config() Config { return s.cfg }

// Holds reports whether rows of key can be in this source: always with a
// key column, else only for the source's one key.
func (s *Source) Holds(key string) bool { return s.cfg.KeyColumn != "" || s.cfg.Key == key }

// Close closes the database handle.
func (s *Source) Close() error { return s.db.Close() }

// quoteIdent quotes one identifier: double quotes (SQLite, PostgreSQL),
// or backticks (MySQL, whose double quotes are strings by default).
func (s *Source) quoteIdent(name string) string {
	if s.my {
		return "`" + strings.ReplaceAll(name, "`", "``") + "`"
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// table is the quoted table name (schema.table quoted part by part).
func (s *Source) table() string {
	parts := strings.Split(s.cfg.Table, ".")
	for i, p := range parts {
		parts[i] = s.quoteIdent(p)
	}
	return strings.Join(parts, ".")
}

// ph is the n-th (1-based) placeholder.
func (s *Source) ph(n int) string {
	if s.pg {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// idParam is the placeholder for an id compared with the id column: in
// PostgreSQL the id travels as text and is cast to the column's type, so
// that integer, text and uuid ids all compare (and order) natively.
func (s *Source) idParam(ctx context.Context, n int) (string, error) {
	if !s.pg {
		return s.ph(n), nil
	}
	t, err := s.idColumnType(ctx)
	if err != nil {
		return "", err
	}
	return "CAST(CAST(" + s.ph(n) + " AS text) AS " + t + ")", nil
}

// idColumnType returns the id column's type (PostgreSQL), read once.
func (s *Source) idColumnType(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idType != "" {
		return s.idType, nil
	}
	cols, err := s.describe(ctx)
	if err != nil {
		return "", err
	}
	c, ok := cols[s.cfg.IDColumn]
	if !ok {
		return "", fmt.Errorf("source %s: column %s of table %s does not exist: run rekey source check %s", s.cfg.Name, s.cfg.IDColumn, s.cfg.Table, s.cfg.Name)
	}
	s.idType = c.typ
	return c.typ, nil
}

// filter returns the WHERE conditions every read applies (the operator's
// filter and the key), with their arguments from placeholder next on.
func (s *Source) filter(key string, next int) ([]string, []any) {
	var conds []string
	var args []any
	if s.cfg.Where != "" {
		conds = append(conds, "("+s.cfg.Where+")")
	}
	if s.cfg.KeyColumn != "" {
		conds = append(conds, s.quoteIdent(s.cfg.KeyColumn)+" = "+s.ph(next))
		args = append(args, key)
	}
	return conds, args
}

func (s *Source) idSelect() string {
	if s.pg {
		// Aliased: an output column named like the id column would make
		// ORDER BY sort by the text (PostgreSQL prefers output names).
		return "CAST(" + s.quoteIdent(s.cfg.IDColumn) + " AS text) AS rekey_id_text"
	}
	return s.quoteIdent(s.cfg.IDColumn)
}

// ListDEKs returns up to q.Limit rows of q.Key matching q (and the filter),
// in ascending id order. It returns ErrInvalidArgument when q.Key is empty.
func (s *Source) ListDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	return s.list(ctx, q, "")
}

// ListDEKsUpTo is ListDEKs limited to ids up to upTo (inclusive, in the id
// column's own order; "" is no bound): the rows of one range of a shared
// re-wrap (rotation's source ranges).
func (s *Source) ListDEKsUpTo(ctx context.Context, q rekey.DEKQuery, upTo string) ([]rekey.DEK, error) {
	return s.list(ctx, q, upTo)
}

func (s *Source) list(ctx context.Context, q rekey.DEKQuery, upTo string) ([]rekey.DEK, error) {
	if q.Key == "" {
		return nil, fmt.Errorf("%w: source %s: list DEKs: key is required", rekey.ErrInvalidArgument, s.cfg.Name)
	}
	if !s.Holds(q.Key) {
		return nil, nil
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	conds, args := s.filter(q.Key, 1)
	if q.Version > 0 {
		args = append(args, q.Version)
		conds = append(conds, s.quoteIdent(s.cfg.VersionColumn)+" = "+s.ph(len(args)))
	}
	if q.NotVersion > 0 {
		// A NULL version is "not on" any version: list it, so that it is
		// met (and reported) rather than silently skipped.
		args = append(args, q.NotVersion)
		conds = append(conds, "("+s.quoteIdent(s.cfg.VersionColumn)+" IS NULL OR "+s.quoteIdent(s.cfg.VersionColumn)+" <> "+s.ph(len(args))+")")
	}
	if q.After != "" {
		args = append(args, q.After)
		p, err := s.idParam(ctx, len(args))
		if err != nil {
			return nil, err
		}
		conds = append(conds, s.quoteIdent(s.cfg.IDColumn)+" > "+p)
	}
	if upTo != "" {
		args = append(args, upTo)
		p, err := s.idParam(ctx, len(args))
		if err != nil {
			return nil, err
		}
		conds = append(conds, s.quoteIdent(s.cfg.IDColumn)+" <= "+p)
	}
	query := "SELECT " + s.idSelect() + ", " + s.quoteIdent(s.cfg.WrappedColumn) + ", " + s.quoteIdent(s.cfg.VersionColumn) + " FROM " + s.table()
	if len(conds) > 0 {
		query += " WHERE " + strings.Join(conds, " AND ")
	}
	query += " ORDER BY " + s.quoteIdent(s.cfg.IDColumn) + " LIMIT " + strconv.Itoa(limit)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.wrap("list DEKs", err)
	}
	defer rows.Close()
	var out []rekey.DEK
	for rows.Next() {
		d, err := s.scan(rows, q.Key)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("list DEKs", err)
	}
	return out, nil
}

func (s *Source) scan(rows interface{ Scan(...any) error }, key string) (rekey.DEK, error) {
	var (
		id      any
		wrapped []byte
		version sql.NullInt64
	)
	if err := rows.Scan(&id, &wrapped, &version); err != nil {
		return rekey.DEK{}, s.wrap("read row", err)
	}
	return rekey.DEK{ID: idString(id), Key: key, Version: int(version.Int64), Wrapped: wrapped}, nil
}

func idString(v any) string {
	switch v := v.(type) {
	case int64:
		return strconv.FormatInt(v, 10)
	case []byte:
		return string(v)
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}

// GetDEK returns the row with that id if it is a row of this source (the
// filter holds), or rekey.ErrDEKNotFound. With a key column the row's key
// comes from it; otherwise it is the source's key.
func (s *Source) GetDEK(ctx context.Context, id string) (rekey.DEK, error) {
	keySel := "NULL"
	if s.cfg.KeyColumn != "" {
		keySel = s.quoteIdent(s.cfg.KeyColumn)
	}
	var conds []string
	if s.cfg.Where != "" {
		conds = append(conds, "("+s.cfg.Where+")")
	}
	p, err := s.idParam(ctx, 1)
	if err != nil {
		return rekey.DEK{}, err
	}
	conds = append(conds, s.quoteIdent(s.cfg.IDColumn)+" = "+p)
	query := "SELECT " + s.idSelect() + ", " + s.quoteIdent(s.cfg.WrappedColumn) + ", " + s.quoteIdent(s.cfg.VersionColumn) + ", " + keySel +
		" FROM " + s.table() + " WHERE " + strings.Join(conds, " AND ")
	var (
		rid     any
		wrapped []byte
		version sql.NullInt64
		key     sql.NullString
	)
	err = s.db.QueryRowContext(ctx, query, id).Scan(&rid, &wrapped, &version, &key)
	if errors.Is(err, sql.ErrNoRows) {
		return rekey.DEK{}, fmt.Errorf("source %s row %s: %w", s.cfg.Name, id, rekey.ErrDEKNotFound)
	}
	if err != nil {
		return rekey.DEK{}, s.wrap("read row "+id, err)
	}
	k := s.cfg.Key
	if s.cfg.KeyColumn != "" {
		k = key.String
	}
	return rekey.DEK{ID: idString(rid), Key: k, Version: int(version.Int64), Wrapped: wrapped}, nil
}

// SwapDEKs applies each swap whose row still holds OldWrapped (and still
// matches the filter), in one transaction, writing only the wrapped and
// version columns. It returns the ids of the swaps that lost; those rows
// are unchanged. The fence is not checked here: the application's
// database knows nothing of rekey's leases, so the engine confirms its
// lease in rekey's store before each batch, and the compare-and-swap keeps
// a late writer from overwriting anything but the exact bytes it read.
func (s *Source) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, _ rekey.Lease) ([]string, error) {
	if len(swaps) == 0 {
		return nil, nil
	}
	if s.pg {
		return s.swapPG(ctx, swaps)
	}
	p, err := s.idParam(ctx, 3)
	if err != nil {
		return nil, err
	}
	query := "UPDATE " + s.table() + " SET " + s.quoteIdent(s.cfg.WrappedColumn) + " = " + s.ph(1) + ", " + s.quoteIdent(s.cfg.VersionColumn) + " = " + s.ph(2) +
		" WHERE " + s.quoteIdent(s.cfg.IDColumn) + " = " + p + " AND " + s.quoteIdent(s.cfg.WrappedColumn) + " = " + s.ph(4)
	if s.cfg.Where != "" {
		query += " AND (" + s.cfg.Where + ")"
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, s.wrap("begin swap", err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, query)
	if err != nil {
		return nil, s.wrap("prepare swap", err)
	}
	defer stmt.Close()
	var lost []string
	for _, sw := range swaps {
		res, err := stmt.ExecContext(ctx, sw.NewWrapped, sw.NewVersion, sw.ID, sw.OldWrapped)
		if err != nil {
			return nil, s.wrap("swap row "+sw.ID, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, s.wrap("swap row "+sw.ID, err)
		}
		if n == 0 {
			lost = append(lost, sw.ID)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, s.wrap("commit swap", err)
	}
	return lost, nil
}

// swapPG is SwapDEKs in one statement: the swaps travel as arrays
// (unnest), and RETURNING names the rows that took them.
func (s *Source) swapPG(ctx context.Context, swaps []rekey.DEKSwap) ([]string, error) {
	t, err := s.idColumnType(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(swaps))
	olds := make([][]byte, len(swaps))
	news := make([][]byte, len(swaps))
	vers := make([]int64, len(swaps))
	for i, sw := range swaps {
		ids[i], olds[i], news[i], vers[i] = sw.ID, sw.OldWrapped, sw.NewWrapped, int64(sw.NewVersion)
	}
	tbl, id, w := s.table(), s.quoteIdent(s.cfg.IDColumn), s.quoteIdent(s.cfg.WrappedColumn)
	query := "UPDATE " + tbl + " SET " + w + " = v.rekey_new, " + s.quoteIdent(s.cfg.VersionColumn) + " = v.rekey_ver" +
		" FROM unnest(CAST($1 AS text[]), CAST($2 AS bytea[]), CAST($3 AS bytea[]), CAST($4 AS bigint[])) AS v(rekey_id, rekey_old, rekey_new, rekey_ver)" +
		" WHERE " + tbl + "." + id + " = CAST(v.rekey_id AS " + t + ") AND " + tbl + "." + w + " = v.rekey_old"
	if s.cfg.Where != "" {
		query += " AND (" + s.cfg.Where + ")"
	}
	query += " RETURNING v.rekey_id"
	rows, err := s.db.QueryContext(ctx, query, ids, olds, news, vers)
	if err != nil {
		return nil, s.wrap("swap rows", err)
	}
	defer rows.Close()
	applied := make(map[string]bool, len(swaps))
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, s.wrap("swap rows", err)
		}
		applied[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("swap rows", err)
	}
	var lost []string
	for _, sw := range swaps {
		if !applied[sw.ID] {
			lost = append(lost, sw.ID)
		}
	}
	return lost, nil
}

// CountDEKs returns how many rows of key (matching the filter) reference
// each version. Rows whose version is NULL count under version 0.
func (s *Source) CountDEKs(ctx context.Context, key string) (map[int]int64, error) {
	out := map[int]int64{}
	if !s.Holds(key) {
		return out, nil
	}
	conds, args := s.filter(key, 1)
	query := "SELECT " + s.quoteIdent(s.cfg.VersionColumn) + ", COUNT(*) FROM " + s.table()
	if len(conds) > 0 {
		query += " WHERE " + strings.Join(conds, " AND ")
	}
	query += " GROUP BY " + s.quoteIdent(s.cfg.VersionColumn)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.wrap("count DEKs", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v sql.NullInt64
		var n int64
		if err := rows.Scan(&v, &n); err != nil {
			return nil, s.wrap("count DEKs", err)
		}
		out[int(v.Int64)] += n
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("count DEKs", err)
	}
	return out, nil
}

// Ping returns nil when the application's database answers.
func (s *Source) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return s.wrap("connect", err)
	}
	return nil
}

// wrap names the source in a database error, with any credential the
// driver put in its message removed. A connection failure is an
// *rekey.UnreachableError (transient).
func (s *Source) wrap(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("source %s: %s: %w", s.cfg.Name, op, err)
	}
	return fmt.Errorf("source %s (table %s): %s: %s", s.cfg.Name, s.cfg.Table, op, redact.Text(err.Error()))
}

// KeysNamed returns how many rows (matching the filter) name each key:
// grouped by the key column, a NULL key counted under "", or, with one key
// for all rows, that key and the table's row count.
func (s *Source) KeysNamed(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	sel, group := "NULL", ""
	if s.cfg.KeyColumn != "" {
		sel, group = s.quoteIdent(s.cfg.KeyColumn), " GROUP BY "+s.quoteIdent(s.cfg.KeyColumn)
	}
	query := "SELECT " + sel + ", COUNT(*) FROM " + s.table()
	if s.cfg.Where != "" {
		query += " WHERE (" + s.cfg.Where + ")"
	}
	rows, err := s.db.QueryContext(ctx, query+group)
	if err != nil {
		return nil, s.wrap("count rows per key", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k sql.NullString
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			return nil, s.wrap("count rows per key", err)
		}
		if s.cfg.KeyColumn == "" {
			k.String = s.cfg.Key
		}
		if n > 0 {
			out[k.String] += n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("count rows per key", err)
	}
	return out, nil
}

// DEKBounds returns the id of every every-th row of key not on notVersion
// (a NULL version included), in the id column's order: the upper bounds
// of ranges of about every rows each, as rekey.RangeSharer.DEKBounds does
// for rekey's own DEKs. It reads ids only, one keyset step per bound.
func (s *Source) DEKBounds(ctx context.Context, key string, notVersion, every int) ([]string, error) {
	if key == "" || every <= 0 {
		return nil, fmt.Errorf("%w: source %s: dek bounds need a key and a positive step (got %q, %d)", rekey.ErrInvalidArgument, s.cfg.Name, key, every)
	}
	if !s.Holds(key) {
		return nil, nil
	}
	var out []string
	after := ""
	for {
		conds, args := s.filter(key, 1)
		if notVersion > 0 {
			args = append(args, notVersion)
			conds = append(conds, "("+s.quoteIdent(s.cfg.VersionColumn)+" IS NULL OR "+s.quoteIdent(s.cfg.VersionColumn)+" <> "+s.ph(len(args))+")")
		}
		if after != "" {
			args = append(args, after)
			p, err := s.idParam(ctx, len(args))
			if err != nil {
				return nil, err
			}
			conds = append(conds, s.quoteIdent(s.cfg.IDColumn)+" > "+p)
		}
		query := "SELECT " + s.idSelect() + " FROM " + s.table()
		if len(conds) > 0 {
			query += " WHERE " + strings.Join(conds, " AND ")
		}
		query += " ORDER BY " + s.quoteIdent(s.cfg.IDColumn) + " LIMIT 1 OFFSET " + strconv.Itoa(every-1)
		var id any
		err := s.db.QueryRowContext(ctx, query, args...).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return out, nil
		}
		if err != nil {
			return nil, s.wrap("dek bounds", err)
		}
		after = idString(id)
		out = append(out, after)
	}
}

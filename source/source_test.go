package source_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/source"
)

// appDB is an application database with a table of wrapped DEKs and other
// columns, as a test sees it.
type appDB struct {
	driver string
	dsn    string // for the source
	db     *sql.DB
	table  string // as the source names it
	where  string // excludes the rows with deleted set
	pg     bool
}

// ph returns the n-th placeholder of the dialect.
func (a *appDB) ph(n int) string {
	if a.pg {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

func (a *appDB) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	if _, err := a.db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// insert adds row id with wrapped bytes w on version v; deleted rows are
// outside the source's filter.
func (a *appDB) insert(t testing.TB, id int, w []byte, v int, deleted bool) {
	t.Helper()
	del := any(0)
	if a.pg {
		del = deleted
	} else if deleted {
		del = 1
	}
	a.exec(t, fmt.Sprintf("INSERT INTO %s (id, tenant, wrapped_dek, key_version, note, deleted) VALUES (%s,%s,%s,%s,%s,%s)",
		a.table, a.ph(1), a.ph(2), a.ph(3), a.ph(4), a.ph(5), a.ph(6)),
		id, "tenant-"+strconv.Itoa(id%7), w, v, "note "+strconv.Itoa(id), del)
}

// hashOthers returns every row's columns other than wrapped and version,
// and whole rows of excluded ones, as one string to compare before/after.
func (a *appDB) snapshot(t testing.TB) string {
	t.Helper()
	rows, err := a.db.Query("SELECT id, tenant, note, deleted, wrapped_dek, key_version FROM " + a.table + " ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var (
			id        int64
			tenant    string
			note      sql.NullString
			deleted   any
			wrapped   []byte
			version   sql.NullInt64
			isDeleted bool
		)
		if err := rows.Scan(&id, &tenant, &note, &deleted, &wrapped, &version); err != nil {
			t.Fatal(err)
		}
		switch d := deleted.(type) {
		case bool:
			isDeleted = d
		case int64:
			isDeleted = d != 0
		case []byte: // MySQL's text protocol
			isDeleted = string(d) != "0"
		}
		fmt.Fprintf(&b, "%d|%s|%s|%v", id, tenant, note.String, isDeleted)
		if isDeleted {
			fmt.Fprintf(&b, "|%x|%d", wrapped, version.Int64)
		}
		b.WriteByte('\n')
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func (a *appDB) source(t testing.TB, mod func(*source.Config)) *source.Source {
	t.Helper()
	cfg := source.Config{Name: "orders", Driver: a.driver, DSN: a.dsn, Table: a.table, IDColumn: "id",
		WrappedColumn: "wrapped_dek", VersionColumn: "key_version", Key: "payments", Where: a.where}
	if mod != nil {
		mod(&cfg)
	}
	s, err := source.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newSQLite returns an application SQLite database in a temp dir.
func newSQLite(t testing.TB) *appDB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	db, err := sql.Open("sqlite3", path+"?_busy_timeout=5000&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a := &appDB{driver: source.DriverSQLite, dsn: path, db: db, table: "order_keys", where: "deleted = 0"}
	a.exec(t, `CREATE TABLE order_keys (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, wrapped_dek BLOB, key_version INTEGER, note TEXT, deleted INTEGER NOT NULL DEFAULT 0)`)
	return a
}

const dsnEnv = "REKEY_TEST_PG_DSN"

// pgDSN returns the test server's DSN: a missing server fails the test
// under CI and skips it otherwise, naming the command that starts one.
func pgDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(dsnEnv)
	if dsn == "" {
		const how = dsnEnv + " is not set: start a throwaway PostgreSQL with `eval \"$(scripts/pg start)\"` (stop it with `scripts/pg stop`), or run scripts/test, which does both"
		if os.Getenv("CI") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	return dsn
}

// newPG returns an application table in a schema of its own in the test
// PostgreSQL, named schema.order_keys.
func newPG(t testing.TB) *appDB {
	t.Helper()
	dsn := pgDSN(t)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "app_" + hex.EncodeToString(b[:])
	a := &appDB{driver: source.DriverPostgres, dsn: dsn, db: db, table: schema + ".order_keys", where: "NOT deleted", pg: true}
	a.exec(t, "CREATE SCHEMA "+schema)
	t.Cleanup(func() { _, _ = db.Exec("DROP SCHEMA " + schema + " CASCADE") })
	a.exec(t, `CREATE TABLE `+a.table+` (id bigint PRIMARY KEY, tenant text NOT NULL, wrapped_dek bytea, key_version integer, note text, deleted boolean NOT NULL DEFAULT false)`)
	return a
}

// withUser returns dsn logging in as user with password pw.
func withUser(t testing.TB, dsn, user, pw string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, pw)
	return u.String()
}

const mysqlEnv = "REKEY_TEST_MYSQL_DSN"

// mysqlDSN returns the test MariaDB's DSN (go-sql-driver form): a missing
// server fails the test under CI and skips it otherwise, naming the
// command that starts one.
func mysqlDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(mysqlEnv)
	if dsn == "" {
		const how = mysqlEnv + " is not set: start a throwaway MariaDB with `eval \"$(scripts/mariadb start)\"` (stop it with `scripts/mariadb stop`), or run scripts/test, which does both"
		if os.Getenv("CI") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	return dsn
}

// newMySQL returns an application table in a database of its own in the
// test MariaDB, named database.order_keys.
func newMySQL(t testing.TB) *appDB {
	t.Helper()
	dsn := mysqlDSN(t)
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "app_" + hex.EncodeToString(b[:])
	a := &appDB{driver: source.DriverMySQL, dsn: dsn, db: db, table: schema + ".order_keys", where: "deleted = 0"}
	a.exec(t, "CREATE DATABASE "+schema)
	t.Cleanup(func() { _, _ = db.Exec("DROP DATABASE " + schema) })
	a.exec(t, `CREATE TABLE `+a.table+` (id BIGINT PRIMARY KEY, tenant VARCHAR(64) NOT NULL, wrapped_dek BLOB, key_version INT, note TEXT, deleted BOOLEAN NOT NULL DEFAULT 0)`)
	return a
}

// withMySQLUser returns the go-sql-driver dsn logging in as user with
// password pw.
func withMySQLUser(t testing.TB, dsn, user, pw string) string {
	t.Helper()
	c, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	c.User, c.Passwd = user, pw
	return c.FormatDSN()
}

func eachDB(t *testing.T, f func(t *testing.T, a *appDB)) {
	t.Run("sqlite", func(t *testing.T) { t.Parallel(); f(t, newSQLite(t)) })
	t.Run("postgres", func(t *testing.T) { t.Parallel(); f(t, newPG(t)) })
	t.Run("mysql", func(t *testing.T) { t.Parallel(); f(t, newMySQL(t)) })
}

func wrappedOf(id, v int) []byte { return []byte(fmt.Sprintf("w%d-v%d", id, v)) }

func TestListCountSwap(t *testing.T) {
	t.Parallel()
	eachDB(t, func(t *testing.T, a *appDB) {
		ctx := context.Background()
		// ids 1..25: 9 < 10 < 25 numerically, not as text.
		for id := 1; id <= 25; id++ {
			v := 1
			if id%5 == 0 {
				v = 2
			}
			a.insert(t, id, wrappedOf(id, v), v, id%6 == 0)
		}
		s := a.source(t, nil)
		before := a.snapshot(t)

		counts, err := s.CountDEKs(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		// 25 rows, 4 deleted (6,12,18,24), of the rest 5 on version 2.
		if want := map[int]int64{1: 16, 2: 5}; !mapsEqual(counts, want) {
			t.Errorf("CountDEKs = %v, want %v", counts, want)
		}
		if c, err := s.CountDEKs(ctx, "other"); err != nil || len(c) != 0 {
			t.Errorf("CountDEKs(other) = %v, %v; want none", c, err)
		}

		var ids []string
		cursor := ""
		for {
			page, err := s.ListDEKs(ctx, rekey.DEKQuery{Key: "payments", NotVersion: 2, After: cursor, Limit: 7})
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, d := range page {
				if d.Version != 1 || d.Key != "payments" || !bytes.Equal(d.Wrapped, wrappedOf(mustAtoi(t, d.ID), 1)) {
					t.Errorf("listed %+v", d)
				}
				ids = append(ids, d.ID)
			}
			cursor = page[len(page)-1].ID
		}
		var want []string
		for id := 1; id <= 25; id++ {
			if id%5 != 0 && id%6 != 0 {
				want = append(want, strconv.Itoa(id))
			}
		}
		if !slices.Equal(ids, want) {
			t.Errorf("paged ids = %v, want %v", ids, want)
		}

		// Compare-and-swap: 1 and 2 apply; 3 lost (stale old bytes); 6
		// is outside the filter and loses too.
		lost, err := s.SwapDEKs(ctx, []rekey.DEKSwap{
			{ID: "1", OldWrapped: wrappedOf(1, 1), NewWrapped: wrappedOf(1, 3), NewVersion: 3},
			{ID: "2", OldWrapped: wrappedOf(2, 1), NewWrapped: wrappedOf(2, 3), NewVersion: 3},
			{ID: "3", OldWrapped: []byte("stale"), NewWrapped: wrappedOf(3, 3), NewVersion: 3},
			{ID: "6", OldWrapped: wrappedOf(6, 1), NewWrapped: wrappedOf(6, 3), NewVersion: 3},
		}, rekey.Lease{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(lost, []string{"3", "6"}) {
			t.Errorf("lost = %v, want [3 6]", lost)
		}
		for id, want := range map[string]rekey.DEK{"1": {Version: 3, Wrapped: wrappedOf(1, 3)}, "3": {Version: 1, Wrapped: wrappedOf(3, 1)}} {
			got, err := s.GetDEK(ctx, id)
			if err != nil || got.Version != want.Version || !bytes.Equal(got.Wrapped, want.Wrapped) || got.Key != "payments" {
				t.Errorf("GetDEK(%s) = %+v, %v; want version %d", id, got, err, want.Version)
			}
		}
		if _, err := s.GetDEK(ctx, "6"); !errors.Is(err, rekey.ErrDEKNotFound) {
			t.Errorf("GetDEK of a filtered-out row: %v, want ErrDEKNotFound", err)
		}
		if after := a.snapshot(t); after != before {
			t.Errorf("other columns or excluded rows changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

func TestKeyColumn(t *testing.T) {
	t.Parallel()
	eachDB(t, func(t *testing.T, a *appDB) {
		ctx := context.Background()
		for id := 1; id <= 6; id++ {
			a.insert(t, id, wrappedOf(id, 1), 1, false)
		}
		// tenant-1 .. tenant-6 name the key per row.
		s := a.source(t, func(c *source.Config) { c.Key, c.KeyColumn = "", "tenant" })
		c, err := s.CountDEKs(ctx, "tenant-3")
		if err != nil || !mapsEqual(c, map[int]int64{1: 1}) {
			t.Errorf("CountDEKs(tenant-3) = %v, %v", c, err)
		}
		deks, err := s.ListDEKs(ctx, rekey.DEKQuery{Key: "tenant-4"})
		if err != nil || len(deks) != 1 || deks[0].ID != "4" || deks[0].Key != "tenant-4" {
			t.Errorf("ListDEKs(tenant-4) = %+v, %v", deks, err)
		}
		if d, err := s.GetDEK(ctx, "5"); err != nil || d.Key != "tenant-5" {
			t.Errorf("GetDEK(5) = %+v, %v", d, err)
		}
	})
}

func TestCheck(t *testing.T) {
	t.Parallel()
	eachDB(t, func(t *testing.T, a *appDB) {
		ctx := context.Background()
		if err := a.source(t, nil).Check(ctx); err != nil {
			t.Fatalf("Check of a good source: %v", err)
		}
		for _, tc := range []struct {
			name string
			mod  func(*source.Config)
			want string
		}{
			{"no table", func(c *source.Config) { c.Table += "_nope" }, "does not exist"},
			{"no column", func(c *source.Config) { c.VersionColumn = "kv" }, `version_column "kv" does not exist`},
			{"wrong type", func(c *source.Config) { c.VersionColumn = "note" }, `version_column "note" has type`},
			{"bad filter", func(c *source.Config) { c.Where = "no_such_col = 1" }, "filter"},
			{"bad dsn", func(c *source.Config) {
				if a.pg {
					c.DSN = withUser(t, c.DSN, "nobody", "hunter2")
				} else if a.driver == source.DriverMySQL {
					c.DSN = withMySQLUser(t, c.DSN, "nobody", "hunter2")
				} else {
					c.DSN = filepath.Join(t.TempDir(), "missing", "app.db")
				}
			}, "cannot connect"},
		} {
			err := a.source(t, tc.mod).Check(ctx)
			var ce *source.CheckError
			if !errors.As(err, &ce) || ce.Source != "orders" || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: Check = %v; want a CheckError naming source orders and %q", tc.name, err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("%s: the error repeats the password: %v", tc.name, err)
			}
		}
	})
}

// TestLeastPrivilege runs the README's GRANT statements for a role and
// shows rekey needs exactly those: with them the check passes and a swap
// works; without UPDATE on the version column the check names it.
func TestLeastPrivilege(t *testing.T) {
	t.Parallel()
	a := newPG(t)
	ctx := context.Background()
	a.insert(t, 1, wrappedOf(1, 1), 1, false)
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "rekey_" + hex.EncodeToString(b[:])
	schema := strings.Split(a.table, ".")[0]
	a.exec(t, "CREATE ROLE "+role+" LOGIN PASSWORD 'pw'")
	t.Cleanup(func() {
		_, _ = a.db.Exec("DROP OWNED BY " + role)
		_, _ = a.db.Exec("DROP ROLE " + role)
	})
	a.exec(t, "GRANT USAGE ON SCHEMA "+schema+" TO "+role)
	// The README's statements: SELECT on id, version, wrapped and the
	// filter's column; UPDATE on wrapped and version only.
	a.exec(t, "GRANT SELECT (id, key_version, wrapped_dek, deleted) ON "+a.table+" TO "+role)
	a.exec(t, "GRANT UPDATE (wrapped_dek) ON "+a.table+" TO "+role)
	dsn := withUser(t, a.dsn, role, "pw")
	s := a.source(t, func(c *source.Config) { c.DSN = dsn })
	err := s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), "UPDATE column key_version") {
		t.Errorf("Check without UPDATE on the version column = %v; want it named", err)
	}
	a.exec(t, "GRANT UPDATE (key_version) ON "+a.table+" TO "+role)
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check with the README's grants: %v", err)
	}
	lost, err := s.SwapDEKs(ctx, []rekey.DEKSwap{{ID: "1", OldWrapped: wrappedOf(1, 1), NewWrapped: wrappedOf(1, 2), NewVersion: 2}}, rekey.Lease{})
	if err != nil || len(lost) != 0 {
		t.Fatalf("swap with the README's grants: lost %v, %v", lost, err)
	}
	if c, err := s.CountDEKs(ctx, "payments"); err != nil || !mapsEqual(c, map[int]int64{2: 1}) {
		t.Errorf("count with the README's grants: %v, %v", c, err)
	}
	a.exec(t, "REVOKE SELECT (deleted) ON "+a.table+" FROM "+role)
	if err := s.Check(ctx); err == nil || !strings.Contains(err.Error(), "GRANT SELECT") {
		t.Errorf("Check without SELECT on the filter's column = %v; want it named", err)
	}
}

// TestLeastPrivilegeMySQL is TestLeastPrivilege on MariaDB, with the
// README's GRANT statements for MySQL/MariaDB.
func TestLeastPrivilegeMySQL(t *testing.T) {
	t.Parallel()
	a := newMySQL(t)
	ctx := context.Background()
	a.insert(t, 1, wrappedOf(1, 1), 1, false)
	var b [4]byte
	_, _ = rand.Read(b[:])
	user := "rekey_" + hex.EncodeToString(b[:])
	a.exec(t, "CREATE USER '"+user+"'@'%' IDENTIFIED BY 'pw'")
	t.Cleanup(func() { _, _ = a.db.Exec("DROP USER '" + user + "'@'%'") })
	to := " ON " + a.table + " TO '" + user + "'@'%'"
	// The README's statements: SELECT on id, version, wrapped and the
	// filter's column; UPDATE on wrapped and version only.
	a.exec(t, "GRANT SELECT (id, key_version, wrapped_dek, deleted)"+to)
	a.exec(t, "GRANT UPDATE (wrapped_dek)"+to)
	schema, table, _ := strings.Cut(a.table, ".")
	s := a.source(t, func(c *source.Config) {
		// The application's database, as an operator would write it.
		mc, err := mysql.ParseDSN(withMySQLUser(t, c.DSN, user, "pw"))
		if err != nil {
			t.Fatal(err)
		}
		mc.DBName = schema
		c.DSN, c.Table = mc.FormatDSN(), table
	})
	err := s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), "key_version") || !strings.Contains(err.Error(), "GRANT UPDATE") {
		t.Errorf("Check without UPDATE on the version column = %v; want it named", err)
	}
	a.exec(t, "GRANT UPDATE (key_version)"+to)
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check with the README's grants: %v", err)
	}
	lost, err := s.SwapDEKs(ctx, []rekey.DEKSwap{{ID: "1", OldWrapped: wrappedOf(1, 1), NewWrapped: wrappedOf(1, 2), NewVersion: 2}}, rekey.Lease{})
	if err != nil || len(lost) != 0 {
		t.Fatalf("swap with the README's grants: lost %v, %v", lost, err)
	}
	if c, err := s.CountDEKs(ctx, "payments"); err != nil || !mapsEqual(c, map[int]int64{2: 1}) {
		t.Errorf("count with the README's grants: %v, %v", c, err)
	}
	a.exec(t, "REVOKE SELECT (deleted)"+strings.Replace(to, " TO ", " FROM ", 1))
	if err := s.Check(ctx); err == nil || !strings.Contains(err.Error(), "GRANT SELECT") {
		t.Errorf("Check without SELECT on the filter's column = %v; want it named", err)
	}
}

func mustAtoi(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mapsEqual(a, b map[int]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

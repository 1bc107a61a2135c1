package main

// The bad-input corpus on PostgreSQL (issue 9 item 6): TestBadInputPostgres
// runs the entries of testdata/badinput (badinput_test.go) on a home whose
// store is a PostgreSQL database, plus the PostgreSQL-only entries of
// testdata/badinput-pg (same format). The template's home keeps its store
// in a database of its own on the test server (REKEY_TEST_PG_DSN), filled
// once like the SQLite template's; every entry runs on a copy of the
// template's files whose rekey.yaml points at a clone of that database
// (CREATE DATABASE ... TEMPLATE, dropped after). "Nothing changed" is the
// files, as on SQLite, and every row of every table of the clone: each
// table is hashed in primary key order before and after the command, and a
// difference fails the entry naming the table.
//
// Entries about SQLite itself (rekey.db damaged, locked, on a read-only
// mount, SQLite's DSN or PRAGMAs) cannot run as written: badInputPGSkip
// leaves them out by name, saying why, and the test logs them; entries of
// testdata/badinput-pg are their PostgreSQL counterparts where one makes
// sense. Run it with
//
//	eval "$(scripts/pg start)"
//	go test -count=1 -run TestBadInputPostgres ./cmd/rekey
//	scripts/pg stop
//
// Without REKEY_TEST_PG_DSN it fails under CI and is skipped otherwise.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// badInputPGDir is the PostgreSQL-only corpus, relative to this package.
const badInputPGDir = "testdata/badinput-pg"

// badInputPGPassword is the password the entries of testdata/badinput-pg
// put in DSNs: no output may carry it (it is checked as a secret).
const badInputPGPassword = "corpus-pw-Zq81vLx4"

// badInputPGSkip names the entries of testdata/badinput that cannot run on
// PostgreSQL as written, and why. An entry of the list that no longer
// exists fails the test, and so does an entry outside it that touches
// rekey.db or holds a SQLite lock.
var badInputPGSkip = map[string]string{
	// rekey.yaml's SQLite store lines, which a PostgreSQL home does not have.
	"config/bad-store-driver":       "edits `driver: sqlite`; counterpart pg/config/bad-store-driver",
	"config/store-dsn-query":        "a query string in a SQLite file DSN; counterpart pg/config/driver-sqlite-with-url",
	"config/store-path-missing-dir": "a SQLite file in a missing directory; counterpart pg/store/database-missing",
	"config/syntax-tab-indent":      "edits `  driver: sqlite`; counterpart pg/config/syntax-tab-indent",
	"config/unset-variable":         "an unset variable in the SQLite file DSN; counterpart pg/config/unset-variable-dsn",
	// The rekey.db file: there is none in a PostgreSQL home.
	"store/directory":          "rekey.db made a directory; a PostgreSQL home has no rekey.db",
	"store/empty-file":         "rekey.db emptied; a PostgreSQL home has no rekey.db (counterpart pg/store/tables-missing)",
	"store/flipped-header":     "SQLite's file header damaged; no file on PostgreSQL",
	"store/garbage":            "rekey.db overwritten; a PostgreSQL home has no rekey.db",
	"store/truncated":          "rekey.db truncated; a PostgreSQL home has no rekey.db",
	"store/world-readable":     "rekey.db's permission bits; the server guards PostgreSQL's files",
	"store/missing-key-create": "rekey.db deleted; counterpart pg/store/database-missing-key-create",
	"store/missing-status":     "rekey.db deleted; counterpart pg/store/database-missing",
	"store/readonly-file":      "rekey.db on a read-only mount; a PostgreSQL home has no rekey.db",
	"store/newer-schema":       "PRAGMA user_version; counterpart pg/store/newer-schema (a row in rekey_schema)",
	// SQLite's file locks.
	"store/locked-exclusive": "a SQLite EXCLUSIVE file lock; PostgreSQL has no such lock",
	"store/locked-write":     "a SQLite write lock (BEGIN IMMEDIATE); PostgreSQL writers take row locks",
	// The home's file system, which does not hold a PostgreSQL store.
	"store/disk-full":    "the store runs out of space on the home's file system; a PostgreSQL store is not on it (the command succeeds)",
	"store/readonly-dir": "the store's directory read-only; a PostgreSQL store is not in the home",
}

// badInputPGKnown names the entries of testdata/badinput that fail on
// PostgreSQL for a shortfall nobody fixes yet: they run as if their entry
// had this known: line (they must keep failing; once one passes, the test
// says to remove it from here).
var badInputPGKnown = map[string]string{}

// TestBadInputPostgres runs the corpus on PostgreSQL (see the top of this
// file).
func TestBadInputPostgres(t *testing.T) {
	dsn := replicaDSN(t)
	all := loadBadInputs(t, badInputDir)
	own := loadBadInputs(t, badInputPGDir)
	if t.Failed() {
		return
	}
	seen := map[string]bool{}
	var entries []*badInput
	var left []string
	for _, e := range all {
		seen[e.name] = true
		if why, ok := badInputPGSkip[e.name]; ok {
			left = append(left, e.name+" ("+why+")")
			continue
		}
		if known, ok := badInputPGKnown[e.name]; ok {
			if e.pending != "" || e.known != "" {
				t.Errorf("%s is in badInputPGKnown but has its own pending:/known: line: remove it from the list", e.name)
			}
			c := *e
			c.known = "on PostgreSQL: " + known
			e = &c
		}
		if why := sqliteOnly(e); why != "" {
			t.Errorf("%s %s: it cannot run on PostgreSQL as written; add it to badInputPGSkip with the reason (and a counterpart in %s where one makes sense)", e.name, why, badInputPGDir)
			continue
		}
		entries = append(entries, e)
	}
	for name := range badInputPGKnown {
		if !seen[name] {
			t.Errorf("badInputPGKnown names %s, which is not in %s: remove it from the list", name, badInputDir)
		}
	}
	for name := range badInputPGSkip {
		if !seen[name] {
			t.Errorf("badInputPGSkip names %s, which is not in %s: remove it from the list", name, badInputDir)
		}
	}
	for _, e := range own {
		e.name = "pg/" + e.name
		entries = append(entries, e)
	}
	if t.Failed() {
		return
	}
	sort.Strings(left)

	start := time.Now()
	st := newPGBadInputs(t, dsn)
	tpl := newBadInputTemplate(t, st)
	tpl.secrets = append(tpl.secrets, badInputPGPassword)
	t.Logf("template made in %v (database %s)", time.Since(start).Round(time.Millisecond), st.tplDB)
	known0, hard0 := badInputKnown.Load(), badInputKnownHard.Load()
	runStart := time.Now()
	t.Run("corpus", func(t *testing.T) {
		for _, e := range entries {
			t.Run(e.name, func(t *testing.T) {
				t.Parallel()
				runBadInput(t, tpl, e)
			})
		}
	})
	pending := 0
	for _, e := range entries {
		if e.pending != "" {
			pending++
		}
	}
	t.Logf("%d inputs ran on PostgreSQL in %v (%d of %s, %d of %s; clones took %v in all); %d wait for a fix on another branch (pending:), %d are known shortfalls still failing (known:), %d of them in the exit code, the files or the database",
		len(entries), time.Since(runStart).Round(time.Millisecond), len(entries)-len(own), badInputDir, len(own), badInputPGDir,
		time.Duration(st.cloneTime.Load()).Round(time.Millisecond), pending, badInputKnown.Load()-known0, badInputKnownHard.Load()-hard0)
	t.Logf("%d inputs of %s left out, SQLite's own:\n  %s", len(left), badInputDir, strings.Join(left, "\n  "))
}

// sqliteOnly says why e is about SQLite itself (it touches rekey.db, holds
// a SQLite lock, or sets a PRAGMA), or "".
func sqliteOnly(e *badInput) string {
	for _, op := range e.during {
		if strings.HasPrefix(op[0], "sqlite-") {
			return "holds " + op[0]
		}
	}
	for _, ops := range [][][]string{e.do, e.during, {e.args}} {
		for _, op := range ops {
			for _, a := range op {
				switch {
				case strings.Contains(a, "rekey.db"):
					return "names rekey.db (" + strings.Join(op, " ") + ")"
				case strings.Contains(strings.ToUpper(a), "PRAGMA"):
					return "sets a PRAGMA (" + strings.Join(op, " ") + ")"
				}
			}
		}
	}
	return ""
}

// pgBadInputs keeps the template's store in a database of the test server
// and gives every entry a clone of it.
type pgBadInputs struct {
	admin     *pgxpool.Pool // on the server's own test database
	base      *url.URL      // REKEY_TEST_PG_DSN
	prefix    string        // of the databases this run creates
	tplDB     string
	n         atomic.Int64
	cloneTime atomic.Int64 // summed over the entries (they clone in parallel)
}

// newPGBadInputs creates the template's (empty) database on the server of
// dsn; the test's cleanup drops it.
func newPGBadInputs(t *testing.T, dsn string) *pgBadInputs {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		t.Fatalf("%s must be a postgres:// URL", pgDSNEnv)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	st := &pgBadInputs{base: u, prefix: "corpus_" + hex.EncodeToString(b[:])}
	st.tplDB = st.prefix + "_tpl"
	if st.admin, err = pgxpool.New(context.Background(), dsn); err != nil {
		t.Fatalf("connect to %s: %v", pgDSNEnv, err)
	}
	t.Cleanup(st.admin.Close)
	st.createDB(t, st.tplDB, "")
	return st
}

// dsn is the server's DSN with the database db.
func (st *pgBadInputs) dsn(db string) string {
	u := *st.base
	u.Path = "/" + db
	return u.String()
}

// createDB creates db (from template tpl unless "") and drops it when t ends.
func (st *pgBadInputs) createDB(t *testing.T, db, tpl string) {
	t.Helper()
	ctx := context.Background()
	q := "CREATE DATABASE " + pgx.Identifier{db}.Sanitize()
	if tpl != "" {
		// FILE_COPY copies the (small) template's files after a checkpoint:
		// faster here than the default WAL_LOG, block by block through the
		// WAL (0.5 s against 0.8 s a clone on the test machine), and several
		// may copy one template at once.
		q += " TEMPLATE " + pgx.Identifier{tpl}.Sanitize() + " STRATEGY FILE_COPY"
	}
	if _, err := st.admin.Exec(ctx, q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	t.Cleanup(func() {
		if _, err := st.admin.Exec(ctx, "DROP DATABASE "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", db, err)
		}
	})
}

func (st *pgBadInputs) configure(t *testing.T, h *e2eHome) {
	h.editConfig([2]string{"driver: sqlite", "driver: postgres"}, [2]string{"dsn: rekey.db", "dsn: " + st.dsn(st.tplDB)})
}

func (st *pgBadInputs) dekIDs(t *testing.T, h *e2eHome, key string) []string {
	t.Helper()
	ctx := context.Background()
	conn := pgConnect(t, st.dsn(st.tplDB))
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT id FROM deks WHERE key = $1 ORDER BY id`, key)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func (st *pgBadInputs) copyOf(t *testing.T, h *e2eHome) badInputDB {
	t.Helper()
	db := fmt.Sprintf("%s_%d", st.prefix, st.n.Add(1))
	start := time.Now()
	st.createDB(t, db, st.tplDB)
	st.cloneTime.Add(int64(time.Since(start)))
	d := &pgBadInputDB{name: db, dsn: st.dsn(db)}
	h.editConfig([2]string{"dsn: " + st.dsn(st.tplDB), "dsn: " + d.dsn})
	return d
}

// pgConnect opens one connection to dsn.
func pgConnect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to the test server: %v", err)
	}
	return conn
}

// pgBadInputDB is one entry's clone of the template's database.
type pgBadInputDB struct {
	name, dsn string
}

// vars: $PGDSN is the DSN in the copy's rekey.yaml, $PGDB its database.
func (d *pgBadInputDB) vars() map[string]string {
	return map[string]string{"$PGDSN": d.dsn, "$PGDB": d.name}
}

// sqliteBlob is a SQLite blob literal, X'0102...'.
var sqliteBlob = regexp.MustCompile(`(?i)\bX'([0-9a-f]*)'`)

// exec runs stmt on the clone, SQLite's blob literals (X'..') written as
// bytea ('\x..'::bytea), with session_replication_role = replica: the
// foreign keys and the audit tables' triggers do not refuse the damage,
// as they would not stop a bad restore or a hand edit of the data files.
func (d *pgBadInputDB) exec(t *testing.T, stmt string) {
	t.Helper()
	ctx := context.Background()
	conn := pgConnect(t, d.dsn)
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		t.Fatal(err)
	}
	pg := sqliteBlob.ReplaceAllString(stmt, `'\x$1'::bytea`)
	if _, err := conn.Exec(ctx, pg); err != nil {
		t.Fatalf("do: sql %q (on PostgreSQL: %q): %v", stmt, pg, err)
	}
}

func (d *pgBadInputDB) flipWrapped(t *testing.T, id string, flip func([]byte)) {
	t.Helper()
	ctx := context.Background()
	conn := pgConnect(t, d.dsn)
	defer conn.Close(ctx)
	var w []byte
	if err := conn.QueryRow(ctx, `SELECT wrapped FROM deks WHERE id = $1`, id).Scan(&w); err != nil {
		t.Fatalf("do: flipwrapped %s: %v", id, err)
	}
	flip(w)
	if _, err := conn.Exec(ctx, `UPDATE deks SET wrapped = $1 WHERE id = $2`, w, id); err != nil {
		t.Fatal(err)
	}
}

// hold knows `pg-lock TABLE`: another session holds an ACCESS EXCLUSIVE
// lock on TABLE (as a schema change or a LOCK TABLE by hand would) until
// the release.
func (d *pgBadInputDB) hold(t *testing.T, op []string) func() {
	t.Helper()
	if op[0] != "pg-lock" {
		return nil
	}
	if len(op) != 2 {
		t.Fatalf("during: pg-lock TABLE: got %q", op)
	}
	ctx := context.Background()
	conn := pgConnect(t, d.dsn)
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LOCK TABLE "+pgx.Identifier{op[1]}.Sanitize()+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatalf("during: pg-lock %s: %v", op[1], err)
	}
	return func() {
		if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
			t.Errorf("release pg-lock %s: %v", op[1], err)
		}
		conn.Close(ctx)
	}
}

// hash returns, for every table of the clone's schema, its row count and
// the SHA-256 of its rows (as text) in primary key order.
func (d *pgBadInputDB) hash(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	conn := pgConnect(t, d.dsn)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `
		SELECT c.relname,
		       coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.i)
		                 FROM pg_index x
		                 CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
		                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
		                 WHERE x.indrelid = c.oid AND x.indisprimary), '')
		FROM pg_class c
		WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
		ORDER BY c.relname`)
	if err != nil {
		t.Fatalf("list the tables of %s: %v", d.name, err)
	}
	type table struct{ name, pk string }
	tables, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (table, error) {
		var tb table
		err := r.Scan(&tb.name, &tb.pk)
		return tb, err
	})
	if err != nil {
		t.Fatalf("list the tables of %s: %v", d.name, err)
	}
	out := map[string]string{}
	for _, tb := range tables {
		order := tb.pk
		if order == "" {
			order = "r::text" // no primary key: the rows in text order
		}
		rows, err := conn.Query(ctx, "SELECT r::text FROM "+pgx.Identifier{tb.name}.Sanitize()+" r ORDER BY "+order)
		if err != nil {
			t.Fatalf("read table %s of %s: %v", tb.name, d.name, err)
		}
		hs, n := sha256.New(), 0
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(hs, "%d:%s\n", len(s), s)
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("read table %s of %s: %v", tb.name, d.name, err)
		}
		out["table "+tb.name] = fmt.Sprintf("%d rows sha256 %s", n, hex.EncodeToString(hs.Sum(nil)))
	}
	return out
}

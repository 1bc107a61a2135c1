package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// dsnEnv names the variable holding the DSN of the test server.
const dsnEnv = "REKEY_TEST_PG_DSN"

// testDSN returns the DSN of the test server. Without one the test fails
// under CI (CI set: a server was supposed to be started) and is skipped
// otherwise, naming the command that starts one.
func testDSN(t testing.TB) string {
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

// newSchema creates a schema with a random name in the test database,
// drops it at the end of the test, and returns the test DSN with
// search_path set to it, so that every test has tables of its own.
func newSchema(t testing.TB) string {
	t.Helper()
	dsn := testDSN(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", dsnEnv, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return withParam(t, dsn, "search_path", schema)
}

// withParam returns the URL dsn with the query parameter k set to v.
func withParam(t testing.TB, dsn, k, v string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		t.Fatalf("%s must be a postgres:// URL", dsnEnv)
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

// openTemp opens a store in a new schema and closes it at the end of the
// test.
func openTemp(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{DSN: newSchema(t), MaxConns: 4})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	testDSN(t) // skip or fail once, not in each subtest
	storetest.Run(t, func(t *testing.T) rekey.Store { return openTemp(t) })
}

// TestMigrateConcurrently opens eight stores on one new schema at once:
// every Open succeeds and the migrations are recorded once each.
func TestMigrateConcurrently(t *testing.T) {
	dsn := newSchema(t)
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	stores := make([]*Store, 8)
	for i := range errs {
		wg.Go(func() { stores[i], errs[i] = Open(ctx, Config{DSN: dsn, MaxConns: 2}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	var n, maxV int
	if err := stores[0].pool.QueryRow(ctx, `SELECT count(*), max(version) FROM rekey_schema`).Scan(&n, &maxV); err != nil {
		t.Fatal(err)
	}
	if n != len(migrations) || maxV != len(migrations) {
		t.Errorf("rekey_schema has %d rows up to version %d; want %d", n, maxV, len(migrations))
	}
	// Migration 7: deks keeps half of each page free for the swaps' new
	// tuples.
	var opts []string
	if err := stores[0].pool.QueryRow(ctx, `SELECT reloptions FROM pg_class WHERE oid = 'deks'::regclass`).Scan(&opts); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(opts) != "[fillfactor=50]" {
		t.Errorf("deks storage options %v, want [fillfactor=50]", opts)
	}
}

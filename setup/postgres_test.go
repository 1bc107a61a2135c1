package setup_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// TestOpenPostgres: store.driver postgres opens the PostgreSQL store, with
// ${PGPASSWORD} in the DSN expanded from the environment, and the key
// created through the System lands in the database.
func TestOpenPostgres(t *testing.T) {
	dsn := os.Getenv("REKEY_TEST_PG_DSN")
	if dsn == "" {
		const how = "REKEY_TEST_PG_DSN is not set: start a throwaway PostgreSQL with `eval \"$(scripts/pg start)\"`, or run scripts/test"
		if os.Getenv("CI") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	schema := fmt.Sprintf("setup_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })

	home := t.TempDir()
	open(t, setup.Options{Home: home}).Close()
	cfgPath := filepath.Join(home, "rekey.yaml")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// The test server trusts every password: ${PGPASSWORD} only has to
	// be expanded, not checked.
	pgDSN := strings.Replace(dsn, "postgres://postgres@", "postgres://postgres:${PGPASSWORD}@", 1) + "&search_path=" + schema
	cfg := strings.Replace(string(b), "driver: sqlite", "driver: postgres", 1)
	cfg = strings.Replace(cfg, "dsn: rekey.db", "dsn: "+pgDSN, 1)
	if cfg == string(b) || !strings.Contains(cfg, "search_path") {
		t.Fatalf("could not rewrite the store section of %s:\n%s", cfgPath, b)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The configuration file's ${VAR}s are expanded from the process
	// environment (config.Load), not through Options.Getenv.
	t.Setenv("PGPASSWORD", "not-checked")
	sys := open(t, setup.Options{Home: home})
	if _, err := sys.Keyring.CreateKey(ctx, "pgkey", "local", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+schema+".keys WHERE name = 'pgkey'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("keys in schema %s: %d, %v; want the key created", schema, n, err)
	}
}

package main

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey/setup"
)

// TestE2ESources is issue 11 through the CLI on an application SQLite
// database: source list/check, config validate --online naming a broken
// source, key show and plan with counts per source, and `rekey run --once`
// rotating the key whose source works while the key of the broken source
// fails alone.
func TestE2ESources(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{batchSize: 50})
	h.must("key", "create", "payments")
	h.must("key", "create", "other")

	// The application's database: wrapped DEKs made through the library
	// (GenerateDataKey), next to columns rekey must not touch.
	appPath := filepath.Join(h.dir, "app.db")
	app, err := sql.Open("sqlite3", appPath+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if _, err := app.Exec(`CREATE TABLE order_keys (id INTEGER PRIMARY KEY, customer TEXT, wrapped_dek BLOB, key_version INTEGER, deleted_at TEXT)`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sys, err := setup.Open(ctx, setup.Options{ConfigPath: h.configPath(), Getenv: func(k string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	const n = 120
	for id := 1; id <= n; id++ {
		dk, err := sys.Keyring.GenerateDataKey(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		var deleted any
		if id%10 == 0 {
			deleted = "2026-01-01"
		}
		if _, err := app.Exec(`INSERT INTO order_keys VALUES (?, ?, ?, ?, ?)`, id, fmt.Sprint("c", id), dk.Wrapped, dk.Version, deleted); err != nil {
			t.Fatal(err)
		}
	}
	sys.Close()

	b := readFile(t, h.configPath())
	writeFile(t, h.configPath(), fmt.Appendf(b, `
dek_sources:
  - name: orders
    driver: sqlite
    dsn: %q
    table: order_keys
    id_column: id
    wrapped_column: wrapped_dek
    version_column: key_version
    key: payments
    where: "deleted_at IS NULL"
  - name: broken
    driver: sqlite
    dsn: %q
    table: no_such_table
    id_column: id
    wrapped_column: w
    version_column: v
    key: other
`, appPath, appPath))

	r := h.run("config", "validate", "--online")
	if r.code != 1 || !strings.Contains(r.stderr, "source broken") || !strings.Contains(r.stderr, "no_such_table does not exist") || strings.Contains(r.stderr, "source orders") {
		t.Fatalf("config validate --online must fail naming source broken only: %v", r)
	}
	var list struct {
		Sources []struct {
			Name, Table string
		} `json:"sources"`
	}
	h.mustJSON(&list, "source", "list")
	if len(list.Sources) != 2 || list.Sources[0].Name != "orders" || list.Sources[1].Table != "no_such_table" {
		t.Errorf("source list: %+v", list)
	}
	if out := h.must("source", "list"); strings.Contains(out, appPath) {
		t.Errorf("source list prints the DSN:\n%s", out)
	}
	if out := h.must("source", "check", "orders"); !strings.Contains(out, "key payments v1: 108 rows") {
		t.Errorf("source check orders:\n%s", out)
	}
	if r := h.run("source", "check", "broken"); r.code != 1 || !strings.Contains(r.stderr, "no_such_table") {
		t.Errorf("source check broken must fail naming the table: %v", r)
	}
	if r := h.run("source", "check", "nope"); r.code != 2 || !strings.Contains(r.stderr, "orders, broken") {
		t.Errorf("source check of an unknown source: %v", r)
	}

	type counts struct {
		Sources []struct {
			Source   string        `json:"source"`
			Versions map[int]int64 `json:"deks_by_version"`
			Error    string        `json:"error"`
		} `json:"sources"`
	}
	var ks counts
	h.mustJSON(&ks, "key", "show", "payments")
	if len(ks.Sources) != 1 || ks.Sources[0].Source != "orders" || ks.Sources[0].Versions[1] != 108 {
		t.Errorf("key show payments sources: %+v", ks)
	}
	var plan struct {
		Keys []struct {
			Key           string        `json:"key"`
			DEKsByVersion map[int]int64 `json:"deks_by_version"`
			Sources       []struct {
				Source string `json:"source"`
			} `json:"sources"`
		} `json:"keys"`
	}
	h.mustJSON(&plan, "plan")
	for _, k := range plan.Keys {
		if k.Key == "payments" && (k.DEKsByVersion[1] != 108 || len(k.Sources) != 1) {
			t.Errorf("plan of payments: %+v", k)
		}
	}

	h.makeDue("payments")
	h.makeDue("other")
	r = h.run("run", "--once")
	if !strings.Contains(r.stderr, "source broken") {
		t.Errorf("run --once does not name the broken source: %v", r)
	}
	ks = counts{} // decoding into the old maps would merge them
	h.mustJSON(&ks, "key", "show", "payments")
	if ks.Sources[0].Versions[2] != 108 || ks.Sources[0].Versions[1] != 0 {
		t.Fatalf("after run --once the orders rows are not all on v2: %+v\n%v", ks, r)
	}
	if k := h.keyShow("other"); k.ActiveVersion != 1 {
		t.Errorf("key other rotated although its source is broken: v%d", k.ActiveVersion)
	}
	var v2, excluded int
	if err := app.QueryRow(`SELECT COUNT(*) FROM order_keys WHERE key_version = 2`).Scan(&v2); err != nil {
		t.Fatal(err)
	}
	if err := app.QueryRow(`SELECT COUNT(*) FROM order_keys WHERE key_version = 1 AND deleted_at IS NOT NULL`).Scan(&excluded); err != nil {
		t.Fatal(err)
	}
	if v2 != 108 || excluded != 12 {
		t.Errorf("app table: %d rows on v2 (want 108), %d excluded rows on v1 (want 12)", v2, excluded)
	}
}

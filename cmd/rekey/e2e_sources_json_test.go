package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey/setup"
)

// volatileJSON are the fields whose values change from run to run (times,
// generated ids); normalizeJSON blanks them.
var volatileJSON = map[string]bool{
	"time": true, "expires_at": true, "created_at": true, "activated_at": true, "updated_at": true,
	"retire_after": true, "retired_at": true, "expires_in_seconds": true, "backend_ref": true,
	"id": true, "started_at": true, "finished_at": true,
}

// normalizeJSON decodes out and re-encodes it indented with object keys
// sorted and the volatile fields blanked.
func normalizeJSON(t *testing.T, out string) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	var walk func(any) any
	walk = func(v any) any {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if volatileJSON[k] && x != nil {
					v[k] = "…"
				} else {
					v[k] = walk(x)
				}
			}
		case []any:
			for i, x := range v {
				v[i] = walk(x)
			}
		}
		return v
	}
	b, err := json.MarshalIndent(walk(v), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// `rekey status --json` and `key show --json` print the DEK sources' counts
// once per key ("sources", from status.KeyView), as they did when each
// command added a "sources" field of its own: the output is compared with
// testdata/sources_json.golden, written by the commands before that
// cleanup (REKEY_UPDATE_GOLDEN=1 rewrites it).
func TestE2ESourcesJSONUnchanged(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "payments")
	h.must("key", "create", "other")
	appPath := filepath.Join(h.dir, "app.db")
	app, err := sql.Open("sqlite3", appPath+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if _, err := app.Exec(`CREATE TABLE order_keys (id INTEGER PRIMARY KEY, wrapped_dek BLOB, key_version INTEGER)`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sys, err := setup.Open(ctx, setup.Options{ConfigPath: h.configPath(), Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	for id := 1; id <= 7; id++ {
		dk, err := sys.Keyring.GenerateDataKey(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := app.Exec(`INSERT INTO order_keys VALUES (?, ?, ?)`, id, dk.Wrapped, dk.Version); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := app.Exec(`INSERT INTO order_keys VALUES (8, X'00', NULL)`); err != nil {
		t.Fatal(err)
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
  - name: broken
    driver: sqlite
    dsn: %q
    table: no_such_table
    id_column: id
    wrapped_column: w
    version_column: v
    key: other
`, appPath, appPath))

	var got bytes.Buffer
	for _, args := range [][]string{{"status"}, {"key", "show", "payments"}, {"key", "show", "other"}} {
		out := h.must(append(args, "--json")...)
		want := 1 // per key: key show prints one, status two
		if args[0] == "status" {
			want = 2
		}
		if n := strings.Count(out, `"sources"`); n != want {
			t.Errorf("rekey %s --json prints %d sources fields, want %d:\n%s", strings.Join(args, " "), n, want, out)
		}
		fmt.Fprintf(&got, "== rekey %s --json\n", strings.Join(args, " "))
		got.Write(normalizeJSON(t, out))
	}
	golden := filepath.Join("testdata", "sources_json.golden")
	if os.Getenv("REKEY_UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (REKEY_UPDATE_GOLDEN=1 writes it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("JSON output changed:\n--- got\n%s\n--- want (%s)\n%s", got.String(), golden, want)
	}
}

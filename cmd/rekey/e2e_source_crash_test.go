//go:build cgo

package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/setup"
)

// TestE2E_SourceCrash (issue 11): `rekey run --once` crashes (exit 137,
// the process gone at once) at each failpoint while it rotates a key whose
// DEKs live in the application's own table; the next runs finish the
// rotation. Every row then holds the new version and unwraps to the data
// key it had, the backend holds exactly one new version, and the old one
// retires after the grace.
func TestE2E_SourceCrash(t *testing.T) {
	t.Parallel()
	for _, point := range failpoint.Names() {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			testSourceCrash(t, point)
		})
	}
}

func testSourceCrash(t *testing.T, point string) {
	const rows = 150
	h := newE2EHome(t, e2eOpts{batchSize: 40})
	h.must("key", "create", "payments", "--grace", "1h")
	appPath := filepath.Join(h.dir, "app.db")
	app, err := sql.Open("sqlite3", appPath+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if _, err := app.Exec(`CREATE TABLE order_keys (id INTEGER PRIMARY KEY, note TEXT, wrapped_dek BLOB, key_version INTEGER)`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	open := func() *setup.System {
		sys, err := setup.Open(ctx, setup.Options{ConfigPath: h.configPath(), Getenv: func(string) string { return "" }})
		if err != nil {
			t.Fatal(err)
		}
		return sys
	}
	sys := open()
	plain := map[int][]byte{}
	for id := 1; id <= rows; id++ {
		dk, err := sys.Keyring.GenerateDataKey(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		plain[id] = dk.Plaintext
		if _, err := app.Exec(`INSERT INTO order_keys VALUES (?, ?, ?, ?)`, id, fmt.Sprint("note ", id), dk.Wrapped, dk.Version); err != nil {
			t.Fatal(err)
		}
	}
	sys.Close()
	writeFile(t, h.configPath(), fmt.Appendf(readFile(t, h.configPath()), `
dek_sources:
  - name: orders
    driver: sqlite
    dsn: %q
    table: order_keys
    id_column: id
    wrapped_column: wrapped_dek
    version_column: key_version
    key: payments
`, appPath))

	h.makeDue("payments")
	crash := "REKEY_FAILPOINTS=" + point + "=crash"
	r := h.runEnv([]string{crash}, "run", "--once")
	if point == failpoint.RetireAfterBackendDisable {
		// Retirement comes a grace after the rotation.
		if r.code != 0 {
			t.Fatalf("run --once: %v", r)
		}
		r = h.runEnv([]string{crash, "REKEY_TEST_CLOCK_OFFSET=2h"}, "run", "--once")
	}
	if r.code != 137 {
		t.Fatalf("want a crash (exit 137) at %s: %v", point, r)
	}
	h.mustAt(2*time.Hour, "run", "--once")
	h.mustAt(4*time.Hour, "run", "--once")

	sys = open()
	defer sys.Close()
	got, err := app.Query(`SELECT id, note, wrapped_dek, key_version FROM order_keys ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	n := 0
	for got.Next() {
		var id, version int
		var note string
		var wrapped []byte
		if err := got.Scan(&id, &note, &wrapped, &version); err != nil {
			t.Fatal(err)
		}
		n++
		if version != 2 || note != fmt.Sprint("note ", id) {
			t.Errorf("row %d: version %d, note %q; want 2, %q", id, version, note, fmt.Sprint("note ", id))
			continue
		}
		pt, err := sys.Keyring.DecryptDataKey(ctx, "payments", wrapped)
		if err != nil || !bytes.Equal(pt, plain[id]) {
			t.Errorf("row %d does not unwrap to its data key: %v", id, err)
		}
	}
	if err := got.Err(); err != nil {
		t.Fatal(err)
	}
	if n != rows {
		t.Errorf("%d rows, want %d", n, rows)
	}
	vs := h.versionRows("payments")
	if len(vs) != 2 || vs[0].state != string(rekey.VersionRetired) || vs[1].state != string(rekey.VersionActive) {
		t.Errorf("versions after a crash at %s and recovery: %+v; want v1 retired, v2 active", point, vs)
	}
	created := 0
	for _, ev := range h.auditOf("payments") {
		if ev.Type == rekey.AuditVersionCreated || ev.Type == rekey.AuditVersionAdopted {
			created++
		}
	}
	if created != 1 {
		t.Errorf("after a crash at %s: %d version.created/adopted events, want 1", point, created)
	}
	h.must("audit", "verify") // exit 0: the trail of the crashed runs verifies
}

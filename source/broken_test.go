package source_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/rotation"
)

// TestBrokenSourceFailsOnlyItsKeys: a source with one key whose table is
// missing fails that key's cycles alone; a key_column source that cannot
// be read fails no key (it may hold rows of any), but no old version
// retires while it cannot be counted; once its table is there, its rows
// are re-wrapped and the version retires; rows naming a key rekey does not
// have are logged and reported.
func TestBrokenSourceFailsOnlyItsKeys(t *testing.T) {
	t.Parallel()
	a := newSQLite(t)
	ctx := context.Background()
	more := fmt.Sprintf(`  - name: tenants
    driver: sqlite
    dsn: %q
    table: tenant_keys
    id_column: id
    wrapped_column: wrapped_dek
    version_column: key_version
    key_column: key_name
  - name: ledger
    driver: sqlite
    dsn: %q
    table: ledger_keys
    id_column: id
    wrapped_column: wrapped_dek
    version_column: key_version
    key: billing
`, a.dsn, a.dsn)
	r := newRigWith(t, a, 100, "", more)
	r.fill(t, 300)
	if _, err := r.sys.Keyring.CreateKey(ctx, "billing", "local", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	report := func(rep rotation.CycleReport, key string) rotation.KeyReport {
		t.Helper()
		for _, kr := range rep.Keys {
			if kr.Key == key {
				return kr
			}
		}
		t.Fatalf("no report for key %s in %+v", key, rep)
		return rotation.KeyReport{}
	}

	// Both keys due: payments rotates although tenants cannot be read;
	// billing fails, naming ledger and its table.
	r.offset.Store(int64(91 * 24 * time.Hour))
	rep := r.sys.Engine.RunCycle(ctx)
	if kr := report(rep, "payments"); kr.Outcome != rotation.OutcomeRotated || kr.ToVersion != 2 {
		t.Fatalf("payments: %s to version %d (%s); want rotated to 2 with source tenants broken", kr.Outcome, kr.ToVersion, kr.Error)
	}
	if kr := report(rep, "billing"); kr.Outcome != rotation.OutcomeFailed || !strings.Contains(kr.Error, "source ledger") || !strings.Contains(kr.Error, "ledger_keys") {
		t.Fatalf("billing: %s %q; want failed naming source ledger and its table", kr.Outcome, kr.Error)
	}
	r.verify(t, 2)
	logs := r.logs.String()
	if !strings.Contains(logs, `"msg":"DEK source cannot be read`) || !strings.Contains(logs, `"key_id":"payments","source":"tenants"`) {
		t.Errorf("the log does not name source tenants for key payments:\n%s", logs)
	}
	// Status: the error per key and source; orders counted.
	for _, sc := range r.sys.Engine.SourceCounts(ctx, "payments") {
		switch sc.Source {
		case "tenants":
			if !strings.Contains(sc.Error, "tenant_keys") {
				t.Errorf("SourceCounts(payments) tenants error = %q; want it to name the table", sc.Error)
			}
		case "orders":
			if sc.Error != "" || sc.Versions[2] != 270 {
				t.Errorf("SourceCounts(payments) orders = %+v; want 270 rows on version 2", sc)
			}
		case "ledger":
			t.Errorf("ledger (key billing) listed under payments")
		}
	}

	// /readyz names both broken sources and what waits for them; the
	// status API carries the counts and errors per key.
	rec := httptest.NewRecorder()
	r.sys.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if body := rec.Body.String(); rec.Code != 503 || !strings.Contains(body, "FAIL source:ledger: ") || !strings.Contains(body, "key billing") ||
		!strings.Contains(body, "FAIL source:tenants: ") || strings.Contains(body, "FAIL source:orders") {
		t.Errorf("/readyz = %d:\n%s\nwant 503 naming ledger (key billing) and tenants only", rec.Code, body)
	}
	rec = httptest.NewRecorder()
	r.sys.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/status", nil))
	if body := rec.Body.String(); !strings.Contains(body, `"source": "orders"`) || !strings.Contains(body, `"2": 270`) || !strings.Contains(body, "no such table: tenant_keys") {
		t.Errorf("/api/v1/status lacks the source counts and errors:\n%s", body)
	}

	// Past the grace: version 1 has no row rekey can count, but tenants
	// might hold some: it waits, reported, and payments does not fail.
	r.offset.Store(int64(99 * 24 * time.Hour))
	rep = r.sys.Engine.RunCycle(ctx)
	kr := report(rep, "payments")
	if kr.Outcome == rotation.OutcomeFailed {
		t.Fatalf("payments failed: %s", kr.Error)
	}
	if st := r.versionStates(t)[1]; st != rekey.VersionPendingRetirement {
		t.Fatalf("payments version 1 is %s while source tenants cannot be counted", st)
	}
	if len(kr.Blocked) != 1 || kr.Blocked[0].Version != 1 || !strings.Contains(kr.Blocked[0].Reason, "tenants") {
		t.Errorf("payments blocked = %+v; want version 1 waiting on source tenants", kr.Blocked)
	}

	// The table appears with a payments row on version 1 and a row naming
	// a key rekey does not have: the row is re-wrapped, version 1 retires.
	a.exec(t, `CREATE TABLE tenant_keys (id INTEGER PRIMARY KEY, key_name TEXT, wrapped_dek BLOB, key_version INTEGER)`)
	pt := make([]byte, 32)
	pt[0] = 7
	w, err := r.kms.Wrap(ctx, r.ref, 1, pt)
	if err != nil {
		t.Fatal(err)
	}
	a.exec(t, `INSERT INTO tenant_keys VALUES (1, 'payments', ?, 1), (2, 'paymnets', x'00', 1)`, w)
	rep = r.sys.Engine.RunCycle(ctx)
	if kr := report(rep, "payments"); kr.Outcome == rotation.OutcomeFailed || len(kr.Retired) != 1 {
		t.Fatalf("payments: %s, retired %v (%s); want version 1 retired", kr.Outcome, kr.Retired, kr.Error)
	}
	var (
		nw []byte
		nv int
	)
	if err := a.db.QueryRow("SELECT wrapped_dek, key_version FROM tenant_keys WHERE id = 1").Scan(&nw, &nv); err != nil {
		t.Fatal(err)
	}
	if got, err := r.kms.Unwrap(ctx, r.ref, 2, nw); nv != 2 || err != nil || sha256.Sum256(got) != sha256.Sum256(pt) {
		t.Errorf("tenants row 1: version %d, unwrap under 2: %v", nv, err)
	}
	unknown := r.sys.Engine.UnknownKeys(ctx, []string{"payments", "billing"})
	if len(unknown) != 1 || unknown["tenants"]["paymnets"] != 1 {
		t.Errorf("UnknownKeys = %v; want tenants: paymnets 1", unknown)
	}
	if logs := r.logs.String(); !strings.Contains(logs, `"source":"tenants","key_id":"paymnets","deks":1`) {
		t.Errorf("the row naming an unknown key was not logged:\n%s", logs)
	}
}

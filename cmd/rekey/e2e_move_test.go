//go:build cgo

package main

// End-to-end tests of moving a key between backends (issue 13, point 3)
// through the real rekey binary: from the embedded keyring (local) to a
// real PKCS#11 token (SoftHSM2: REKEY_TEST_PKCS11_*) and to AWS KMS
// (local-kms: REKEY_TEST_AWSKMS_ENDPOINT), with a crash at each failpoint
// of the state machine during a move.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/kms/awskms"
	"github.com/rekeyhq/rekey/kms/pkcs11"
)

// moveTarget is a backend to move keys to: its config entry, the
// environment its processes need, and a way to ask it for a key's current
// version directly.
type moveTarget struct {
	name    string // the backend's name in rekey.yaml
	config  func(h *e2eHome) string
	env     []string
	current func(t *testing.T, key string) (int, error)
	unique  string // key name prefix, unique per run (the peer outlives the test)
}

func pkcs11Target(t *testing.T) moveTarget {
	t.Helper()
	module, token, pin := pkcs11Peer(t)
	return moveTarget{
		name: "hsm",
		config: func(h *e2eHome) string {
			pinFile := filepath.Join(h.dir, "hsm.pin")
			if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("  hsm:\n    type: pkcs11\n    module: %s\n    token_label: %s\n    pin_file: %s\n", module, token, pinFile)
		},
		current: func(t *testing.T, key string) (int, error) {
			c, err := pkcs11.New(context.Background(), pkcs11.Config{Module: module, TokenLabel: token, PIN: pin})
			if err != nil {
				return 0, err
			}
			defer c.Close()
			return c.CurrentVersion(t.Context(), key)
		},
		unique: "mv-" + strings.ToLower(rekey.NewID())[:12],
	}
}

func awsTarget(t *testing.T) moveTarget {
	t.Helper()
	endpoint := awsEndpoint(t)
	creds := []string{"AWS_ACCESS_KEY_ID=AKIDREKEYE2E", "AWS_SECRET_ACCESS_KEY=rekey-e2e-not-a-secret", "AWS_EC2_METADATA_DISABLED=true"}
	prefix := "alias/rekey-move-" + strings.ToLower(rekey.NewID()) + "/"
	return moveTarget{
		name: "aws",
		config: func(*e2eHome) string {
			return fmt.Sprintf("  aws:\n    type: awskms\n    region: us-east-1\n    endpoint: %s\n    alias_prefix: %s\n    deletion_window_days: 7\n", endpoint, prefix)
		},
		env: creds,
		current: func(t *testing.T, key string) (int, error) {
			for _, kv := range creds {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			c, err := awskms.New(context.Background(), awskms.Config{Region: "us-east-1", Endpoint: endpoint, AliasPrefix: prefix, DeletionWindowDays: 7})
			if err != nil {
				return 0, err
			}
			return c.CurrentVersion(t.Context(), prefix+key)
		},
		unique: "mv",
	}
}

// moveHome is a fresh home with the target backend configured, and a key
// on the local backend with n DEKs and files sealed files.
func moveHome(t *testing.T, tg moveTarget, key string, deks, files int, opts e2eOpts) (*e2eHome, []sealedFile) {
	t.Helper()
	h := newE2EHome(t, opts)
	h.editConfig([2]string{"backends:\n", "backends:\n" + tg.config(h)})
	h.must("key", "create", key, "--backend", "local", "--grace", "1h")
	h.createDEKs(key, deks)
	return h, h.sealFiles(key, key, fileSizes(files))
}

// versionRow is a key_versions row as stored.
type versionRow struct {
	version, backendVersion int
	state, backend          string
}

func (h *e2eHome) versionRows(key string) []versionRow {
	h.t.Helper()
	rows, err := h.sqlDB().Query(`SELECT version, backend_version, state, backend FROM key_versions WHERE key = ? ORDER BY version`, key)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	var out []versionRow
	for rows.Next() {
		var r versionRow
		if err := rows.Scan(&r.version, &r.backendVersion, &r.state, &r.backend); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// checkMoved checks the end state of a move of key to tg, after the grace:
// the key on tg with v2 active, every one of want DEKs on v2, exactly one
// version of the key on tg (its version 1) and none new on local, v1
// retired and recorded on local, every file decrypts.
func checkMoved(t *testing.T, h *e2eHome, tg moveTarget, key string, want int64, files []sealedFile) {
	t.Helper()
	k := h.assertAllOn(key, 2, want)
	if k.Backend != tg.name {
		t.Errorf("key %s is on backend %s, want %s", key, k.Backend, tg.name)
	}
	rows := h.versionRows(key)
	wantRows := []versionRow{{1, 1, string(rekey.VersionRetired), "local"}, {2, 1, string(rekey.VersionActive), tg.name}}
	if fmt.Sprint(rows) != fmt.Sprint(wantRows) {
		t.Errorf("versions of %s: %+v, want %+v (v1 retired on local, v2 = %s's version 1)", key, rows, wantRows, tg.name)
	}
	if v, err := tg.current(t, key); err != nil || v != 1 {
		t.Errorf("backend %s: current version of %s = %d, %v; want exactly 1", tg.name, key, v, err)
	}
	if v := h.backendVersion(key); v != 1 {
		t.Errorf("local keyring: %s at version %d, want still 1", key, v)
	}
	h.checkFiles(files)
}

// auditOf returns key's audit events (`audit list --key --json`).
func (h *e2eHome) auditOf(key string) []rekey.AuditEvent {
	h.t.Helper()
	out := h.must("audit", "list", "--key", key, "--json")
	var evs []rekey.AuditEvent
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev rekey.AuditEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			h.t.Fatalf("audit list line %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// The pkcs11 move tests are not parallel: SoftHSM2's file store, opened
// by several processes at once, sometimes shows a process no token while
// another rewrites it (seen once here: "tokens present: "" (slot 0)").
func TestE2E_MoveLocalToPKCS11(t *testing.T) {
	testMove(t, pkcs11Target(t))
}

func TestE2E_MoveLocalToAWSKMS(t *testing.T) {
	testMove(t, awsTarget(t)) // not parallel: t.Setenv (the AWS SDK reads credentials from the environment)
}

// testMove (issue 13): a key with 10,000 DEKs and 5 encrypted files moves
// from local to tg with `rekey key move`: plan shows it first (declared in
// the config), every DEK ends on the new backend's version, every file
// decrypts, the audit trail names both backends, and after the grace
// `rekey run --once` retires the old version on the old backend.
func testMove(t *testing.T, tg moveTarget) {
	for _, kv := range tg.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	const deks, files = 10_000, 5
	key := tg.unique + "-pay"
	h, sealed := moveHome(t, tg, key, deks, files, e2eOpts{})

	// Declared on the target in the config: plan shows a move, and
	// nothing happens before a run or key move.
	h.editConfig([2]string{"keys: []", fmt.Sprintf("keys:\n  - {name: %s, backend: %s, grace: 1h}", key, tg.name)})
	var plan struct {
		Keys []struct {
			Key          string           `json:"key"`
			Action       string           `json:"action"`
			MoveTo       string           `json:"move_to"`
			DEKsToRewrap int64            `json:"deks_to_rewrap"`
			BackendCalls map[string]int64 `json:"backend_calls"`
		} `json:"keys"`
	}
	h.mustJSON(&plan, "plan")
	want := int64(deks + files)
	if len(plan.Keys) != 1 || plan.Keys[0].Action != "move" || plan.Keys[0].MoveTo != tg.name || plan.Keys[0].DEKsToRewrap != want ||
		plan.Keys[0].BackendCalls["create_key"] != 1 || plan.Keys[0].BackendCalls["wrap"] != want {
		t.Fatalf("plan of a key declared on %s: %+v", tg.name, plan.Keys)
	}
	if out := h.must("plan"); !strings.Contains(out, "move: backend local → "+tg.name) {
		t.Errorf("plan does not show the move:\n%s", out)
	}
	if k := h.keyShow(key); k.Backend != "local" || k.ActiveVersion != 1 {
		t.Fatalf("plan changed the key: %+v", k)
	}

	r := h.run("key", "move", key, "--to", tg.name, "--reason", "off the embedded keyring")
	if r.code != 0 {
		t.Fatalf("key move: %v", r)
	}
	t.Logf("move of %d DEKs from local to %s: %v", want, tg.name, r.dur.Round(time.Millisecond))
	if !strings.Contains(r.stdout, "moved key "+key+" to backend "+tg.name) {
		t.Errorf("key move printed %q", r.stdout)
	}
	k := h.assertAllOn(key, 2, want)
	if k.Backend != tg.name || k.version(t, 1).State != string(rekey.VersionPendingRetirement) {
		t.Errorf("after the move: %+v; want on %s, v1 pending retirement", k, tg.name)
	}
	h.checkFiles(sealed)

	var named, events int
	var rotationID string
	for _, ev := range h.auditOf(key) {
		if ev.Type == rekey.AuditRotationStarted {
			rotationID = ev.RotationID
		}
		if ev.RotationID != "" && ev.RotationID == rotationID {
			events++
			if strings.Contains(ev.Reason, "move: from local to "+tg.name) {
				named++
			}
		}
	}
	if events < 5 || named != events {
		t.Errorf("%d of the move's %d audit events name both backends, want all (and at least 5)", named, events)
	}

	// After the grace: v1 is retired on local.
	h.mustAt(2*time.Hour, "run", "--once")
	checkMoved(t, h, tg, key, want, sealed)
	// The target is at its version 1 while rekey's active version is 2:
	// status must not take that for a backend rolled back.
	if st := h.run("status"); st.code != 0 || strings.Contains(st.stdout, "BACKEND ERROR") {
		t.Errorf("status after the move: %v", st)
	}
	var retired bool
	for _, ev := range h.auditOf(key) {
		retired = retired || (ev.Type == rekey.AuditVersionRetired && ev.FromVersion == 1 && strings.HasPrefix(ev.Reason, "on backend local"))
	}
	if !retired {
		t.Error("no version.retired event of v1 names the old backend")
	}
	h.must("audit", "verify")
}

func TestE2E_MoveCrashLocalToPKCS11(t *testing.T) {
	testMoveCrash(t, pkcs11Target(t))
}

func TestE2E_MoveCrashLocalToAWSKMS(t *testing.T) {
	testMoveCrash(t, awsTarget(t))
}

// testMoveCrash (issue 13): a crash (exit 137) at each failpoint of the
// state machine during a move to tg; `rekey run --once` finishes it with
// exactly one new version, on tg (a key the crashed attempt created there
// is adopted), every DEK on it and every file decrypting; the old version
// is retired on local after the grace.
func testMoveCrash(t *testing.T, tg moveTarget) {
	for _, kv := range tg.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	const deks, files = 400, 2
	for _, point := range failpoint.Names() {
		t.Run(point, func(t *testing.T) {
			key := tg.unique + "-" + strings.NewReplacer(".", "-", "_", "-").Replace(point)
			h, sealed := moveHome(t, tg, key, deks, files, e2eOpts{batchSize: 100})
			crash := []string{"REKEY_FAILPOINTS=" + point + "=crash"}
			r := h.runEnv(crash, "key", "move", key, "--to", tg.name)
			if point == failpoint.RetireAfterBackendDisable {
				// Retirement comes after the move, in a cycle past the grace.
				if r.code != 0 {
					t.Fatalf("key move: %v", r)
				}
				r = h.runEnv(append(crash, "REKEY_TEST_CLOCK_OFFSET=2h"), "run", "--once")
			}
			if r.code != 137 {
				t.Fatalf("want a crash (exit 137) at %s: %v", point, r)
			}
			// Recovery, then (a grace later) the old version's retirement.
			h.mustAt(2*time.Hour, "run", "--once")
			h.mustAt(4*time.Hour, "run", "--once")
			checkMoved(t, h, tg, key, deks+files, sealed)
			var adopted, created int
			for _, ev := range h.auditOf(key) {
				switch ev.Type {
				case rekey.AuditVersionAdopted:
					adopted++
				case rekey.AuditVersionCreated:
					created++
				}
			}
			if adopted+created != 1 || (point == failpoint.RotationAfterBackendRotate) != (adopted == 1) {
				t.Errorf("after a crash at %s: %d version.created and %d version.adopted events; want one, adopted only after a crash following the key's creation on %s",
					point, created, adopted, tg.name)
			}
		})
	}
}

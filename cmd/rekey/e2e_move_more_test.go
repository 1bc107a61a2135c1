//go:build cgo

package main

// More end-to-end tests of moving a key between backends (issue 13: "works
// between any two of local, awskms, pkcs11 and vault"), through the real
// rekey binary: local → vault and vault → local (vault is transitserver,
// the in-process stand-in built on Vault's own Transit code), awskms →
// pkcs11 (local-kms and SoftHSM2) and pkcs11 → vault, plus a crash at each
// failpoint of a move to vault. The helpers of e2e_move_test.go do the
// rest.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/kms/keyprotect"
	"github.com/rekeyhq/rekey/kms/keyprotect/kpserver"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/kms/vault/transitserver"
)

// vaultTarget is a Transit stand-in as a move's source or target, backend
// "vault". One server serves every home of the test (key names are unique
// per home), each home with the token in its own 0600 token_file.
func vaultTarget(t *testing.T) moveTarget {
	t.Helper()
	srv, err := transitserver.Start(transitserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return moveTarget{
		name: "vault",
		config: func(h *e2eHome) string {
			tokenFile := filepath.Join(h.dir, "vault-token")
			if err := os.WriteFile(tokenFile, []byte(srv.Token()+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("  vault:\n    type: vault\n    address: %s\n    token_file: %s\n", srv.URL, tokenFile)
		},
		current: func(t *testing.T, key string) (int, error) {
			latest, _, _, ok := srv.KeyVersions(key)
			if !ok {
				return 0, fmt.Errorf("transitserver has no key %s: %w", key, rekey.ErrKeyNotFound)
			}
			return latest, nil
		},
		unique: "mv-" + strings.ToLower(rekey.NewID())[:12],
	}
}

// kpTarget is a Key Protect stand-in (kpserver, not the real service) as
// a move's target, backend "kp"; the API key reaches rekey through the
// environment only.
func kpTarget(t *testing.T) (moveTarget, *kpserver.Server) {
	t.Helper()
	const instance, apiKey = "3f2a1b0c-9d8e-4f7a-8b6c-5d4e3f2a1b0c", "e2e-move-kp-API-KEY-never-printed"
	srv := kpserver.New(kpserver.Options{InstanceID: instance, APIKeys: []string{apiKey}, TokenTTL: time.Hour})
	url := srv.Start()
	t.Cleanup(srv.Close)
	return moveTarget{
		name: "kp",
		config: func(*e2eHome) string {
			return fmt.Sprintf("  kp:\n    type: keyprotect\n    instance_id: %s\n    endpoint: %s\n    iam_endpoint: %s\n    rate_limit: 2000\n", instance, url, url)
		},
		env: []string{"IBMCLOUD_API_KEY=" + apiKey},
		current: func(t *testing.T, key string) (int, error) {
			if n := srv.Versions(keyprotect.AliasFor(key)); n > 0 {
				return n, nil
			}
			return 0, fmt.Errorf("kpserver has no key %s: %w", key, rekey.ErrKeyNotFound)
		},
		unique: "mv",
	}, srv
}

// localTarget is the home's own keyring (backend "local", configured by
// rekey init): current is read through h.backendVersion.
func localTarget() moveTarget {
	return moveTarget{name: "local", config: func(*e2eHome) string { return "" }}
}

// currentOn is the backend's current version of key on side.
func currentOn(t *testing.T, h *e2eHome, side moveTarget, key string) (int, error) {
	t.Helper()
	if side.name == "local" {
		return h.backendVersion(key), nil
	}
	return side.current(t, key)
}

func TestE2E_MoveLocalToVault(t *testing.T) {
	testMoveBetween(t, localTarget(), vaultTarget(t))
}

func TestE2E_MoveVaultToLocal(t *testing.T) {
	testMoveBetween(t, vaultTarget(t), localTarget())
}

// Not parallel: t.Setenv (AWS credentials), and SoftHSM2's file store
// shared by processes (see TestE2E_MoveLocalToPKCS11).
func TestE2E_MoveAWSKMSToPKCS11(t *testing.T) {
	testMoveBetween(t, awsTarget(t), pkcs11Target(t))
}

func TestE2E_MovePKCS11ToVault(t *testing.T) {
	testMoveBetween(t, pkcs11Target(t), vaultTarget(t))
}

// TestE2E_MoveCrashLocalToVault: a crash at each failpoint during a move
// from local to vault, finished by the next run with exactly one Transit
// key version (testMoveCrash).
func TestE2E_MoveCrashLocalToVault(t *testing.T) {
	testMoveCrash(t, vaultTarget(t))
}

// TestE2E_MoveCrashLocalToKeyProtect: Key Protect finds keys by name
// (its alias), so a move to it that crashed after creating the key there
// adopts that key: a crash at each failpoint of a move from local to
// Key Protect is finished with exactly one key on Key Protect per moved
// key, at its version 1 (testMoveCrash).
func TestE2E_MoveCrashLocalToKeyProtect(t *testing.T) {
	tg, srv := kpTarget(t)
	testMoveCrash(t, tg)
	if n, want := srv.Keys(), len(failpoint.Names()); n != want {
		t.Errorf("Key Protect holds %d keys after %d moves, want %d (one each)", n, want, want)
	}
}

// testMoveBetween (issue 13): a key with 500 DEKs and 3 sealed files on
// from moves to to with `rekey key move`: every DEK on v2 (to's version
// 1), every file decrypts before and after the grace, the audit trail
// names both backends, and after the grace `rekey run --once` retires v1
// on from, which still has exactly its version 1 of the key.
func testMoveBetween(t *testing.T, from, to moveTarget) {
	for _, side := range []moveTarget{from, to} {
		for _, kv := range side.env {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
	}
	const deks, files = 500, 3
	unique := to.unique
	if unique == "" || unique == "mv" {
		unique = from.unique
	}
	key := unique + "-" + from.name + "-" + to.name
	h := newE2EHome(t, e2eOpts{batchSize: 200})
	h.editConfig([2]string{"backends:\n", "backends:\n" + from.config(h) + to.config(h)})
	h.must("config", "validate")
	h.must("key", "create", key, "--backend", from.name, "--grace", "1h")
	h.createDEKs(key, deks)
	sealed := h.sealFiles(key, key, fileSizes(files))
	want := int64(deks + files)

	r := h.run("key", "move", key, "--to", to.name, "--reason", "e2e")
	if r.code != 0 {
		t.Fatalf("key move: %v", r)
	}
	t.Logf("move of %d DEKs from %s to %s: %v", want, from.name, to.name, r.dur.Round(time.Millisecond))
	k := h.assertAllOn(key, 2, want)
	if k.Backend != to.name || k.version(t, 1).State != string(rekey.VersionPendingRetirement) {
		t.Errorf("after the move: backend %s, v1 %s; want on %s, v1 pending_retirement", k.Backend, k.version(t, 1).State, to.name)
	}
	h.checkFiles(sealed)
	var started, named int
	for _, ev := range h.auditOf(key) {
		if ev.Type == rekey.AuditRotationStarted {
			started++
			if strings.HasPrefix(ev.Reason, "move: from "+from.name+" to "+to.name) {
				named++
			}
		}
	}
	if started != 1 || named != 1 {
		t.Errorf("%d rotation.started events, %d naming both backends; want 1 and 1", started, named)
	}

	// After the grace: v1 retired on from.
	h.mustAt(2*time.Hour, "run", "--once")
	h.assertAllOn(key, 2, want)
	rows := h.versionRows(key)
	wantRows := []versionRow{{1, 1, string(rekey.VersionRetired), from.name}, {2, 1, string(rekey.VersionActive), to.name}}
	if fmt.Sprint(rows) != fmt.Sprint(wantRows) {
		t.Errorf("versions of %s: %+v, want %+v (v1 retired on %s, v2 = %s's version 1)", key, rows, wantRows, from.name, to.name)
	}
	for _, side := range []moveTarget{from, to} {
		if v, err := currentOn(t, h, side, key); err != nil || v != 1 {
			t.Errorf("backend %s: current version of %s = %d, %v; want exactly 1", side.name, key, v, err)
		}
	}
	var retired bool
	for _, ev := range h.auditOf(key) {
		retired = retired || (ev.Type == rekey.AuditVersionRetired && ev.FromVersion == 1 && strings.HasPrefix(ev.Reason, "on backend "+from.name))
	}
	if !retired {
		t.Errorf("no version.retired event of v1 names the old backend %s", from.name)
	}
	h.checkFiles(sealed)
	if st := h.run("status"); st.code != 0 || strings.Contains(st.stdout, "BACKEND ERROR") {
		t.Errorf("status after the move: %v", st)
	}
	h.must("audit", "verify")
}

// TestE2E_MoveDestroyAfterDeletesOldKey (issue 13): a key with
// destroy_after moved from local to AWS KMS. Its v1, the newest version
// in the local keyring, stays enabled there after the move (the keyring
// keeps a key's newest version usable) and is retired in the store only;
// when destroy_after has passed, `rekey run --once` deletes the key from
// the local keyring, records v1 destroyed with an audit event saying so,
// and every file still decrypts (from AWS KMS).
func TestE2E_MoveDestroyAfterDeletesOldKey(t *testing.T) {
	tg := awsTarget(t)
	for _, kv := range tg.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	key := tg.unique + "-destroy"
	h := newE2EHome(t, e2eOpts{batchSize: 200})
	h.editConfig([2]string{"backends:\n", "backends:\n" + tg.config(h)})
	h.must("key", "create", key, "--backend", "local", "--grace", "1h", "--destroy-after", "24h")
	h.createDEKs(key, 300)
	sealed := h.sealFiles(key, key, fileSizes(2))
	h.must("key", "move", key, "--to", tg.name)
	h.mustAt(2*time.Hour, "run", "--once")
	if rows := h.versionRows(key); len(rows) != 2 || rows[0].state != string(rekey.VersionRetired) {
		t.Fatalf("versions after the grace: %+v, want v1 retired", rows)
	}
	if v := h.backendVersion(key); v != 1 {
		t.Fatalf("local keyring before destroy_after: %s at version %d, want still there at 1", key, v)
	}

	h.mustAt(27*time.Hour, "run", "--once")
	rows := h.versionRows(key)
	want := []versionRow{{1, 1, string(rekey.VersionDestroyed), "local"}, {2, 1, string(rekey.VersionActive), tg.name}}
	if fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Errorf("versions after destroy_after: %+v, want %+v", rows, want)
	}
	c, err := localkms.New(t.Context(), localkms.Config{Keyring: filepath.Join(h.home, "keyring"), MasterKeyFile: filepath.Join(h.home, "master.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CurrentVersion(t.Context(), key); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("local keyring after destroy_after: %v, want the key deleted (ErrKeyNotFound)", err)
	}
	var deleted bool
	for _, ev := range h.auditOf(key) {
		deleted = deleted || (ev.Type == rekey.AuditVersionDestroyed && ev.FromVersion == 1 &&
			strings.HasPrefix(ev.Reason, "on backend local; the key is deleted there"))
	}
	if !deleted {
		t.Errorf("no version.destroyed event of v1 says the key was deleted on local: %+v", h.auditOf(key))
	}
	h.assertAllOn(key, 2, 302)
	h.checkFiles(sealed)
	h.must("audit", "verify")
}

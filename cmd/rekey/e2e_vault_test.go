package main

// End-to-end tests of the vault backend through the real rekey binary.
// The Vault is transitserver: an in-process stand-in for Vault's Transit
// engine built on Vault's own keysutil, served over HTTP on 127.0.0.1 by
// this test process (no Vault or OpenBao server can be installed where
// rekey is tested). Helpers are in e2e_helpers_test.go.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/vault/transitserver"
)

// addVaultBackend starts a Transit stand-in and adds it to h's config as
// backend "vault", with the token in a 0600 token_file.
func addVaultBackend(t *testing.T, h *e2eHome) *transitserver.Server {
	t.Helper()
	srv, err := transitserver.Start(transitserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	tokenFile := filepath.Join(h.dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(srv.Token()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.editConfig([2]string{"backends:\n", fmt.Sprintf("backends:\n  vault:\n    type: vault\n    address: %s\n    token_file: %s\n", srv.URL, tokenFile)})
	h.must("config", "validate")
	return srv
}

// TestE2E_VaultRotation: a key on Vault Transit with a 3 s period, 2,000
// DEKs and 5 sealed files rotates with `rekey run --once`: every DEK on
// version 2, re-wrapped by Transit rewrap in batches (the server counts
// fewer rewrap requests than DEKs, and no decrypt); after the grace the
// next run retires version 1, at Vault too (min_decryption_version 2);
// every file decrypts. Then, with Vault sealed, a local key still rotates
// in the same run, `rekey status` reports the vault key's backend as
// sealed and /readyz the vault backend as failing.
func TestE2E_VaultRotation(t *testing.T) {
	t.Parallel()
	const deks, files = 2000, 5
	h := newE2EHome(t, e2eOpts{})
	srv := addVaultBackend(t, h)

	h.must("key", "create", "vk", "--backend", "vault", "--period", "3s", "--rotate-within", "1s", "--grace", "1s")
	h.must("key", "create", "lk", "--backend", "local")
	start := time.Now()
	h.createDEKs("vk", deks)
	sealed := h.sealFiles("vk", "vk", fileSizes(files))
	t.Logf("%d DEKs and %d files on Vault: %v", deks, files, time.Since(start).Round(time.Millisecond))
	if v, _, _, ok := srv.KeyVersions("vk"); !ok || v != 1 {
		t.Fatalf("Transit key vk: version %d (exists %v), want 1", v, ok)
	}

	// The 3 s period has passed (an injected clock offset, not a sleep).
	before := srv.Counts()
	run1 := h.runEnv([]string{"REKEY_TEST_CLOCK_OFFSET=3s"}, "run", "--once")
	if run1.code != 0 {
		t.Fatalf("run 1: %v", run1)
	}
	c := srv.Counts()
	rewraps, items := c.Rewrap-before.Rewrap, c.RewrapItems-before.RewrapItems
	t.Logf("run 1 (rotate, re-wrap %d DEKs): %v; Transit rewrap requests %d (batch %d) for %d items, decrypt %d, encrypt %d",
		deks+files, run1.dur.Round(time.Millisecond), rewraps, c.RewrapBatch-before.RewrapBatch, items, c.Decrypt-before.Decrypt, c.Encrypt-before.Encrypt)
	if items < deks+files || rewraps == 0 || rewraps >= deks || c.RewrapBatch-before.RewrapBatch != rewraps {
		t.Errorf("re-wrap of %d DEKs: %d rewrap requests (%d batch) for %d items, want fewer batch requests than DEKs", deks+files, rewraps, c.RewrapBatch-before.RewrapBatch, items)
	}
	if n := c.Decrypt - before.Decrypt; n != 0 {
		t.Errorf("the rotation decrypted %d DEKs outside Transit rewrap, want 0", n)
	}
	k := h.assertAllOn("vk", 2, deks+files)
	if s := k.version(t, 1).State; s != string(rekey.VersionPendingRetirement) {
		t.Fatalf("after run 1: v1 %s, want pending_retirement (grace 1s)", s)
	}
	if v, _, _, _ := srv.KeyVersions("vk"); v != 2 {
		t.Errorf("Transit key vk at version %d after the rotation, want 2", v)
	}

	// The grace has passed. The next rotation is not due yet: the 3 s
	// period would otherwise start one in the same run.
	if _, err := h.sqlDB().Exec(`UPDATE keys SET expires_at = ? WHERE name = 'vk'`, time.Now().Add(time.Hour).UnixMicro()); err != nil {
		t.Fatal(err)
	}
	run2 := h.runEnv([]string{"REKEY_TEST_CLOCK_OFFSET=5s"}, "run", "--once")
	if run2.code != 0 {
		t.Fatalf("run 2: %v", run2)
	}
	k = h.assertAllOn("vk", 2, deks+files)
	if len(k.Versions) != 2 || k.version(t, 1).State != string(rekey.VersionRetired) {
		t.Errorf("after run 2: versions %+v, want v1 retired, v2 active", k.Versions)
	}
	if latest, minDec, _, _ := srv.KeyVersions("vk"); latest != 2 || minDec != 2 {
		t.Errorf("Transit key vk: latest %d, min_decryption_version %d; want 2 and 2 (v1 disabled at Vault)", latest, minDec)
	}
	h.checkFiles(sealed)

	// Vault sealed: the local key rotates all the same; the vault key fails
	// with an error naming its backend.
	h.createDEKs("lk", 50)
	h.makeDue("lk")
	h.makeDue("vk")
	srv.SetSealed(true)
	run3 := h.run("run", "--once")
	if run3.code != 1 {
		t.Fatalf("run with Vault sealed: want exit 1 (a key failed)\n%v", run3)
	}
	h.assertAllOn("lk", 2, 50)
	failed := false
	for _, m := range logLines(run3.stderr, "key rotation failed") {
		if m["key_id"] == "vk" && strings.Contains(fmt.Sprint(m["error"]), "sealed") && strings.Contains(fmt.Sprint(m["error"]), "vault") {
			failed = true
		}
	}
	if !failed {
		t.Errorf("the run's log has no failure of key vk saying Vault is sealed:\n%s", e2eTail(run3.stderr, 3000))
	}

	st := h.run("status", "--json")
	var status struct {
		Keys []struct {
			Name         string `json:"name"`
			Backend      string `json:"backend"`
			BackendError string `json:"backend_error"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(st.stdout), &status); err != nil || st.code != 1 {
		t.Fatalf("status --json with Vault sealed: exit %d, %v\n%v", st.code, err, st)
	}
	for _, key := range status.Keys {
		switch key.Name {
		case "vk":
			if key.Backend != "vault" || !strings.Contains(key.BackendError, "sealed") || !strings.Contains(key.BackendError, "kms:vault") || !strings.Contains(key.BackendError, "unseal") {
				t.Errorf("status of vk with Vault sealed: backend %q, backend_error %q; want the vault backend named, sealed, and how to fix", key.Backend, key.BackendError)
			}
		case "lk":
			if key.BackendError != "" {
				t.Errorf("status of lk (local) has a backend error: %s", key.BackendError)
			}
		}
	}
	if text := h.run("status"); !strings.Contains(text.stdout, "BACKEND ERROR") || !strings.Contains(text.stdout, "sealed") {
		t.Errorf("status (text) with Vault sealed does not show the backend error:\n%s", text.stdout)
	}

	wk := h.startWorker()
	code, body, ok := wk.waitReady(false, 15*time.Second)
	// /readyz names the backend. It does not always say "sealed": the
	// middleware retries the transient ping until the ready timeout, and
	// /readyz then reports "no answer within 2s" (httpapi keeps no error
	// of a ping it stopped waiting for).
	if !ok || code != http.StatusServiceUnavailable || !strings.Contains(body, "FAIL backend:vault") {
		t.Errorf("/readyz with Vault sealed: %d %q, want 503 naming backend:vault", code, body)
	}
	t.Logf("/readyz with Vault sealed: %d %q", code, body)
	srv.SetSealed(false)
	if code, body, ok := wk.waitReady(true, 15*time.Second); !ok {
		t.Errorf("/readyz after unsealing: %d %q, want 200", code, body)
	}
	wk.stop()

	// Unreachable (the server gone): status names the key's backend.
	srv.Close()
	st = h.run("status", "--json")
	if st.code != 1 || !strings.Contains(st.stdout, "kms:vault unreachable") {
		t.Errorf("status with Vault gone: exit %d, want 1 and vk's backend_error naming kms:vault unreachable\n%v", st.code, st)
	}
}

//go:build cgo

package main

// End-to-end test of the pkcs11 backend through the real rekey binary,
// against a real PKCS#11 token: SoftHSM2, made by scripts/softhsm (which
// scripts/test runs) and named by REKEY_TEST_PKCS11_MODULE,
// REKEY_TEST_PKCS11_TOKEN, REKEY_TEST_PKCS11_PIN and SOFTHSM2_CONF.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/pkcs11"
)

// pkcs11Peer returns the test token's module, label and PIN. Without them
// the test fails under CI (CI or REKEY_REQUIRE_PEERS set) and is skipped
// otherwise, naming the command that makes a token.
func pkcs11Peer(t *testing.T) (module, token, pin string) {
	t.Helper()
	module, token, pin = os.Getenv("REKEY_TEST_PKCS11_MODULE"), os.Getenv("REKEY_TEST_PKCS11_TOKEN"), os.Getenv("REKEY_TEST_PKCS11_PIN")
	if module == "" || token == "" || pin == "" {
		const how = "REKEY_TEST_PKCS11_MODULE, REKEY_TEST_PKCS11_TOKEN and REKEY_TEST_PKCS11_PIN are not all set: make a SoftHSM2 token with `eval \"$(scripts/softhsm start)\"`, or run scripts/test"
		if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	return module, token, pin
}

// TestE2E_PKCS11 (issue 13): a key on the pkcs11 backend with a 3 s
// period, 2,000 DEKs and 5 sealed files is rotated by `rekey run --once`
// once due: every DEK on version 2, every file decrypts, version 1 retired
// (grace 0s) — on the token too, which then refuses it. Then, with the
// backend's PIN wrong, `rekey run --once` still rotates a key on the local
// backend, and `rekey status` and /readyz name the failing backend (status
// also the key) and the wrong PIN.
func TestE2E_PKCS11(t *testing.T) {
	t.Parallel()
	module, token, pin := pkcs11Peer(t)
	const deks = 2000
	h := newE2EHome(t, e2eOpts{})
	pinFile := filepath.Join(h.dir, "hsm.pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.editConfig([2]string{"backends:\n", fmt.Sprintf("backends:\n  hsm:\n    type: pkcs11\n    module: %s\n    token_label: %s\n    pin_file: %s\n", module, token, pinFile)})
	h.must("config", "validate")

	// Unique per run: the token outlives the test.
	key := "p11-" + strings.ToLower(rekey.NewID())
	created := time.Now()
	h.must("key", "create", key, "--backend", "hsm", "--period", "3s", "--rotate-within", "1s", "--grace", "0s")
	h.createDEKs(key, deks)
	files := h.sealFiles(key, "hsm", fileSizes(5))
	before := h.dekRows(key, 1)[0]
	if before.version != 1 {
		t.Fatalf("DEK %s is on version %d before the rotation", before.id, before.version)
	}
	setup := time.Since(created)
	// Due once less than 1 s of the 3 s period is left: wait for it on
	// the real clock.
	time.Sleep(time.Until(created.Add(2100 * time.Millisecond)))
	if k := h.keyShow(key); !k.Due || k.ActiveVersion != 1 {
		t.Fatalf("key %s is not due 2.1 s into a 3 s period (rotate within 1 s): %+v", key, k)
	}
	r := h.run("run", "--once")
	if r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	t.Logf("setup (key, %d DEKs, %d files) %v; rotation of %d DEKs on SoftHSM2: %v", deks, len(files), setup.Round(time.Millisecond), deks+len(files), r.dur.Round(time.Millisecond))
	k := h.assertAllOn(key, 2, deks+int64(len(files)))
	if len(k.Versions) != 2 || k.version(t, 1).State != string(rekey.VersionRetired) || k.Backend != "hsm" {
		t.Errorf("after the run: backend %s, versions %+v; want hsm, v1 retired and v2 active", k.Backend, k.Versions)
	}
	h.checkFiles(files)

	// On the token: version 2 is the newest, and version 1 is refused.
	c, err := pkcs11.New(context.Background(), pkcs11.Config{Module: module, TokenLabel: token, PIN: pin})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.CurrentVersion(t.Context(), key); err != nil || v != 2 {
		t.Errorf("token: current version of %s = %d, %v; want 2", key, v, err)
	}
	if _, err := c.Unwrap(t.Context(), key, 1, before.wrapped); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Errorf("token: unwrap of a version-1 DEK after retirement: %v, want ErrVersionDisabled", err)
	}
	c.Close()

	// A wrong PIN: the hsm key (due again) fails, a local key still rotates.
	h.must("key", "create", "other", "--backend", "local", "--grace", "0s")
	h.createDEKs("other", 100)
	h.makeDue("other")
	h.makeDue(key)
	h.editConfig([2]string{"    pin_file: " + pinFile + "\n", "    pin_env: HSM_TEST_WRONG_PIN\n"})
	const wrongPIN = "wrong-4242"
	env := []string{"HSM_TEST_WRONG_PIN=" + wrongPIN}
	r = h.runEnv(env, "run", "--once")
	if r.code != 1 {
		t.Fatalf("run with a wrong PIN: want exit 1 (one key failed)\n%v", r)
	}
	if !strings.Contains(r.stderr, "backend hsm") || !strings.Contains(r.stderr, "wrong PIN") || !strings.Contains(r.stderr, key) {
		t.Errorf("the run's log does not name backend hsm, key %s and the wrong PIN:\n%s", key, e2eTail(r.stderr, 3000))
	}
	if strings.Contains(r.stderr, wrongPIN) || strings.Contains(r.stderr, pin) {
		t.Error("the run's log contains a PIN")
	}
	st := h.runEnv(env, "status", "--json")
	if st.code != 1 {
		t.Errorf("status with a wrong PIN: exit %d, want 1 (a key has a backend problem)\n%v", st.code, st)
	}
	var status struct {
		Keys []struct {
			Name          string `json:"name"`
			Backend       string `json:"backend"`
			ActiveVersion int    `json:"active_version"`
			BackendError  string `json:"backend_error"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(st.stdout), &status); err != nil {
		t.Fatalf("status --json: %v\n%s", err, st.stdout)
	}
	seen := 0
	for _, sk := range status.Keys {
		switch sk.Name {
		case key:
			seen++
			if sk.Backend != "hsm" || !strings.Contains(sk.BackendError, "wrong PIN") || !strings.Contains(sk.BackendError, "HSM_TEST_WRONG_PIN") || sk.ActiveVersion != 2 {
				t.Errorf("status of %s: %+v; want backend hsm, active v2, a backend_error naming the wrong PIN and HSM_TEST_WRONG_PIN", key, sk)
			}
		case "other":
			seen++
			if sk.BackendError != "" || sk.ActiveVersion != 2 {
				t.Errorf("status of other: %+v; want v2 active (rotated despite the broken hsm) and no backend_error", sk)
			}
		}
	}
	if seen != 2 {
		t.Errorf("status --json lists %d of the 2 keys:\n%s", seen, st.stdout)
	}
	if strings.Contains(st.stdout+st.stderr, wrongPIN) {
		t.Error("status prints the PIN")
	}

	w := startWorkerEnv(h, env)
	code, body := w.get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "FAIL backend:hsm") || !strings.Contains(body, "wrong PIN") {
		t.Errorf("/readyz with a wrong PIN: %d %s; want 503 naming backend:hsm and the wrong PIN", code, body)
	}
	if strings.Contains(body, wrongPIN) {
		t.Error("/readyz prints the PIN")
	}
	t.Logf("/readyz with a wrong PIN: %d %s", code, strings.TrimSpace(body))
}

// startWorkerEnv is startWorker with extra environment variables.
func startWorkerEnv(h *e2eHome, env []string) *e2eWorker {
	h.t.Helper()
	cmd := h.command(env, "run", "--listen", "127.0.0.1:0")
	pipe, err := cmd.StderrPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	w := &e2eWorker{t: h.t, cmd: cmd, lines: watchLines(pipe, `"msg":"`+serveMsg+`"`), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() {
		<-w.lines.done
		cmd.Wait()
		close(w.exited)
	}()
	h.t.Cleanup(func() {
		select {
		case <-w.exited:
		default:
			cmd.Process.Kill()
			<-w.exited
		}
	})
	select {
	case <-w.lines.found:
	case <-w.exited:
		h.t.Fatalf("rekey run exited (%v) before serving:\n%s", cmd.ProcessState, e2eTail(w.lines.text(), 4000))
	case <-time.After(30 * time.Second):
		h.t.Fatalf("rekey run does not serve after 30s:\n%s", e2eTail(w.lines.text(), 4000))
	}
	lines := logLines(w.lines.text(), serveMsg)
	addr, _ := lines[0]["address"].(string)
	if !strings.HasPrefix(addr, "127.0.0.1:") || bytes.HasSuffix([]byte(addr), []byte(":0")) {
		h.t.Fatalf("rekey run logged address %q", addr)
	}
	w.base = "http://" + addr
	return w
}

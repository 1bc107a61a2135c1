package main

// End-to-end test of the keyprotect backend through the real rekey binary,
// against kpserver: an in-process stand-in of IBM Key Protect's REST API
// and IAM token endpoint (NOT the real service; see its package doc). The
// API key reaches rekey only through the environment (IBMCLOUD_API_KEY).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/keyprotect"
	"github.com/rekeyhq/rekey/kms/keyprotect/kpserver"
)

// kpHome is an e2eHome whose commands carry the Key Protect API key in
// their environment.
type kpHome struct {
	*e2eHome
	env []string
}

func (k *kpHome) run(offset time.Duration, args ...string) e2eResult {
	k.t.Helper()
	env := k.env
	if offset != 0 {
		env = append(append([]string(nil), env...), "REKEY_TEST_CLOCK_OFFSET="+offset.String())
	}
	return k.runEnv(env, args...)
}

func (k *kpHome) must(args ...string) string {
	k.t.Helper()
	r := k.run(0, args...)
	if r.code != 0 {
		k.t.Fatalf("%v", r)
	}
	return r.stdout
}

func (k *kpHome) mustJSON(v any, args ...string) {
	k.t.Helper()
	out := k.must(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		k.t.Fatalf("rekey %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (k *kpHome) keyShow(name string) e2eKey {
	k.t.Helper()
	var out e2eKey
	k.mustJSON(&out, "key", "show", name)
	return out
}

// statusKP is `rekey status --json` with the fields this test reads.
type statusKP struct {
	Keys []struct {
		e2eKey
		BackendError string `json:"backend_error"`
		BackendNote  string `json:"backend_note"`
	} `json:"keys"`
	Rotations []e2eRotation `json:"rotations"`
}

func (k *kpHome) status() (statusKP, e2eResult) {
	k.t.Helper()
	r := k.run(0, "status", "--json")
	var st statusKP
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		k.t.Fatalf("status --json: %v\n%v", err, r)
	}
	return st, r
}

// TestE2E_KeyProtect: a Key Protect key with a 3 s period, 2,000 DEKs and
// 5 sealed files rotates with one `rekey run --once` (server-side rewrap,
// no unwrap); every DEK is then on version 2, every file decrypts, and
// version 1 is retired in rekey while `status` says that Key Protect
// cannot retire it (and the stand-in still unwraps under it). Then IAM
// refuses the API key: `status` names the key and the backend and exits
// 1, a key on the local backend still rotates, and nothing is written
// for the Key Protect key.
func TestE2E_KeyProtect(t *testing.T) {
	t.Parallel()
	const (
		deks     = 2000
		files    = 5
		instance = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
		apiKey   = "e2e-kp-API-KEY-never-printed-42"
	)
	srv := kpserver.New(kpserver.Options{InstanceID: instance, APIKeys: []string{apiKey}, TokenTTL: time.Hour})
	url := srv.Start()
	t.Cleanup(srv.Close)

	h := &kpHome{e2eHome: newE2EHome(t, e2eOpts{}), env: []string{"IBMCLOUD_API_KEY=" + apiKey}}
	h.editConfig([2]string{"backends:\n  local:\n", fmt.Sprintf(
		"backends:\n  kp:\n    type: keyprotect\n    instance_id: %s\n    endpoint: %s\n    iam_endpoint: %s\n    rate_limit: 2000\n  local:\n",
		instance, url, url)})
	h.must("config", "validate")

	// Without the API key in the environment, the error says where to set it.
	noKey := h.runEnv(nil, "key", "create", "nokey", "--backend", "kp")
	if noKey.code == 0 || !strings.Contains(noKey.stderr, "IBMCLOUD_API_KEY") {
		t.Fatalf("key create without IBMCLOUD_API_KEY: %v", noKey)
	}

	h.must("key", "create", "kpk", "--backend", "kp", "--period", "3s", "--rotate-within", "1s", "--grace", "0s")
	h.must("key", "create", "loc", "--backend", "local", "--period", "3s", "--rotate-within", "1s", "--grace", "0s")
	var created struct {
		Created int `json:"created"`
	}
	h.mustJSON(&created, "dek", "create", "--key", "kpk", "--count", strconv.Itoa(deks))
	if created.Created != deks {
		t.Fatalf("created %d DEKs, want %d", created.Created, deks)
	}
	h.mustJSON(&created, "dek", "create", "--key", "loc", "--count", "100")
	sealed := kpSealFiles(h, "kpk", files)
	ref := srv.Versions("rekey-kpk")
	if ref != 1 {
		t.Fatalf("Key Protect has %d versions of kpk before the rotation, want 1", ref)
	}
	oldDEK := h.dekRows("kpk", 1)[0] // a v1 wrap, to try at the backend after retirement
	if oldDEK.version != 1 {
		t.Fatalf("first DEK on v%d", oldDEK.version)
	}
	unwrapsBefore, rewrapsBefore := srv.Count("unwrap"), srv.Count("rewrap")

	// The period's rotate-within window is reached 2 s in: the run sees the
	// clock 2.5 s ahead instead of sleeping.
	run := h.run(2500*time.Millisecond, "run", "--once")
	if run.code != 0 {
		t.Fatalf("run --once: %v", run)
	}
	if strings.Contains(run.stderr, apiKey) || strings.Contains(run.stdout, apiKey) {
		t.Fatal("the API key appears in the worker's output")
	}
	rewraps, unwraps := srv.Count("rewrap")-rewrapsBefore, srv.Count("unwrap")-unwrapsBefore
	t.Logf("run --once: %v; Key Protect saw %d rewrap and %d unwrap requests for %d DEKs", run.dur.Round(time.Millisecond), rewraps, unwraps, deks+files)
	if unwraps != 0 || rewraps < deks+files || rewraps > deks+files+10 {
		t.Errorf("the rotation made %d rewrap and %d unwrap requests for %d DEKs: want one server-side rewrap per DEK and no unwrap", rewraps, unwraps, deks+files)
	}
	k := h.keyShow("kpk")
	if k.ActiveVersion != 2 || k.version(t, 2).DEKs != deks+files || k.version(t, 1).DEKs != 0 {
		t.Fatalf("after run --once: %+v; want v2 active with all %d DEKs", k, deks+files)
	}
	if s := k.version(t, 1).State; s != string(rekey.VersionRetired) {
		t.Fatalf("v1 is %s after the grace (0s), want retired in rekey's store", s)
	}
	if n := srv.Versions("rekey-kpk"); n != 2 {
		t.Fatalf("Key Protect has %d versions of kpk, want 2", n)
	}
	kpCheckFiles(h, sealed)

	// status: version 1 is retired in rekey only; Key Protect still has it.
	st, r := h.status()
	if r.code != 0 {
		t.Fatalf("status: %v", r)
	}
	note := ""
	for _, sk := range st.Keys {
		if sk.Name == "kpk" {
			note = sk.BackendNote
		}
		if sk.Name == "loc" && sk.BackendNote != "" {
			t.Errorf("the local key has a backend note: %q", sk.BackendNote)
		}
	}
	for _, want := range []string{"backend kp (keyprotect) cannot retire single key versions", "v1 retired in rekey only"} {
		if !strings.Contains(note, want) {
			t.Errorf("status --json backend_note of kpk = %q, want it to say %q", note, want)
		}
	}
	if text := h.must("status"); !strings.Contains(text, "BACKEND NOTE    backend kp (keyprotect) cannot retire single key versions: v1 retired in rekey only") {
		t.Errorf("status does not say that Key Protect cannot retire v1:\n%s", text)
	}
	ctx := context.Background()
	direct, err := keyprotect.New(keyprotect.Config{Name: "check", Endpoint: url, IAMEndpoint: url, InstanceID: instance, APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	kpRef := keyRefFromDB(h, "kpk")
	if pt, err := direct.Unwrap(ctx, kpRef, 1, oldDEK.wrapped); err != nil || len(pt) != rekey.DEKSize {
		t.Errorf("Key Protect no longer unwraps a v1 wrap (%v): then it did retire the version, and status is wrong", err)
	}

	// IAM refuses the API key: status names the key and the backend, the
	// local key still rotates, nothing is written for kpk.
	srv.Refuse(true)
	tokensBefore, rotatesBefore := srv.Count("token"), srv.Count("rotate")
	auditBefore := auditHead(h)
	st, r = h.status()
	if r.code != 1 {
		t.Fatalf("status with the API key refused: exit %d, want 1\n%v", r.code, r)
	}
	for _, sk := range st.Keys {
		switch sk.Name {
		case "kpk":
			for _, want := range []string{"keyprotect backend kp", "IAM refused the credentials", "IBMCLOUD_API_KEY"} {
				if !strings.Contains(sk.BackendError, want) {
					t.Errorf("status backend_error of kpk = %q, want it to say %q", sk.BackendError, want)
				}
			}
			if sk.BackendNote != "" {
				t.Errorf("kpk has a backend note while its backend fails: %q", sk.BackendNote)
			}
		case "loc":
			if sk.BackendError != "" {
				t.Errorf("the local key has a backend error: %q", sk.BackendError)
			}
		}
	}
	if text := h.run(0, "status"); !strings.Contains(text.stdout, "kpk") || !strings.Contains(text.stdout, "BACKEND ERROR   keyprotect backend kp: IAM refused") {
		t.Errorf("status (text) does not name the key and backend:\n%s", text.stdout)
	}
	locBefore := h.keyShow("loc").ActiveVersion
	run = h.run(20*time.Second, "run", "--once")
	t.Logf("run --once with the API key refused: exit %d", run.code)
	if !strings.Contains(run.stderr, "kpk") || !strings.Contains(run.stderr, "keyprotect backend kp") {
		t.Errorf("the worker's log does not name the key and the backend:\n%s", e2eTail(run.stderr, 3000))
	}
	if strings.Contains(run.stderr, apiKey) {
		t.Fatal("the API key appears in the worker's log")
	}
	if v := h.keyShow("loc").ActiveVersion; v != locBefore+1 {
		t.Errorf("the local key is at v%d after the run, want v%d: one bad backend blocked another", v, locBefore+1)
	}
	k2 := h.keyShow("kpk")
	if k2.ActiveVersion != 2 || len(k2.Versions) != 2 || k2.version(t, 2).DEKs != deks+files {
		t.Errorf("kpk changed while its backend refused us: %+v", k2)
	}
	if srv.Count("rotate") != rotatesBefore || srv.Versions("rekey-kpk") != 2 {
		t.Errorf("Key Protect was asked to rotate (%d → %d) with refused credentials", rotatesBefore, srv.Count("rotate"))
	}
	if srv.Count("token") <= tokensBefore {
		t.Error("no token request reached IAM: the refusal was not exercised")
	}
	if run.code != 1 {
		t.Errorf("run --once with one key's backend refusing: exit %d, want 1", run.code)
	}
	// Nothing is written for kpk but the audited failure: its backend did
	// not answer, so no rotation was claimed.
	st, _ = h.status()
	if len(st.Rotations) != 0 {
		t.Errorf("open rotations after the refused run: %+v; want none", st.Rotations)
	}
	types := auditTypesAfter(h, "kpk", auditBefore)
	if !slices.Contains(types, "rotation.failed") {
		t.Errorf("the refused attempt was not audited: %v", types)
	}
	for _, typ := range types {
		if typ != "rotation.failed" {
			t.Errorf("the refused run audited %s for kpk; want only rotation.failed", typ)
		}
	}

	// The key accepted again: the rotation runs and completes.
	srv.Refuse(false)
	if r := h.run(20*time.Second, "run", "--once"); r.code != 0 {
		t.Fatalf("run --once after IAM accepts the key again: %v", r)
	}
	k3 := h.keyShow("kpk")
	if k3.ActiveVersion != 3 || k3.version(t, 3).DEKs != deks+files || srv.Versions("rekey-kpk") != 3 {
		t.Errorf("after recovery: %+v (Key Protect at %d versions); want v3 with every DEK", k3, srv.Versions("rekey-kpk"))
	}
	kpCheckFiles(h, sealed)
}

// keyRefFromDB returns the backend reference rekey stored for key.
func keyRefFromDB(h *kpHome, key string) string {
	h.t.Helper()
	var ref string
	if err := h.sqlDB().QueryRow(`SELECT backend_ref FROM keys WHERE name = ?`, key).Scan(&ref); err != nil {
		h.t.Fatalf("backend_ref of %s: %v", key, err)
	}
	return ref
}

// auditHead returns the newest audit sequence number.
func auditHead(h *kpHome) int64 {
	h.t.Helper()
	var n int64
	if err := h.sqlDB().QueryRow(`SELECT coalesce(max(seq), 0) FROM audit_events`).Scan(&n); err != nil {
		h.t.Fatalf("newest audit event: %v", err)
	}
	return n
}

// auditTypesAfter returns the types of key's audit events after seq.
func auditTypesAfter(h *kpHome, key string, seq int64) []string {
	h.t.Helper()
	rows, err := h.sqlDB().Query(`SELECT type FROM audit_events WHERE key = ? AND seq > ? ORDER BY seq`, key, seq)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var typ string
		if err := rows.Scan(&typ); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, typ)
	}
	return out
}

// kpSealFiles is sealFiles with the API key in the environment.
func kpSealFiles(h *kpHome, key string, n int) []sealedFile {
	h.t.Helper()
	var out []sealedFile
	for i, size := range fileSizes(n) {
		p := filepath.Join(h.dir, fmt.Sprintf("%s-%02d.bin", key, i))
		if err := os.WriteFile(p, randomBytes(h.t, size), 0o600); err != nil {
			h.t.Fatal(err)
		}
		f := sealedFile{plain: p, sealed: p + ".rekey"}
		h.must("encrypt", "--key", key, "--in", f.plain, "--out", f.sealed)
		out = append(out, f)
	}
	return out
}

// kpCheckFiles is checkFiles with the API key in the environment.
func kpCheckFiles(h *kpHome, files []sealedFile) {
	h.t.Helper()
	for _, f := range files {
		back := f.plain + ".back"
		os.Remove(back)
		h.must("decrypt", "--in", f.sealed, "--out", back)
		want, _ := os.ReadFile(f.plain)
		got, err := os.ReadFile(back)
		if err != nil || !bytes.Equal(got, want) {
			h.t.Errorf("decrypt %s: %d bytes back, want the %d-byte original (%v)", filepath.Base(f.sealed), len(got), len(want), err)
		}
	}
}

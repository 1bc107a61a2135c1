package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey/config"
)

// Careless-operator tests (issue 8, items 5-9): each reproduces one report
// as it was written and checks the answer now given.

// assertUnchanged fails when any file of dir changed, appeared or went
// away since before (fileDigests).
func assertUnchanged(t *testing.T, what, dir string, before map[string]string) {
	t.Helper()
	after := fileDigests(t, dir)
	for p, d := range before {
		if after[p] != d {
			t.Errorf("%s: %s changed or went away", what, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s: %s appeared", what, p)
		}
	}
}

// TestPolicyWindowsRefused (item 5): `key create storm --period 1h
// --rotate-within 2h` and the same in defaults: are refused, saying why
// and what to set, and create nothing.
func TestPolicyWindowsRefused(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	before := fileDigests(t, e.home)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"key", "create", "storm", "--period", "1h", "--rotate-within", "2h"}, []string{"rotate_within 2h0m0s is not shorter than rotation_period 1h0m0s", "rotate on every worker cycle", "set rotate_within well below rotation_period"}},
		{[]string{"key", "create", "storm", "--period", "1h", "--rotate-within", "1h"}, []string{"is not shorter than rotation_period"}},
		{[]string{"key", "create", "storm", "--rotate-within", "10d", "--notify-within", "2d"}, []string{"notify_within 2d is shorter than rotate_within 10d", "set notify_within to 10d or more"}},
	} {
		code, _, errs := e.rekey(tc.args...)
		if code != 2 {
			t.Errorf("rekey %v: exit %d, want 2 (stderr %q)", tc.args, code, errs)
		}
		for _, w := range tc.want {
			if !strings.Contains(errs, w) {
				t.Errorf("rekey %v: stderr %q does not say %q", tc.args, errs, w)
			}
		}
	}
	assertUnchanged(t, "refused key create", e.home, before)

	cfg := filepath.Join(e.home, "rekey.yaml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"rotation_period: 90d", "rotation_period: 1h", "defaults.rotate_within"},
		{"notify_within: 14d", "notify_within: 1d", "defaults.notify_within"},
	} {
		if !strings.Contains(string(b), tc.from) {
			t.Fatalf("rekey.yaml has no %q (did config/default.yaml change?)", tc.from)
		}
		if err := os.WriteFile(cfg, []byte(strings.Replace(string(b), tc.from, tc.to, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"config", "validate"}, {"key", "create", "storm"}, {"status"}} {
			code, _, errs := e.rekey(args...)
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Errorf("defaults with %s, rekey %v: exit %d, stderr %q; want a failure naming %s", tc.to, args, code, errs, tc.want)
			}
		}
	}
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := e.must("key", "list"); !strings.Contains(out, "no keys yet") {
		t.Errorf("a refused key was created: %s", out)
	}
}

// TestDeletedDatabaseNotRecreated (item 6): with rekey.db deleted, every
// command but init fails naming the file and what to do, and nothing is
// created; init refuses too (the keyring is there).
func TestDeletedDatabaseNotRecreated(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	e.must("dek", "create", "--key", "payments")
	db := filepath.Join(e.home, "rekey.db")
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		os.Remove(f)
	}
	before := fileDigests(t, e.home)
	for _, args := range [][]string{{"status"}, {"key", "list"}, {"key", "create", "other"}, {"dek", "create", "--key", "payments"}, {"plan"}, {"run", "--once"}, {"audit", "verify"}} {
		code, out, errs := e.rekey(args...)
		if code != 1 || !strings.Contains(errs, db) || !strings.Contains(errs, "does not exist") || !strings.Contains(errs, "restore it from backup") || !strings.Contains(errs, "rekey init") {
			t.Errorf("rekey %v without rekey.db: exit %d, stdout %q, stderr %q; want exit 1 naming %s, restore from backup and rekey init", args, code, out, errs, db)
		}
		if strings.Contains(out, "no keys yet") {
			t.Errorf("rekey %v without rekey.db says %q", args, out)
		}
	}
	code, _, errs := e.rekey("init")
	if code != 1 || !strings.Contains(errs, "not rekey.db") || !strings.Contains(errs, "restore the missing file(s) from backup") {
		t.Errorf("init without rekey.db: exit %d, stderr %q", code, errs)
	}
	assertUnchanged(t, "commands without rekey.db", e.home, before)
}

// TestMissingKeyringMessage (item 9): a missing keyring no longer says
// "run rekey init" (init refuses beside existing data): it says to
// restore the keyring, and init agrees.
func TestMissingKeyringMessage(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	kr := filepath.Join(e.home, "keyring")
	if err := os.Remove(kr); err != nil {
		t.Fatal(err)
	}
	before := fileDigests(t, e.home)
	code, _, errs := e.rekey("status")
	if code != 1 || !strings.Contains(errs, kr) || !strings.Contains(errs, "restore it from backup") || strings.Contains(errs, "run rekey init to create") {
		t.Errorf("status without a keyring: exit %d, stderr %q; want the keyring named and restore from backup, not 'run rekey init'", code, errs)
	}
	if code, _, errs := e.rekey("init"); code != 1 || !strings.Contains(errs, "restore the missing file(s) from backup") {
		t.Errorf("init without a keyring: exit %d, stderr %q", code, errs)
	}
	assertUnchanged(t, "commands without the keyring", e.home, before)
}

// TestConcurrentFirstUse (item 9): several processes using a new home at
// once: one creates it, the others wait and use it; nobody is told to
// restore from backup.
func TestConcurrentFirstUse(t *testing.T) {
	h := &e2eHome{t: t, bin: e2eBinary(t), dir: t.TempDir()}
	for round := 0; round < 5; round++ {
		h.home = filepath.Join(h.dir, "home"+string(rune('a'+round)))
		var wg sync.WaitGroup
		results := make([]e2eResult, 6)
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				args := []string{"status"}
				if i%2 == 1 {
					args = []string{"init"}
				}
				results[i] = h.run(args...)
			}()
		}
		wg.Wait()
		for _, r := range results {
			if r.code != 0 || strings.Contains(r.stderr, "backup") {
				t.Errorf("round %d, concurrent first use: %v", round, r)
			}
		}
		h.must("key", "create", "k")
	}
}

// TestReadOnlyHome (item 9): the read-only commands work on a read-only
// copy of a home (a read-only bind mount for root, whom modes do not stop;
// chmod a-w otherwise) and leave it byte-identical; a writing command
// fails saying so, not "create database file".
func TestReadOnlyHome(t *testing.T) {
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "payments")
	id := strings.TrimSpace(h.must("dek", "create", "--key", "payments", "--label", "x"))
	in := filepath.Join(h.dir, "plain")
	if err := os.WriteFile(in, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.must("encrypt", "--key", "payments", "--in", in, "--out", in+".rekey")
	h.must("rotate", "payments")
	before := fileDigests(t, h.home)

	readOnly := func(args ...string) e2eResult {
		t.Helper()
		if os.Geteuid() != 0 {
			return h.run(args...)
		}
		quoted := make([]string, len(args))
		for i, a := range args {
			quoted[i] = "'" + a + "'"
		}
		script := "mount --bind -o ro '" + h.home + "' '" + h.home + "' && exec '" + h.bin + "' " + strings.Join(quoted, " ")
		cmd := exec.Command("unshare", "-m", "sh", "-c", script)
		cmd.Env, cmd.Dir = h.environ(), h.dir
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("unshare (root needs a private read-only mount for this test): %v", err)
		}
		return e2eResult{args: args, code: cmd.ProcessState.ExitCode(), stdout: o.String(), stderr: e.String()}
	}
	if os.Geteuid() != 0 {
		filepath.WalkDir(h.home, func(p string, d fs.DirEntry, err error) error {
			if err == nil {
				os.Chmod(p, map[bool]fs.FileMode{true: 0o500, false: 0o400}[d.IsDir()])
			}
			return err
		})
		t.Cleanup(func() { os.Chmod(h.home, 0o700) })
	}
	out := filepath.Join(h.dir, "out")
	for _, args := range [][]string{
		{"status"}, {"key", "list"}, {"key", "show", "payments"}, {"dek", "show", id}, {"plan"},
		{"audit", "list"}, {"audit", "verify"}, {"audit", "export"}, {"report"}, {"decrypt", "--in", in + ".rekey", "--out", out},
	} {
		if r := readOnly(args...); r.code != 0 {
			t.Errorf("read-only home: %v", r)
		}
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "hello" {
		t.Errorf("decrypt from a read-only home: %q, %v", b, err)
	}
	r := readOnly("key", "create", "other")
	if r.code != 1 || strings.Contains(r.stderr, "create database file") || !strings.Contains(r.stderr, "read-only file system, or no write permission") {
		t.Errorf("key create in a read-only home: %v; want exit 1 saying the home is read-only", r)
	}
	assertUnchanged(t, "read-only commands", h.home, before)
}

// dekCount is the number of DEKs of key payments in the home's store.
func (e *env) dekCount() int {
	e.t.Helper()
	s, _, _ := e.openDirect()
	byVersion, err := s.CountDEKs(context.Background(), "payments")
	if err != nil {
		e.t.Fatal(err)
	}
	s.Close()
	n := 0
	for _, c := range byVersion {
		n += int(c)
	}
	return n
}

// TestEncryptChecksPathsFirst (item 7): `encrypt --in DIRECTORY` (and a
// bad --out) fails before any DEK is made, with the flag name first.
func TestEncryptChecksPathsFirst(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	dir := filepath.Dir(e.home)
	file := e.writeFile("plain", []byte("hello"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--in", dir, "--out", filepath.Join(dir, "x")}, "--in: "},
		{[]string{"--in", filepath.Join(dir, "nosuch")}, "--in: "},
		{[]string{"--in", file, "--out", dir}, "--out: "},
		{[]string{"--in", file, "--out", filepath.Join(dir, "nosuch", "x")}, "--out: "},
		{[]string{"--in", file, "--out", file}, "--out: "},
	} {
		code, _, errs := e.rekey(append([]string{"encrypt", "--key", "payments"}, tc.args...)...)
		if code != 1 || !strings.HasPrefix(errs, "rekey: "+tc.want) {
			t.Errorf("encrypt %v: exit %d, stderr %q; want 1 and %q first", tc.args, code, errs, tc.want)
		}
		if n := e.dekCount(); n != 0 {
			t.Fatalf("encrypt %v failed but left %d DEK(s)", tc.args, n)
		}
		code, _, errs = e.rekey(append([]string{"decrypt"}, tc.args...)...)
		if code != 1 || !strings.HasPrefix(errs, "rekey: "+tc.want) {
			t.Errorf("decrypt %v: exit %d, stderr %q; want 1 and %q first", tc.args, code, errs, tc.want)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "hello" {
		t.Errorf("--out same as --in changed it: %q", b)
	}
}

// TestLabelsEscaped (item 8): dek create refuses control characters in
// --label; a label stored through the library with terminal escapes is
// printed escaped by dek show, and as JSON by dek show --json.
func TestLabelsEscaped(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	evil := "\x1b[31mRED\a"
	if code, _, errs := e.rekey("dek", "create", "--key", "payments", "--label", evil); code != 2 || !strings.Contains(errs, "--label: control character") || strings.Contains(errs, "\x1b") {
		t.Errorf("dek create --label with escapes: exit %d, stderr %q", code, errs)
	}
	if n := e.dekCount(); n != 0 {
		t.Fatalf("a refused label left %d DEK(s)", n)
	}
	s, _, kr := e.openDirect()
	id, plain, err := kr.NewDEK(context.Background(), "payments", evil+"\nline2")
	clear(plain)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	out := e.must("dek", "show", id)
	if strings.ContainsAny(out, "\x1b\a") || !strings.Contains(out, `"\x1b[31mRED\a\nline2"`) {
		t.Errorf("dek show printed the label unescaped: %q", out)
	}
	var j struct{ Label string }
	if err := json.Unmarshal([]byte(e.must("dek", "show", id, "--json")), &j); err != nil || j.Label != evil+"\nline2" {
		t.Errorf("dek show --json label: %q, %v", j.Label, err)
	}
	if out := e.must("dek", "create", "--key", "payments", "--label", "order 42 — ünïcode"); strings.TrimSpace(out) == "" {
		t.Error("a printable label was refused")
	}
}

// TestEnvelopeFromAnotherHome (item 9): decrypting another home's
// envelope says the store has no such DEK and to check the home/config.
func TestEnvelopeFromAnotherHome(t *testing.T) {
	a, b := newEnv(t), newEnv(t)
	a.must("init")
	a.must("key", "create", "payments")
	in := a.writeFile("plain", []byte("hello"))
	a.must("encrypt", "--key", "payments", "--in", in, "--out", in+".rekey")
	b.must("init")
	code, _, errs := b.rekey("decrypt", "--in", in+".rekey")
	if code != 1 || !strings.Contains(errs, "this store") || !strings.Contains(errs, "another home or config") {
		t.Errorf("decrypt of another home's envelope: exit %d, stderr %q", code, errs)
	}
}

// TestPlanText (item 9): plan prints backend calls as "name N, …", not Go
// map syntax.
func TestPlanText(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments", "--period", "1h", "--rotate-within", "59m")
	e.must("dek", "create", "--key", "payments", "--count", "3")
	e.vars[envClockOffset] = "2m" // due now
	out := e.must("plan")
	if strings.Contains(out, "map[") || !strings.Contains(out, "backend calls: current_version 1, ") || !strings.Contains(out, "rotate_key 1") {
		t.Errorf("plan printed:\n%s", out)
	}
}

// TestStatusBackendProblems (item 9): a corrupt keyring no longer hides
// the database from status, and a keyring rolled back behind the store is
// an error, not "ok"; both exit 1 with the problem per key.
func TestStatusBackendProblems(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	e.must("dek", "create", "--key", "payments", "--count", "2")
	kr := filepath.Join(e.home, "keyring")
	old, err := os.ReadFile(kr)
	if err != nil {
		t.Fatal(err)
	}
	e.must("rotate", "payments")
	current, err := os.ReadFile(kr)
	if err != nil {
		t.Fatal(err)
	}
	if out := e.must("status"); strings.Contains(out, "BACKEND ERROR") {
		t.Fatalf("a healthy home shows a backend error:\n%s", out)
	}

	// Rolled back: the keyring from before the rotation.
	if err := os.WriteFile(kr, old, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := e.rekey("status")
	if code != 1 || !strings.Contains(out, "key payments") || !strings.Contains(out, "BACKEND ERROR") || !strings.Contains(out, "behind the store's active v2") {
		t.Errorf("status with a rolled-back keyring: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	var j struct {
		Keys []struct {
			Name         string `json:"name"`
			DEKs         int64  `json:"deks"`
			BackendError string `json:"backend_error"`
		} `json:"keys"`
	}
	code, out, _ = e.rekey("status", "--json")
	if err := json.Unmarshal([]byte(out), &j); err != nil || code != 1 || len(j.Keys) != 1 || j.Keys[0].DEKs != 2 || !strings.Contains(j.Keys[0].BackendError, "behind") {
		t.Errorf("status --json with a rolled-back keyring: exit %d, %+v, %v\n%s", code, j, err, out)
	}

	// Corrupt: one byte short.
	if err := os.WriteFile(kr, current[:len(current)-1], 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs = e.rekey("status")
	if code != 1 || !strings.Contains(out, "key payments") || !strings.Contains(out, "v2") || !strings.Contains(out, "BACKEND ERROR") || !strings.Contains(out, "keyring") {
		t.Errorf("status with a corrupt keyring: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if err := os.WriteFile(kr, current, 0o600); err != nil {
		t.Fatal(err)
	}
	e.must("status")
}

// TestConfigValidateMessages (item 9): a huge value is echoed truncated
// with its size, and an unreadable or missing config says it cannot be
// read and why, not that it is "not valid".
func TestConfigValidateMessages(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	good := string(config.DefaultYAML())
	huge := strings.Repeat("x", 50<<20)
	p := filepath.Join(dir, "huge.yaml")
	if err := os.WriteFile(p, []byte(strings.Replace(good, "check_interval: 1m", "check_interval: "+huge, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := e.rekey("config", "validate", "--config", p)
	if code != 1 || len(errs) > 4096 || !strings.Contains(errs, "worker.check_interval") || !strings.Contains(errs, "(52428800 bytes)") {
		t.Errorf("50 MB value: exit %d, %d bytes of stderr: %q", code, len(errs), e2eTail(errs, 600))
	}

	missing := filepath.Join(dir, "nosuch.yaml")
	code, _, errs = e.rekey("config", "validate", "--config", missing)
	if code != 1 || strings.Contains(errs, "not valid") || !strings.Contains(errs, "cannot be read") || !strings.Contains(errs, "does not exist") {
		t.Errorf("missing config: exit %d, stderr %q", code, errs)
	}
	dirAsConfig := dir
	code, _, errs = e.rekey("config", "validate", "--config", dirAsConfig)
	if code != 1 || strings.Contains(errs, "not valid") || !strings.Contains(errs, "cannot be read") {
		t.Errorf("a directory as config: exit %d, stderr %q", code, errs)
	}
	if os.Geteuid() != 0 {
		unreadable := filepath.Join(dir, "unreadable.yaml")
		os.WriteFile(unreadable, []byte(good), 0o000)
		code, _, errs = e.rekey("config", "validate", "--config", unreadable)
		if code != 1 || strings.Contains(errs, "not valid") || !strings.Contains(errs, "permission") {
			t.Errorf("unreadable config: exit %d, stderr %q", code, errs)
		}
	}
}

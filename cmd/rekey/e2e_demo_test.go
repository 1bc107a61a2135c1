package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestE2EDemo runs `rekey run --demo` as a newcomer would (the built
// binary, in a directory that has a ./rekey-data of the user's): within
// 60 s its /api/v1/status shows at least two completed rotations of the
// demo key, the sample file still decrypts, Ctrl-C stops it with exit 0
// and removes the demo home, and the user's ./rekey-data (present) and
// $REKEY_HOME (absent) are untouched.
func TestE2EDemo(t *testing.T) {
	t.Parallel()
	bin := e2eBinary(t)
	scratch := t.TempDir()
	cwd := filepath.Join(scratch, "project")
	tmp := filepath.Join(scratch, "tmp")
	absentHome := filepath.Join(scratch, "absent-home")
	for _, d := range []string{cwd, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var baseEnv []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REKEY_") && !strings.HasPrefix(kv, "TMPDIR=") {
			baseEnv = append(baseEnv, kv)
		}
	}
	rekeyIn := func(env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir, cmd.Env = cwd, append(append([]string{}, baseEnv...), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("rekey %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The user's own home, with a key and a DEK, in ./rekey-data.
	rekeyIn(nil, "key", "create", "payments")
	rekeyIn(nil, "dek", "create", "--key", "payments")
	userHome := filepath.Join(cwd, "rekey-data")
	before := snapshotDir(t, userHome)
	if len(before) < 4 {
		t.Fatalf("the user's home was not made: %v", before)
	}

	cmd := exec.Command(bin, "run", "--demo")
	cmd.Dir = cwd
	cmd.Env = append(append([]string{}, baseEnv...), "TMPDIR="+tmp, "REKEY_HOME="+absentHome)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := watchLines(stdout, "rotating: ")
	stderr := watchLines(errPipe, "\x00") // only collects
	exited := make(chan error, 1)
	go func() { <-out.done; <-stderr.done; exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
	}()
	deadline := start.Add(60 * time.Second)
	select {
	case <-out.found:
	case err := <-exited:
		stopped = true
		t.Fatalf("the demo exited (%v) before it started rotating:\nstdout: %s\nstderr: %s", err, out.text(), stderr.text())
	case <-time.After(time.Until(deadline)):
		t.Fatalf("the demo did not start within 60 s:\n%s", out.text())
	}
	m := regexp.MustCompile(`status page: (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(out.text())
	h := regexp.MustCompile(`a throwaway home in (\S+) `).FindStringSubmatch(out.text())
	if m == nil || h == nil {
		t.Fatalf("the demo did not print its status page and home:\n%s", out.text())
	}
	statusURL, demoHome := m[1]+"api/v1/status", h[1]
	if !strings.HasPrefix(demoHome, tmp+string(filepath.Separator)) {
		t.Errorf("the demo home %s is not a temporary directory (under %s)", demoHome, tmp)
	}

	// Two completed rotations of the demo key within 60 s of the start.
	var st e2eStatus
	for {
		st = e2eStatus{}
		if err := getJSON(statusURL, &st); err != nil {
			t.Fatalf("%s: %v", statusURL, err)
		}
		if completedRotations(st, "demo") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s /api/v1/status shows %d completed rotations of demo, want at least 2: %+v\nstdout: %s\nstderr: %s",
				completedRotations(st, "demo"), st.Recent, out.text(), stderr.text())
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("two rotations completed %v after the start", time.Since(start).Round(time.Millisecond))
	if len(st.Keys) != 1 || st.Keys[0].Name != "demo" || st.Keys[0].ActiveVersion < 3 || st.Keys[0].DEKs < 3000 {
		t.Errorf("demo status: %+v", st.Keys)
	}

	// The sample file still decrypts, opened by another rekey process.
	sampleDir := filepath.Dir(demoHome)
	copyPath := filepath.Join(scratch, "sample-copy")
	rekeyIn([]string{"REKEY_HOME=" + demoHome}, "decrypt", "--in", filepath.Join(sampleDir, "sample.txt.rekey"), "--out", copyPath)
	want, err := os.ReadFile(filepath.Join(sampleDir, "sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(copyPath)
	if err != nil || len(want) == 0 || !bytes.Equal(got, want) {
		t.Errorf("the sample file decrypted to %d bytes (%v), want its %d bytes", len(got), err, len(want))
	}

	t.Logf("the sample decrypted %v after the start", time.Since(start).Round(time.Millisecond))
	// The narrator prints from the audit trail every second, apart from
	// the status page: wait for its lines of what the status shows.
	told := []string{"rotation v1 → v2 committed: 3001 DEKs re-wrapped", "rotation v2 → v3 completed",
		"demo v1 retired", "sample.txt.rekey still decrypts (its DEK is now wrapped under v3)"}
	for !containsAll(out.text(), told) && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
	}
	// Ctrl-C: exit 0, the demo home removed.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("the demo stopped with %v, want exit 0\nstderr: %s", err, stderr.text())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the demo did not stop within 30 s of SIGINT")
	}
	t.Logf("stopped %v after the start", time.Since(start).Round(time.Millisecond))
	text := out.text()
	for _, want := range append(told, "demo stopped") {
		if !strings.Contains(text, want) {
			t.Errorf("the demo did not print %q:\n%s", want, text)
		}
	}
	if _, err := os.Stat(sampleDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the demo home %s is still there after the demo stopped (%v)", sampleDir, err)
	}
	if after := snapshotDir(t, userHome); !maps.Equal(before, after) {
		t.Errorf("the user's ./rekey-data changed:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Stat(absentHome); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("$REKEY_HOME %s was created by the demo (%v)", absentHome, err)
	}
	entries, err := os.ReadDir(cwd)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("the demo left files in the working directory: %v", entries)
	}
}

// completedRotations counts the done rotations of key in st.
func completedRotations(st e2eStatus, key string) int {
	n := 0
	for _, r := range st.Recent {
		if r.Key == key && r.State == "done" {
			n++
		}
	}
	return n
}

// getJSON decodes the JSON body of GET url into v.
func getJSON(url string, v any) error {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// snapshotDir maps every path under dir to its mode and content hash.
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			snap[rel] = fi.Mode().String()
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		snap[rel] = fi.Mode().String() + " " + hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// containsAll reports whether text contains every one of subs.
func containsAll(text string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(text, sub) {
			return false
		}
	}
	return true
}

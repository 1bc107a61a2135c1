package main

// Helpers of the end-to-end tests (e2e_*_test.go): they drive the real
// rekey binary as a subprocess, each test in a REKEY_HOME of its own, and
// check what it did through the CLI's JSON output, the SQLite file and the
// local keyring.

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"github.com/rekeyhq/rekey/kms/localkms"
)

// TestMain removes the binary the end-to-end tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if e2eBinDir != "" {
		os.RemoveAll(e2eBinDir)
	}
	os.Exit(code)
}

var (
	e2eBuildOnce sync.Once
	e2eBinDir    string
	e2eBin       string
	e2eMeter     string
	e2eBuildErr  error
)

// rssMeterSource is a tiny program that runs a command and writes the
// command's peak RSS (KiB) to a file. The rusage of a child the test
// process starts itself is useless for that: os/exec starts children with
// vfork (CLONE_VM), and at exec Linux folds the high-water RSS of the
// shared, old address space (the test process's) into the child's
// ru_maxrss, so /bin/true started from a 200 MB process "peaks" at 200 MB.
// Started from this small program, the command's ru_maxrss is its own
// (or this program's few MB, whichever is larger).
const rssMeterSource = `package main

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

func main() {
	cmd := exec.Command(os.Args[2], os.Args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Run()
	if cmd.ProcessState == nil {
		os.Exit(125)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if err := os.WriteFile(os.Args[1], []byte(strconv.FormatInt(ru.Maxrss, 10)), 0o600); err != nil {
		os.Exit(126)
	}
	os.Exit(cmd.ProcessState.ExitCode())
}
`

// e2eBinary builds the rekey binary from the current sources once per test
// run (never reused across runs: others edit the sources meanwhile). It is
// built without -race whatever the test flags: the race detector covers the
// in-process tests, the binary is what users run.
func e2eBinary(t *testing.T) string {
	t.Helper()
	e2eBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rekey-e2e-bin-")
		if err != nil {
			e2eBuildErr = err
			return
		}
		e2eBinDir = dir
		bin := filepath.Join(dir, "rekey")
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Env = append(os.Environ(), "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			e2eBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		meter := filepath.Join(dir, "rssmeter")
		src := filepath.Join(dir, "rssmeter.go")
		if err := os.WriteFile(src, []byte(rssMeterSource), 0o600); err != nil {
			e2eBuildErr = err
			return
		}
		cmd = exec.Command("go", "build", "-o", meter, src)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			e2eBuildErr = fmt.Errorf("go build rssmeter: %v\n%s", err, out)
			return
		}
		e2eBin, e2eMeter = bin, meter
	})
	if e2eBuildErr != nil {
		t.Fatal(e2eBuildErr)
	}
	return e2eBin
}

// e2eLong reports whether the long sizes were asked for (REKEY_LONG=1).
func e2eLong() bool { return os.Getenv("REKEY_LONG") == "1" }

// e2eSize returns long when REKEY_LONG=1, else short.
func e2eSize(short, long int) int {
	if e2eLong() {
		return long
	}
	return short
}

// e2eOpts configures a home: zero values keep the config's defaults.
type e2eOpts struct {
	batchSize int           // worker.batch_size
	leaseTTL  time.Duration // worker.lease_ttl
}

// e2eHome is one REKEY_HOME used through the binary.
type e2eHome struct {
	t    *testing.T
	bin  string
	dir  string // scratch directory (files to seal, a second home)
	home string
	db   *sql.DB
}

// newE2EHome makes a fresh home with `rekey init --dir` and applies opts to
// its rekey.yaml. The HTTP listener (when the worker has one) is moved to an
// ephemeral port so that parallel tests never fight over 9464.
func newE2EHome(t *testing.T, opts e2eOpts) *e2eHome {
	t.Helper()
	h := &e2eHome{t: t, bin: e2eBinary(t), dir: t.TempDir()}
	h.home = filepath.Join(h.dir, "home")
	h.must("init", "--dir", h.home)
	edits := [][2]string{{"listen: 127.0.0.1:9464", "listen: 127.0.0.1:0"}}
	if opts.batchSize > 0 {
		edits = append(edits, [2]string{"batch_size: 1000", "batch_size: " + strconv.Itoa(opts.batchSize)})
	}
	if opts.leaseTTL > 0 {
		edits = append(edits, [2]string{"lease_ttl: 30s", "lease_ttl: " + opts.leaseTTL.String()})
	}
	h.editConfig(edits...)
	return h
}

// editConfig replaces text in the home's rekey.yaml; each old text must be
// there exactly once.
func (h *e2eHome) editConfig(edits ...[2]string) {
	h.t.Helper()
	p := h.configPath()
	b, err := os.ReadFile(p)
	if err != nil {
		h.t.Fatal(err)
	}
	s := string(b)
	for _, e := range edits {
		if n := strings.Count(s, e[0]); n != 1 {
			h.t.Fatalf("rekey.yaml: %q occurs %d times, want once (did config/default.yaml change?)", e[0], n)
		}
		s = strings.Replace(s, e[0], e[1], 1)
	}
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

func (h *e2eHome) configPath() string { return filepath.Join(h.home, "rekey.yaml") }

// environ is the subprocess environment: the test's own minus every
// REKEY_* variable (a developer's REKEY_CONFIG or REKEY_FAILPOINTS must not
// leak in), plus REKEY_HOME and extra.
func (h *e2eHome) environ(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REKEY_") {
			env = append(env, kv)
		}
	}
	return append(append(env, "REKEY_HOME="+h.home), extra...)
}

// command returns an unstarted rekey subprocess, run in the scratch
// directory (so no ./rekey.yaml of the developer's is picked up).
func (h *e2eHome) command(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(h.bin, args...)
	cmd.Env = h.environ(env...)
	cmd.Dir = h.dir
	return cmd
}

// e2eResult is what one subprocess did.
type e2eResult struct {
	args   []string
	code   int
	stdout string
	stderr string
	dur    time.Duration
	maxRSS int64 // bytes: see runMeasured (run's figure includes the test process's peak)
}

func (r e2eResult) String() string {
	return fmt.Sprintf("rekey %s: exit %d after %v\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.dur.Round(time.Millisecond),
		e2eTail(r.stdout, 4000), e2eTail(r.stderr, 4000))
}

// e2eTail keeps the end of a long text.
func e2eTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// run runs rekey with args and returns what it did; a process that could
// not be started or died of a signal fails the test.
func (h *e2eHome) run(args ...string) e2eResult {
	h.t.Helper()
	return h.runEnv(nil, args...)
}

// runEnv is run with extra environment variables (NAME=value).
func (h *e2eHome) runEnv(env []string, args ...string) e2eResult {
	h.t.Helper()
	cmd := h.command(env, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := e2eResult{args: args, stdout: out.String(), stderr: errb.String(), dur: time.Since(start)}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		h.t.Fatalf("rekey %s: %v", strings.Join(args, " "), err)
	}
	r.code = cmd.ProcessState.ExitCode()
	if r.code < 0 {
		h.t.Fatalf("rekey %s died: %v\nstderr: %s", strings.Join(args, " "), cmd.ProcessState, e2eTail(r.stderr, 4000))
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSS = ru.Maxrss * 1024 // Linux reports KiB
	}
	return r
}

// runMeasured is run through the RSS meter: maxRSS is the rekey process's
// own peak RSS (see rssMeterSource).
func (h *e2eHome) runMeasured(args ...string) e2eResult {
	h.t.Helper()
	out := filepath.Join(h.dir, "maxrss")
	os.Remove(out)
	bin := h.bin
	h.bin = e2eMeter
	r := h.runEnv(nil, append([]string{out, bin}, args...)...)
	h.bin = bin
	r.args = args
	b, err := os.ReadFile(out)
	if err != nil {
		h.t.Fatalf("rss meter wrote nothing (%v): %v", err, r)
	}
	kib, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		h.t.Fatalf("rss meter: %q: %v", b, err)
	}
	r.maxRSS = kib * 1024
	return r
}

// must runs a command that has to exit 0 and returns its stdout.
func (h *e2eHome) must(args ...string) string {
	h.t.Helper()
	r := h.run(args...)
	if r.code != 0 {
		h.t.Fatalf("%v", r)
	}
	return r.stdout
}

// mustAt is must with the command's clock moved ahead by offset
// (REKEY_TEST_CLOCK_OFFSET): a deadline is reached without sleeping.
func (h *e2eHome) mustAt(offset time.Duration, args ...string) string {
	h.t.Helper()
	r := h.runEnv(h.environ("REKEY_TEST_CLOCK_OFFSET="+offset.String()), args...)
	if r.code != 0 {
		h.t.Fatalf("%v", r)
	}
	return r.stdout
}

// mustJSON runs a command with --json that has to exit 0 and decodes its
// output into v.
func (h *e2eHome) mustJSON(v any, args ...string) {
	h.t.Helper()
	out := h.must(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		h.t.Fatalf("rekey %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// JSON shapes of the CLI contract (DESIGN.md "CLI"), decoded by field name
// so that a renamed field fails the tests.
type (
	e2eVersion struct {
		Version           int        `json:"version"`
		State             string     `json:"state"`
		DEKs              int64      `json:"deks"`
		RetireAfter       *time.Time `json:"retire_after"`
		RetirementBlocked bool       `json:"retirement_blocked"`
	}
	e2eKey struct {
		Name          string       `json:"name"`
		Backend       string       `json:"backend"`
		ActiveVersion int          `json:"active_version"`
		ExpiresAt     time.Time    `json:"expires_at"`
		Versions      []e2eVersion `json:"versions"`
		DEKs          int64        `json:"deks"`
		Due           bool         `json:"due"`
		Overdue       bool         `json:"overdue"`
	}
	e2eRotation struct {
		ID          string   `json:"id"`
		Key         string   `json:"key"`
		FromVersion int      `json:"from_version"`
		ToVersion   int      `json:"to_version"`
		State       string   `json:"state"`
		Reason      string   `json:"reason"`
		Total       int64    `json:"deks_total"`
		Done        int64    `json:"deks_done"`
		Failed      int64    `json:"deks_failed"`
		FailedDEKs  []string `json:"failed_deks"`
		LastError   string   `json:"last_error"`
	}
	e2eStatus struct {
		Keys      []e2eKey      `json:"keys"`
		Rotations []e2eRotation `json:"rotations"`
		Recent    []e2eRotation `json:"recent_rotations"`
	}
	e2ePlan struct {
		Keys []struct {
			Key           string `json:"key"`
			ActiveVersion int    `json:"active_version"`
			Action        string `json:"action"`
			Versions      []struct {
				Version     int       `json:"version"`
				State       string    `json:"state"`
				DEKs        int64     `json:"deks"`
				RetireAfter time.Time `json:"retire_after"`
				Action      string    `json:"action"`
			} `json:"versions"`
		} `json:"keys"`
	}
)

// version returns version v of k, failing the test when there is none.
func (k e2eKey) version(t *testing.T, v int) e2eVersion {
	t.Helper()
	for _, vv := range k.Versions {
		if vv.Version == v {
			return vv
		}
	}
	t.Fatalf("key %s has no version %d: %+v", k.Name, v, k.Versions)
	return e2eVersion{}
}

// keyShow is `rekey key show NAME --json`.
func (h *e2eHome) keyShow(name string) e2eKey {
	h.t.Helper()
	var k e2eKey
	h.mustJSON(&k, "key", "show", name)
	return k
}

// status is `rekey status --json`.
func (h *e2eHome) status() e2eStatus {
	h.t.Helper()
	var s e2eStatus
	h.mustJSON(&s, "status")
	return s
}

// createDEKs is `rekey dek create --key KEY --count n`.
func (h *e2eHome) createDEKs(key string, n int) {
	h.t.Helper()
	var out struct {
		Created int `json:"created"`
	}
	h.mustJSON(&out, "dek", "create", "--key", key, "--count", strconv.Itoa(n))
	if out.Created != n {
		h.t.Fatalf("dek create --count %d created %d", n, out.Created)
	}
}

// assertAllOn checks with `key show --json` that every one of the key's
// want DEKs is on version v and that v is active.
func (h *e2eHome) assertAllOn(key string, v int, want int64) e2eKey {
	h.t.Helper()
	k := h.keyShow(key)
	if k.ActiveVersion != v {
		h.t.Errorf("key %s: active version %d, want %d", key, k.ActiveVersion, v)
	}
	for _, vv := range k.Versions {
		switch {
		case vv.Version == v && vv.DEKs != want:
			h.t.Errorf("key %s: %d DEKs on v%d, want all %d", key, vv.DEKs, v, want)
		case vv.Version != v && vv.DEKs != 0:
			h.t.Errorf("key %s: %d DEKs still on v%d (%s), want 0", key, vv.DEKs, vv.Version, vv.State)
		}
	}
	if k.DEKs != want {
		h.t.Errorf("key %s: %d DEKs in all, want %d", key, k.DEKs, want)
	}
	return k
}

// sqlDB opens the home's SQLite file directly (closed at the end of the
// test). Processes may run meanwhile: the store uses WAL.
func (h *e2eHome) sqlDB() *sql.DB {
	h.t.Helper()
	if h.db == nil {
		db, err := sql.Open("sqlite3", "file:"+filepath.Join(h.home, "rekey.db")+"?_busy_timeout=10000")
		if err != nil {
			h.t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		h.db = db
		h.t.Cleanup(func() { db.Close() })
	}
	return h.db
}

// makeDue moves key's expiry to now, as if its period had passed: the
// next cycle rotates it. (Only TestE2E_ScheduledRotation waits on the real
// clock; the other tests need the rotation, not the wait, and a 90d period
// keeps the next runs from rotating again.)
func (h *e2eHome) makeDue(key string) {
	h.t.Helper()
	res, err := h.sqlDB().Exec(`UPDATE keys SET expires_at = ? WHERE name = ?`, time.Now().UnixMicro(), key)
	if err != nil {
		h.t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		h.t.Fatalf("make key %s due: %d rows", key, n)
	}
}

// dekRow is a DEK row as stored.
type dekRow struct {
	id      string
	version int
	wrapped []byte
}

// dekRows returns up to n DEK rows of key in id order.
func (h *e2eHome) dekRows(key string, n int) []dekRow {
	h.t.Helper()
	rows, err := h.sqlDB().Query(`SELECT id, version, wrapped FROM deks WHERE key = ? ORDER BY id LIMIT ?`, key, n)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	var out []dekRow
	for rows.Next() {
		var r dekRow
		if err := rows.Scan(&r.id, &r.version, &r.wrapped); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		h.t.Fatal(err)
	}
	return out
}

// dekRow returns the row of DEK id.
func (h *e2eHome) dekRow(id string) dekRow {
	h.t.Helper()
	r := dekRow{id: id}
	if err := h.sqlDB().QueryRow(`SELECT version, wrapped FROM deks WHERE id = ?`, id).Scan(&r.version, &r.wrapped); err != nil {
		h.t.Fatalf("dek %s: %v", id, err)
	}
	return r
}

// corruptDEK flips one byte in the middle of DEK id's wrapped value and
// returns the corrupt bytes as stored.
func (h *e2eHome) corruptDEK(id string) []byte {
	h.t.Helper()
	w := h.dekRow(id).wrapped
	w[len(w)/2] ^= 0x01
	if _, err := h.sqlDB().Exec(`UPDATE deks SET wrapped = ? WHERE id = ?`, w, id); err != nil {
		h.t.Fatal(err)
	}
	return w
}

// backendVersion opens a local keyring (read only use) and returns the
// backend's current version of key (ref == key name for the local backend).
func backendVersion(t *testing.T, keyring, masterKeyFile, key string) int {
	t.Helper()
	ctx := context.Background()
	c, err := localkms.New(ctx, localkms.Config{Keyring: keyring, MasterKeyFile: masterKeyFile})
	if err != nil {
		t.Fatalf("open keyring %s: %v", keyring, err)
	}
	defer c.Close()
	v, err := c.CurrentVersion(ctx, key)
	if err != nil {
		t.Fatalf("backend current version of %s: %v", key, err)
	}
	return v
}

// backendVersion is backendVersion on the home's own keyring.
func (h *e2eHome) backendVersion(key string) int {
	h.t.Helper()
	return backendVersion(h.t, filepath.Join(h.home, "keyring"), filepath.Join(h.home, "master.key"), key)
}

// sealedFile is a file sealed by `rekey encrypt` and its plaintext.
type sealedFile struct {
	plain, sealed string
}

// sealFiles writes len(sizes) files of random bytes and seals each with
// `rekey encrypt --key key`.
func (h *e2eHome) sealFiles(key, prefix string, sizes []int) []sealedFile {
	h.t.Helper()
	var out []sealedFile
	for i, n := range sizes {
		p := filepath.Join(h.dir, fmt.Sprintf("%s-%02d.bin", prefix, i))
		if err := os.WriteFile(p, randomBytes(h.t, n), 0o600); err != nil {
			h.t.Fatal(err)
		}
		f := sealedFile{plain: p, sealed: p + ".rekey"}
		h.must("encrypt", "--key", key, "--in", f.plain, "--out", f.sealed)
		out = append(out, f)
	}
	return out
}

// checkFiles decrypts every file with `rekey decrypt` and compares it byte
// for byte with its plaintext.
func (h *e2eHome) checkFiles(files []sealedFile) {
	h.t.Helper()
	for _, f := range files {
		back := f.plain + ".back"
		os.Remove(back)
		if r := h.run("decrypt", "--in", f.sealed, "--out", back); r.code != 0 {
			h.t.Errorf("decrypt %s: %v", filepath.Base(f.sealed), r)
			continue
		}
		want, err := os.ReadFile(f.plain)
		if err != nil {
			h.t.Fatal(err)
		}
		got, err := os.ReadFile(back)
		if err != nil {
			h.t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			h.t.Errorf("decrypt %s: %d bytes differ from the %d-byte original", filepath.Base(f.sealed), len(got), len(want))
		}
	}
}

// flipFileByte flips one byte in the middle of a file.
func flipFileByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// logLines returns the JSON log lines of stderr whose msg is msg.
func logLines(stderr, msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// logTime returns the time of the first log line with msg, or the zero time.
func logTime(stderr, msg string) time.Time {
	for _, m := range logLines(stderr, msg) {
		if s, ok := m["time"].(string); ok {
			if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
				return ts
			}
		}
	}
	return time.Time{}
}

// lineWatcher copies a subprocess's stderr into a buffer and closes found
// the first time a line contains want.
type lineWatcher struct {
	want  string
	found chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	buf   bytes.Buffer
}

func watchLines(r io.Reader, want string) *lineWatcher {
	w := &lineWatcher{want: want, found: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		br := bufio.NewReaderSize(r, 1<<16)
		seen := false
		for {
			line, err := br.ReadString('\n')
			w.mu.Lock()
			w.buf.WriteString(line)
			w.mu.Unlock()
			if !seen && strings.Contains(line, w.want) {
				seen = true
				close(w.found)
			}
			if err != nil {
				return
			}
		}
	}()
	return w
}

// text returns everything read so far.
func (w *lineWatcher) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// fileSizes returns n file sizes around the envelope's 64 KiB chunks.
func fileSizes(n int) []int {
	base := []int{0, 1, 15, 16, 17, 100, 1000, 4095, 4096, 65535, 65536, 65537, 100000, 131072, 131073, 200000, 7, 333, 9999, 77777}
	out := make([]int, n)
	for i := range out {
		out[i] = base[i%len(base)] + (i/len(base))*13
	}
	return out
}

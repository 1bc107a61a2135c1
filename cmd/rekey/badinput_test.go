package main

// The bad-input corpus (issue 8, build item 4): every file under
// testdata/badinput/CATEGORY/NAME.txt is one bad input to the rekey binary.
// For each, the runner copies a template directory (a home with a key that
// was rotated once, DEKs, sealed files, and a second home), applies the
// entry's mutation, hashes every file of the copy (SHA-256, plus file type
// and permission bits), runs the command through the built binary, and
// checks: the exit code is non-zero (the one the entry names), the message
// (stderr, then stdout) names what is wrong (what:) and how to fix it
// (fix:), the output carries no secret,
// and afterwards every file is byte-identical, none added, none removed.
//
// SQLite's side files: the hash covers every file, rekey.db-wal and
// rekey.db-shm included, and nothing is excluded. The store opens the
// database in WAL mode, and SQLite deletes both side files when the last
// connection of the file closes cleanly, which every command does on its
// way out; so a side file left behind (or the WAL's content checkpointed
// into rekey.db) is a real change to the home, and fails the entry. The
// runner's own SQL mutations and lock holders close their connections
// before the files are hashed, so their side files are gone too.
//
// The entry format (see cmd/rekey/testdata/badinput/README.md):
//
//	# what the input is (at least one comment line)
//	run: ARGS...            the command line (tokens; "Go-quoted" allowed)
//	do: OP ARGS...          a mutation, applied in order before hashing
//	during: OP ARGS...      a condition held while the command runs
//	env: NAME=VALUE         an extra environment variable
//	exit: N                 the exit code (non-zero)
//	what: REGEXP            the message (stderr + stdout) names the problem
//	fix: REGEXP             the message says how to fix it
//	notwant: REGEXP         the message must not match (advice that misleads)
//	maxlen: N               stderr is at most N bytes
//	pending: TEXT           the fix this entry waits for (another branch):
//	                        the entry runs as any other and fails until then
//	known: TEXT             a known shortfall nobody is fixing yet: the
//	                        entry must still fail (its failures are logged);
//	                        once it passes, the runner says to drop the line
//	maychange: PATH WHY     PATH's content may change (never its existence
//	                        or mode), for the reason given
//	-- NAME --              a section: the content of a file for `do: write`
//
// Paths are relative to the entry's directory: home/ (REKEY_HOME),
// other/ (a second home), sealed.rekey, small.rekey, other.rekey, plain.bin,
// keyring.v1 (the keyring before the rotation). $DEK is the id of the DEK
// sealed.rekey names, $DEK2 another DEK of key a, $OTHER_MASTER the other
// home's master key (in run:, do:, during:, env: and the regexps).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// badInputDir is the corpus, relative to this package.
const badInputDir = "testdata/badinput"

// badInputTimeout bounds one command: a command that waits forever (on a
// lock, say) fails its entry instead of hanging the test.
// (The SQLite store gives up on a held lock after 5 s.)
const badInputTimeout = 12 * time.Second

// badInputKnown counts the entries that failed as their known: line says.
var badInputKnown atomic.Int64

// badInputKnownHard counts the known entries that also change the files,
// exit 0 or hang.
var badInputKnownHard atomic.Int64

// fixVerbs are the verbs a fix: pattern must contain one of: a message
// that says how to fix the problem starts the fix with a verb.
var fixVerbs = regexp.MustCompile(`(?i)\b(restore|run|chmod|chown|set|unset|use|remove|give|check|fix|free|stop|wait|retry|upgrade|create|make|copy|move|rename|write|choose|add|correct|delete|declare|pass|point|quote|indent|close|shorten|lower|raise|keep|mount|list)`)

// badInput is one corpus entry.
type badInput struct {
	name      string // CATEGORY/NAME
	category  string
	doc       string
	args      []string
	do        [][]string
	during    [][]string
	env       []string
	exit      int
	what      string // regexps, compiled once $DEK... are expanded
	fix       string
	notWant   string
	maxLen    int
	pending   string
	known     string
	mayChange map[string]string // path -> why its content may change
	sections  map[string][]byte
}

// loadBadInputs reads and checks every entry of the corpus in dir
// (badInputDir, or another corpus of the same format).
func loadBadInputs(t *testing.T, dir string) []*badInput {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatalf("no corpus entries under %s", dir)
	}
	sort.Strings(paths)
	var out []*badInput
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		e, err := parseBadInput(b)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		e.category = filepath.Base(filepath.Dir(p))
		e.name = e.category + "/" + strings.TrimSuffix(filepath.Base(p), ".txt")
		out = append(out, e)
	}
	return out
}

// parseBadInput parses one entry and refuses an incomplete one: every
// entry must say what it is, run a command, expect a non-zero exit, and
// name both the problem and its fix.
func parseBadInput(b []byte) (*badInput, error) {
	e := &badInput{sections: map[string][]byte{}, mayChange: map[string]string{}}
	text := string(b)
	// Sections start at the first "-- NAME --" line.
	head, rest := text, ""
	if i := strings.Index(text, "\n-- "); i >= 0 {
		head, rest = text[:i+1], text[i+1:]
	}
	for rest != "" {
		line, body, _ := strings.Cut(rest, "\n")
		if !strings.HasPrefix(line, "-- ") || !strings.HasSuffix(line, " --") {
			return nil, fmt.Errorf("bad section line %q", line)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(line, "-- "), " --")
		next := strings.Index(body, "\n-- ")
		if next < 0 {
			e.sections[name], rest = []byte(body), ""
		} else {
			e.sections[name], rest = []byte(body[:next+1]), body[next+1:]
		}
	}
	sc := bufio.NewScanner(strings.NewReader(head))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			e.doc += strings.TrimSpace(strings.TrimPrefix(line, "#")) + " "
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %q: want KEY: VALUE", line)
		}
		val = strings.TrimSpace(val)
		var err error
		switch key {
		case "run":
			e.args, err = splitTokens(val)
		case "do", "during":
			var op []string
			if op, err = splitTokens(val); err == nil && len(op) == 0 {
				err = fmt.Errorf("empty %s", key)
			}
			if key == "do" {
				e.do = append(e.do, op)
			} else {
				e.during = append(e.during, op)
			}
		case "env":
			e.env = append(e.env, val)
		case "exit":
			e.exit, err = strconv.Atoi(val)
		case "what":
			e.what = val
			_, err = regexp.Compile(val)
		case "fix":
			e.fix = val
			if _, err = regexp.Compile(val); err == nil && !fixVerbs.MatchString(val) {
				err = fmt.Errorf("fix: %q names no fixing verb (%s)", val, fixVerbs)
			}
		case "notwant":
			e.notWant = val
			_, err = regexp.Compile(val)
		case "maxlen":
			e.maxLen, err = strconv.Atoi(val)
		case "pending":
			e.pending = val
		case "known":
			e.known = val
		case "maychange":
			path, why, _ := strings.Cut(val, " ")
			if why = strings.TrimSpace(why); why == "" {
				err = fmt.Errorf("maychange: %s: say why its content may change", path)
			}
			e.mayChange[path] = why
		default:
			err = fmt.Errorf("unknown key %q", key)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", key, err)
		}
	}
	switch {
	case e.doc == "":
		return nil, fmt.Errorf("no # comment saying what the input is")
	case len(e.args) == 0:
		return nil, fmt.Errorf("no run: line")
	case e.exit == 0:
		return nil, fmt.Errorf("exit: must be given and non-zero")
	case e.what == "" || e.fix == "":
		return nil, fmt.Errorf("what: and fix: are both required")
	case e.pending != "" && e.known != "":
		return nil, fmt.Errorf("pending: and known: exclude each other")
	}
	return e, nil
}

// splitTokens splits s at spaces; a token that starts with a double quote
// is a Go string literal.
func splitTokens(s string) ([]string, error) {
	var out []string
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out, nil
		}
		if s[0] == '"' {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return nil, fmt.Errorf("token %q: %v", s, err)
			}
			u, _ := strconv.Unquote(q)
			out, s = append(out, u), s[len(q):]
			continue
		}
		i := strings.IndexAny(s, " \t")
		if i < 0 {
			i = len(s)
		}
		out, s = append(out, s[:i]), s[i:]
	}
}

// badInputTemplate is the directory every entry starts from.
type badInputTemplate struct {
	dir     string
	store   badInputStore // where the home's store is
	dek     string        // the DEK sealed.rekey names
	dek2    string        // another DEK of key a
	other   string        // the other home's master key (base64), for REKEY_MASTER_KEY
	secrets []string
}

// badInputStore is where the template's home (home/, not other/) keeps
// its store: rekey.db in the home (sqliteBadInputs) or a PostgreSQL
// database (badinput_pg_test.go).
type badInputStore interface {
	// configure points a fresh home's rekey.yaml at the store, before
	// anything is stored.
	configure(t *testing.T, h *e2eHome)
	// dekIDs returns the ids of key's DEKs, in id order; no connection of
	// its own stays open.
	dekIDs(t *testing.T, h *e2eHome, key string) []string
	// copyOf gives the copy of the template at h (its files already
	// copied) a store of its own, the template's content, and returns it.
	copyOf(t *testing.T, h *e2eHome) badInputDB
}

// badInputDB is the store of one entry's copy of the template.
type badInputDB interface {
	// vars are the store's names expanded in an entry ($NAME -> value).
	vars() map[string]string
	// exec runs a do: sql statement, its connection closed after.
	exec(t *testing.T, stmt string)
	// flipWrapped changes a DEK's wrapped value in place (flip(w)).
	flipWrapped(t *testing.T, id string, flip func(w []byte))
	// hash describes, per table, the content a bad input must leave
	// unchanged beside the files; nil when the files hold it all.
	hash(t *testing.T) map[string]string
}

// sqliteBadInputs keeps the store in home/rekey.db, which the files' hash
// covers.
type sqliteBadInputs struct{}

func (sqliteBadInputs) configure(*testing.T, *e2eHome) {}

func (sqliteBadInputs) dekIDs(t *testing.T, h *e2eHome, key string) []string {
	var ids []string
	for _, r := range h.dekRows(key, 10) {
		ids = append(ids, r.id)
	}
	if h.db != nil {
		h.db.Close()
		h.db = nil
	}
	return ids
}

func (sqliteBadInputs) copyOf(t *testing.T, h *e2eHome) badInputDB { return sqliteBadInputDB{h} }

// sqliteBadInputDB is a copy's home/rekey.db.
type sqliteBadInputDB struct{ h *e2eHome }

func (sqliteBadInputDB) vars() map[string]string { return nil }

func (d sqliteBadInputDB) exec(t *testing.T, stmt string) {
	t.Helper()
	db := openHomeDB(t, d.h, "")
	if _, err := db.Exec(stmt); err != nil {
		t.Fatalf("do: sql %q: %v", stmt, err)
	}
	closeHomeDB(t, d.h, db)
}

func (d sqliteBadInputDB) flipWrapped(t *testing.T, id string, flip func([]byte)) {
	t.Helper()
	db := openHomeDB(t, d.h, "")
	var w []byte
	if err := db.QueryRow(`SELECT wrapped FROM deks WHERE id = ?`, id).Scan(&w); err != nil {
		t.Fatalf("do: flipwrapped %s: %v", id, err)
	}
	flip(w)
	if _, err := db.Exec(`UPDATE deks SET wrapped = ? WHERE id = ?`, w, id); err != nil {
		t.Fatal(err)
	}
	closeHomeDB(t, d.h, db)
}

func (sqliteBadInputDB) hash(*testing.T) map[string]string { return nil }

// newBadInputTemplate makes, in a directory of its own: home/ with key a
// (created, rotated once: DEKs on v1 and v2), 3 DEKs, sealed.rekey (150000
// random bytes: three segments, under a DEK of v2), small.rekey (a short
// secret text), keyring.v1 (the keyring before the rotation), plain.bin,
// and other/: a second home with a key of the same name a and other.rekey.
// The home's store is st's; other/ keeps its own in other/rekey.db (no
// entry runs a command on it).
func newBadInputTemplate(t *testing.T, st badInputStore) *badInputTemplate {
	t.Helper()
	h := newE2EHome(t, e2eOpts{})
	tpl := &badInputTemplate{dir: h.dir, store: st}
	st.configure(t, h)
	h.must("key", "create", "a")
	h.createDEKs("a", 2)
	copyFile(t, filepath.Join(h.home, "keyring"), filepath.Join(h.dir, "keyring.v1"))
	h.must("rotate", "a", "--reason", "corpus template")
	h.createDEKs("a", 1)
	plain := randomBytes(t, 150000)
	writeFile(t, filepath.Join(h.dir, "plain.bin"), plain)
	h.must("encrypt", "--key", "a", "--in", "plain.bin", "--out", "sealed.rekey")
	const secret = "corpus-plaintext-7Hq2ZkW9"
	writeFile(t, filepath.Join(h.dir, "small.txt"), []byte(secret))
	h.must("encrypt", "--key", "a", "--in", "small.txt", "--out", "small.rekey")
	os.Remove(filepath.Join(h.dir, "small.txt"))

	other := &e2eHome{t: t, bin: h.bin, dir: h.dir, home: filepath.Join(h.dir, "other")}
	other.must("init", "--dir", other.home)
	other.must("key", "create", "a")
	other.must("encrypt", "--key", "a", "--in", "plain.bin", "--out", "other.rekey")

	sealed, err := os.ReadFile(filepath.Join(h.dir, "sealed.rekey"))
	if err != nil {
		t.Fatal(err)
	}
	tpl.dek = string(sealed[7 : 7+int(sealed[6])])
	for _, id := range st.dekIDs(t, h, "a") {
		if id != tpl.dek {
			tpl.dek2 = id
			break
		}
	}
	// What no message may contain: the master keys and a plaintext.
	for _, p := range []string{filepath.Join(h.home, "master.key"), filepath.Join(other.home, "master.key")} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		tpl.secrets = append(tpl.secrets, strings.TrimSpace(string(b)))
	}
	tpl.other = tpl.secrets[1]
	tpl.secrets = append(tpl.secrets, secret)
	for _, s := range []string{"rekey.db-wal", "rekey.db-shm"} {
		if _, err := os.Stat(filepath.Join(h.home, s)); err == nil {
			t.Fatalf("the template home kept %s after its commands closed", s)
		}
	}
	return tpl
}

// TestBadInput runs every entry of the corpus (see the top of this file).
func TestBadInput(t *testing.T) {
	entries := loadBadInputs(t, badInputDir)
	if t.Failed() {
		return
	}
	start := time.Now()
	tpl := newBadInputTemplate(t, sqliteBadInputs{})
	t.Logf("template made in %v", time.Since(start).Round(time.Millisecond))
	perCategory := map[string]int{}
	for _, e := range entries {
		perCategory[e.category]++
	}
	runStart := time.Now()
	t.Run("corpus", func(t *testing.T) {
		for _, e := range entries {
			t.Run(e.name, func(t *testing.T) {
				t.Parallel()
				runBadInput(t, tpl, e)
			})
		}
	})
	cats := make([]string, 0, len(perCategory))
	for c, n := range perCategory {
		cats = append(cats, fmt.Sprintf("%s %d", c, n))
	}
	sort.Strings(cats)
	pending := 0
	for _, e := range entries {
		if e.pending != "" {
			pending++
		}
	}
	t.Logf("%d inputs (%s) ran in %v; %d wait for a fix on another branch (pending:), %d are known shortfalls still failing (known:), %d of them in the exit code or the files",
		len(entries), strings.Join(cats, ", "), time.Since(runStart).Round(time.Millisecond), pending, badInputKnown.Load(), badInputKnownHard.Load())
}

// runBadInput runs one entry in a fresh copy of the template.
func runBadInput(t *testing.T, tpl *badInputTemplate, e *badInput) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(tpl.dir)); err != nil {
		t.Fatal(err)
	}
	// CopyFS makes files 0644 / directories 0755: copy the modes too, the
	// keyring and the database refuse to be readable by others.
	copyModes(t, tpl.dir, dir)
	h := &e2eHome{t: t, bin: e2eBinary(t), dir: dir, home: filepath.Join(dir, "home")}
	db := tpl.store.copyOf(t, h)
	// Longer names first: $DEK2 before $DEK.
	vars := map[string]string{"$DEK2": tpl.dek2, "$DEK": tpl.dek, "$OTHER_MASTER": tpl.other}
	for k, v := range db.vars() {
		vars[k] = v
	}
	names := make([]string, 0, len(vars))
	for k := range vars {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		return len(names[i]) > len(names[j]) || len(names[i]) == len(names[j]) && names[i] < names[j]
	})
	var pairs []string
	for _, k := range names {
		pairs = append(pairs, k, vars[k])
	}
	replacer := strings.NewReplacer(pairs...)
	expand := replacer.Replace
	var failures []string
	fail := func(format string, args ...any) { failures = append(failures, fmt.Sprintf(format, args...)) }
	label := func() string {
		if e.pending != "" {
			return "[pending: " + e.pending + "] "
		}
		return ""
	}
	var fsize int64
	for _, op := range e.do {
		if lim := applyBadInputOp(t, h, db, e, expandAll(op, expand)); lim > 0 {
			fsize = lim
		}
	}
	before, dbBefore := hashTree(t, dir), db.hash(t)
	var release []func()
	for _, op := range e.during {
		release = append(release, holdBadInputCondition(t, h, db, expandAll(op, expand)))
	}
	args := expandAll(e.args, expand)
	env := expandAll(e.env, expand)
	r := runBadInputCommand(t, h, fsize, env, args, fail)
	for i := len(release) - 1; i >= 0; i-- {
		release[i]()
	}
	after, dbAfter := hashTree(t, dir), db.hash(t)

	if diff := diffTrees(before, after, e.mayChange); diff != "" {
		fail("%sthe command changed the files (%s):\n%s\n%v", label(), e.doc, diff, r)
	}
	if diff := diffTrees(dbBefore, dbAfter, nil); diff != "" {
		fail("%sthe command changed the database (%s):\n%s\n%v", label(), e.doc, diff, r)
	}
	if r.code != e.exit {
		fail("%sexit %d, want %d (%s)\n%v", label(), r.code, e.exit, e.doc, r)
	}
	// The message is stderr, and stdout where a command (status) reports
	// each problem beside the data it could still show.
	msg := r.stderr + "\n" + r.stdout
	what, fix := regexp.MustCompile(expand(e.what)), regexp.MustCompile(expand(e.fix))
	if !what.MatchString(msg) {
		fail("%sthe message does not name the problem (what: %s) (%s)\n%v", label(), what, e.doc, r)
	}
	if !fix.MatchString(msg) {
		fail("%sthe message does not say how to fix it (fix: %s) (%s)\n%v", label(), fix, e.doc, r)
	}
	if e.notWant != "" {
		if nw := regexp.MustCompile(expand(e.notWant)); nw.MatchString(msg) {
			fail("%sthe message says what it must not (notwant: %s) (%s)\n%v", label(), nw, e.doc, r)
		}
	}
	if msg := r.stderr; e.maxLen > 0 && len(msg) > e.maxLen {
		fail("%sthe message is %d bytes, want at most %d (%s): %s", label(), len(msg), e.maxLen, e.doc, e2eTail(msg, 300))
	}
	for _, s := range tpl.secrets {
		if strings.Contains(r.stderr, s) || strings.Contains(r.stdout, s) {
			// Never excused, known: or not.
			t.Errorf("the output carries a secret (a master key or a plaintext) (%s)", e.doc)
		}
	}
	switch {
	case e.known != "" && len(failures) == 0:
		t.Errorf("known shortfall %q no longer shows: the entry passes, remove its known: line", e.known)
	case e.known != "":
		// The files and the exit code are what the must-hold is about:
		// a known entry that breaks them is counted apart, for the summary.
		hard := ""
		for _, f := range failures {
			if strings.HasPrefix(f, "the command changed the files") || strings.HasPrefix(f, "the command changed the database") || strings.HasPrefix(f, "exit ") || strings.HasPrefix(f, "rekey ") {
				hard = " (it also breaks the exit code or the files: see below)"
				badInputKnownHard.Add(1)
				break
			}
		}
		t.Logf("known shortfall (%s), still failing as expected%s:\n%s", e.known, hard, strings.Join(failures, "\n"))
		badInputKnown.Add(1)
	default:
		for _, f := range failures {
			t.Error(f)
		}
	}
}

func expandAll(ss []string, f func(string) string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

// runBadInputCommand runs the entry's command with a deadline. The process
// is the binary itself or, for the `fsize` condition, the binary under a
// shell that set RLIMIT_FSIZE first.
func runBadInputCommand(t *testing.T, h *e2eHome, fsize int64, env, args []string, fail func(string, ...any)) e2eResult {
	t.Helper()
	cmd := h.command(env, args...)
	if lim := fsize; lim > 0 {
		// ulimit -f counts 512-byte blocks in dash, 1024 in bash: the
		// POSIX sh used here is told in 512-byte blocks, the smaller.
		cmd = exec.Command("/bin/sh", append([]string{"-c", fmt.Sprintf(`ulimit -f %d && exec "$0" "$@"`, lim/512), h.bin}, args...)...)
		cmd.Env = h.environ(env...)
		cmd.Dir = h.dir
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start rekey %s: %v", strings.Join(args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timedOut := false
	select {
	case <-done:
	case <-time.After(badInputTimeout):
		timedOut = true
		cmd.Process.Kill()
		<-done
	}
	r := e2eResult{args: args, stdout: out.String(), stderr: errb.String(), dur: time.Since(start), code: cmd.ProcessState.ExitCode()}
	if timedOut {
		fail("rekey %s did not finish within %v (waiting forever on a bad input is a failure)\n%v", strings.Join(args, " "), badInputTimeout, r)
	}
	return r
}

// applyBadInputOp applies one do: mutation. It returns the RLIMIT_FSIZE
// the command must run under (smallfs without a tmpfs), else 0.
func applyBadInputOp(t *testing.T, h *e2eHome, db badInputDB, e *badInput, op []string) int64 {
	t.Helper()
	p := func(i int) string {
		if i >= len(op) {
			t.Fatalf("do: %s: missing argument %d", strings.Join(op, " "), i)
		}
		return filepath.Join(h.dir, op[i])
	}
	arg := func(i int) string {
		if i >= len(op) {
			t.Fatalf("do: %s: missing argument %d", strings.Join(op, " "), i)
		}
		return op[i]
	}
	num := func(i int) int {
		n, err := strconv.Atoi(arg(i))
		if err != nil {
			t.Fatalf("do: %s: %v", strings.Join(op, " "), err)
		}
		return n
	}
	// offset resolves a negative offset from the end of b.
	offset := func(b []byte, i int) int {
		n := num(i)
		if n < 0 {
			n += len(b)
		}
		if n < 0 || n >= len(b) {
			t.Fatalf("do: %s: offset %d outside the %d-byte file", strings.Join(op, " "), n, len(b))
		}
		return n
	}
	switch arg(0) {
	case "write": // write PATH SECTION
		s, ok := e.sections[arg(2)]
		if !ok {
			t.Fatalf("do: write: no section %q", arg(2))
		}
		writeFileKeepMode(t, p(1), s)
	case "writetext": // writetext PATH TEXT
		writeFileKeepMode(t, p(1), []byte(arg(2)))
	case "replace": // replace PATH OLD NEW [REPEAT]: NEW repeated REPEAT times
		b := readFile(t, p(1))
		n := 1
		if len(op) > 4 {
			n = num(4)
		}
		if c := bytes.Count(b, []byte(arg(2))); c != 1 {
			t.Fatalf("do: replace: %q occurs %d times in %s, want once", arg(2), c, arg(1))
		}
		writeFileKeepMode(t, p(1), bytes.Replace(b, []byte(arg(2)), bytes.Repeat([]byte(arg(3)), n), 1))
	case "append": // append PATH TEXT
		writeFileKeepMode(t, p(1), append(readFile(t, p(1)), arg(2)...))
	case "appendbytes": // appendbytes PATH SRC OFFSET LEN: bytes of SRC
		src := readFile(t, p(2))
		off := offset(src, 3)
		writeFileKeepMode(t, p(1), append(readFile(t, p(1)), src[off:off+num(4)]...))
	case "truncate": // truncate PATH N: to N bytes, or drop -N from the end
		b := readFile(t, p(1))
		n := num(2)
		if n < 0 {
			n += len(b)
		}
		if err := os.Truncate(p(1), int64(n)); err != nil {
			t.Fatal(err)
		}
	case "flip": // flip PATH OFFSET: xor the byte with 0x01
		b := readFile(t, p(1))
		b[offset(b, 2)] ^= 0x01
		writeFileKeepMode(t, p(1), b)
	case "setbyte": // setbyte PATH OFFSET VALUE
		b := readFile(t, p(1))
		b[offset(b, 2)] = byte(num(3))
		writeFileKeepMode(t, p(1), b)
	case "swap": // swap PATH OFF1 OFF2 LEN: exchange two ranges
		b := readFile(t, p(1))
		a, c, n := offset(b, 2), offset(b, 3), num(4)
		x := bytes.Clone(b[a : a+n])
		copy(b[a:a+n], b[c:c+n])
		copy(b[c:c+n], x)
		writeFileKeepMode(t, p(1), b)
	case "garbage": // garbage PATH N: N deterministic non-random-looking bytes
		b := make([]byte, num(2))
		for i := range b {
			b[i] = byte(i*7 + 3)
		}
		writeFileKeepMode(t, p(1), b)
	case "rm":
		if err := os.RemoveAll(p(1)); err != nil {
			t.Fatal(err)
		}
	case "mkdir":
		if err := os.RemoveAll(p(1)); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(p(1), 0o700); err != nil {
			t.Fatal(err)
		}
	case "copy": // copy SRC DST
		copyFile(t, p(1), p(2))
	case "chmod": // chmod PATH OCTAL
		m, err := strconv.ParseUint(arg(2), 8, 32)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p(1), fs.FileMode(m)); err != nil {
			t.Fatal(err)
		}
	case "sql": // sql STATEMENT: on the copy's store, connection closed after
		db.exec(t, arg(1))
	case "flipwrapped": // flipwrapped ID OFFSET: flip a byte of a DEK's wrapped value, by SQL
		db.flipWrapped(t, arg(1), func(w []byte) { w[offset(w, 2)] ^= 0x01 })
	case "readonly": // readonly PATH: a read-only file system under PATH
		makeReadOnly(t, p(1))
	case "fillfs": // fillfs PATH: a file that takes all the space left
		fillFS(t, p(1))
	case "smallfs": // smallfs DIR SLACK: DIR moved into a file system with SLACK bytes free
		return smallFS(t, p(1), int64(num(2)))
	default:
		t.Fatalf("do: unknown op %q", arg(0))
	}
	return 0
}

// holdBadInputCondition starts a during: condition and returns its release.
// A condition the runner does not know may be the store's own (see
// badInputHolder).
func holdBadInputCondition(t *testing.T, h *e2eHome, db badInputDB, op []string) func() {
	t.Helper()
	switch op[0] {
	case "sqlite-write-lock":
		// Another process in a write transaction: BEGIN IMMEDIATE holds
		// the database's write lock (WAL mode: readers go on).
		db := openHomeDB(t, h, "")
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
			t.Fatal(err)
		}
		return func() {
			conn.ExecContext(context.Background(), "ROLLBACK")
			conn.Close()
			closeHomeDB(t, h, db)
		}
	case "sqlite-exclusive-lock":
		// Another process holding the file exclusively: locking_mode
		// EXCLUSIVE keeps the lock after its first write transaction, and
		// in WAL mode it also keeps readers out (no shared memory index).
		db := openHomeDB(t, h, "&_locking_mode=EXCLUSIVE")
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(context.Background(), "BEGIN EXCLUSIVE; COMMIT"); err != nil {
			t.Fatal(err)
		}
		return func() {
			conn.Close()
			closeHomeDB(t, h, db)
		}
	case "flock": // flock PATH: another process holds the file lock
		path := filepath.Join(h.dir, op[1])
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		return func() {
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			f.Close()
		}
	default:
		if holder, ok := db.(badInputHolder); ok {
			if release := holder.hold(t, op); release != nil {
				return release
			}
		}
		t.Fatalf("during: unknown condition %q", op[0])
		return nil
	}
}

// badInputHolder is a badInputDB with during: conditions of its own.
type badInputHolder interface {
	// hold starts the condition op and returns its release, or nil when
	// it does not know op.
	hold(t *testing.T, op []string) func()
}

// openHomeDB opens the copy's database directly, as another program would.
func openHomeDB(t *testing.T, h *e2eHome, params string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(h.home, "rekey.db")+"?_busy_timeout=10000"+params)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

// closeHomeDB closes db and checks that SQLite removed its side files, so
// that the runner's own access leaves the home as a command would.
func closeHomeDB(t *testing.T, h *e2eHome, db *sql.DB) {
	t.Helper()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"-wal", "-shm"} {
		if _, err := os.Stat(filepath.Join(h.home, "rekey.db"+s)); err == nil {
			t.Fatalf("rekey.db%s left behind by the runner's own connection", s)
		}
	}
}

// makeReadOnly puts path (a file or a directory) on a read-only file
// system: a read-only bind mount when the test may mount (root), else
// chmod a-w (which binds an unprivileged process). Root that may not mount
// cannot be refused a write: the entry is skipped with that reason.
func makeReadOnly(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, info.Mode().Perm()&^0o222); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(path, info.Mode().Perm()) })
		return
	}
	if out, err := exec.Command("mount", "--bind", path, path).CombinedOutput(); err != nil {
		t.Skipf("read-only input: running as root without the right to mount (%v: %s); root ignores chmod, so nothing can be made read-only here", err, out)
	}
	t.Cleanup(func() { unmount(t, path) })
	if out, err := exec.Command("mount", "-o", "remount,ro,bind", path).CombinedOutput(); err != nil {
		t.Fatalf("remount %s read-only: %v: %s", path, err, out)
	}
}

// smallFS moves dir into a tmpfs with slack bytes free beyond its content;
// when the test may not mount, the command runs with RLIMIT_FSIZE instead
// (no file may grow beyond the largest one plus slack): it returns that
// limit, or 0 with the tmpfs mounted.
func smallFS(t *testing.T, dir string, slack int64) int64 {
	t.Helper()
	var used, largest int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			info, _ := d.Info()
			used += (info.Size() + 4095) &^ 4095
			largest = max(largest, info.Size())
		}
		return nil
	})
	orig := dir + ".orig"
	if err := os.Rename(dir, orig); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	size := used + slack + 64<<10
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Logf("disk full: cannot mount a tmpfs (%v: %s); limiting the file size with RLIMIT_FSIZE instead", err, bytes.TrimSpace(out))
		os.Remove(dir)
		if err := os.Rename(orig, dir); err != nil {
			t.Fatal(err)
		}
		return largest + slack
	}
	t.Cleanup(func() { unmount(t, dir) })
	if err := os.CopyFS(dir, os.DirFS(orig)); err != nil {
		t.Fatalf("fill the small file system: %v", err)
	}
	copyModes(t, orig, dir)
	if err := os.RemoveAll(orig); err != nil {
		t.Fatal(err)
	}
	return 0
}

// fillFS writes path until its file system is full (ENOSPC or EFBIG).
func fillFS(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EFBIG) {
				return
			}
			t.Fatalf("fill %s: %v", path, err)
		}
	}
}

func unmount(t *testing.T, path string) {
	if out, err := exec.Command("umount", path).CombinedOutput(); err != nil {
		t.Errorf("umount %s: %v: %s", path, err, out)
	}
}

// hashTree returns, for every entry under dir, its type, permission bits
// and (files) SHA-256: the state a bad input must leave unchanged.
func hashTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		if d.Type().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			hs := sha256.New()
			_, err = io.Copy(hs, f)
			f.Close()
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d bytes sha256 %s", info.Size(), hex.EncodeToString(hs.Sum(nil)))
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("hash %s: %v", dir, err)
	}
	return out
}

// diffTrees lists what differs between two hashTree results; a path of
// mayChange may change content (not type or mode).
func diffTrees(before, after map[string]string, mayChange map[string]string) string {
	var lines []string
	for p, b := range before {
		a, ok := after[p]
		mode := func(s string) string { m, _, _ := strings.Cut(s, " "); return m }
		switch {
		case !ok:
			lines = append(lines, "removed "+p)
		case a != b && mayChange[p] != "" && mode(a) == mode(b):
		case a != b:
			lines = append(lines, fmt.Sprintf("changed %s: %s -> %s", p, b, a))
		}
	}
	for p, a := range after {
		if _, ok := before[p]; !ok {
			lines = append(lines, fmt.Sprintf("added %s: %s", p, a))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// copyModes gives every entry under dst the permission bits of the same
// entry under src.
func copyModes(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		return os.Chmod(filepath.Join(dst, rel), info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeFileKeepMode replaces a file's content, keeping its mode (0600 for
// a new file).
func writeFileKeepMode(t *testing.T, p string, b []byte) {
	t.Helper()
	mode := fs.FileMode(0o600)
	if info, err := os.Stat(p); err == nil {
		mode = info.Mode().Perm()
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b := readFile(t, src)
	info, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(dst)
	if err := os.WriteFile(dst, b, info.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

// TestFuzzSeedCorpora checks that every Fuzz function of the module keeps
// a seed corpus in testdata/fuzz/FUZZNAME beside it, with at least one file.
func TestFuzzSeedCorpora(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fuzzFunc := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(\w+ \*testing\.F\)`)
	found := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src := readFile(t, p)
		for _, m := range fuzzFunc.FindAllSubmatch(src, -1) {
			found++
			name := string(m[1])
			dir := filepath.Join(filepath.Dir(p), "testdata", "fuzz", name)
			files, err := os.ReadDir(dir)
			rel, _ := filepath.Rel(root, dir)
			if err != nil || len(files) == 0 {
				t.Errorf("%s (%s) has no seed corpus: add files to %s (go test -fuzz writes them; see cmd/rekey/testdata/badinput/README.md)", name, filepath.Base(p), rel)
				continue
			}
			for _, f := range files {
				b := readFile(t, filepath.Join(dir, f.Name()))
				if !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
					t.Errorf("%s/%s is not a seed file (no \"go test fuzz v1\" line)", rel, f.Name())
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		t.Fatal("found no Fuzz function: the walk looked in the wrong place")
	}
}

// Package torture is rekey's seeded crash-torture harness. It runs the
// worker (`rekey run`) as a subprocess, again and again, each life with
// random failpoints armed (REKEY_FAILPOINTS: crash@N and error@N of the
// contract names) and a kill -9 after a random delay, while application
// writers (dek create, encrypt, decrypt through the CLI; new DEKs through
// the Go library) and an operator (rotate, retire) work beside it. After
// every life, with everything stopped, it checks the invariants:
//
//   - every DEK still exists and unwraps to the plaintext it had (SHA-256
//     fingerprints kept in the harness, outside the store: known at birth
//     for DEKs made through the library, taken at first sight for the
//     others), and the store holds exactly the DEKs the writers made;
//   - every sealed file decrypts to its original bytes;
//   - exactly one new version per rotation: the store's versions are
//     1..n, each n > 1 made by exactly one rotation (from_version + 1), and
//     the backend's current version is n (n+1 only while a rotation is
//     claimed and has not yet recorded the version it made);
//   - no version retired or destroyed while a DEK references it;
//   - states only move forward (created → active → pending_retirement →
//     retired → destroyed; claimed → version_created → rewrapping →
//     committed → done), one open rotation per key, each rotation starting
//     from the version the previous one made;
//   - `rekey audit verify` exits 0.
//
// Lives are planned from the seed alone (which failpoints, which hit, when
// the kill comes, what each writer does), so a seed replays the same
// schedule; what overlaps with what still depends on timing.
//
// The store and the backend are parameters: Config.StoreAndBackends is the
// store: and backends: part of the configuration, a template, so that
// another store or backend runs the same torture by passing its own
// (SQLiteLocal, PostgresLocal, SQLiteAWSKMS, SQLitePKCS11, SQLiteVault). With Config.Replicas, about one life of
// three runs several `rekey run` processes on the shared store instead
// of one, each with the life's failpoints.
package torture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/setup"
)

// SQLiteLocal is the StoreAndBackends template of the embedded default: the
// SQLite store and the local keyring in the home (as `rekey init` makes
// them).
const SQLiteLocal = `store:
  driver: sqlite
  dsn: "{{.Home}}/rekey.db"
backends:
  local:
    type: local
    keyring: "{{.Home}}/keyring"
    master_key_file: "{{.Home}}/master.key"
`

// PostgresLocal is the StoreAndBackends template of a PostgreSQL store
// (Config.DSN, e.g. with search_path set to a schema of its own) and the
// local keyring in the home (as `rekey init` makes it).
const PostgresLocal = `store:
  driver: postgres
  dsn: {{printf "%q" .DSN}}
backends:
  local:
    type: local
    keyring: "{{.Home}}/keyring"
    master_key_file: "{{.Home}}/master.key"
`

// TemplateData is what a StoreAndBackends template is executed with.
type TemplateData struct {
	// Home is the home directory (Config.Home), where rekey.yaml is written.
	Home string
	// DSN is Config.DSN: the store's data source name, for templates whose
	// store is not in the home.
	DSN string
	// Vars is Config.Vars: what else a template needs (an endpoint, a
	// token label, a file holding a credential), by name.
	Vars map[string]string
}

// Config says what to torture and how long.
type Config struct {
	// Seed chooses every random decision of the run; the same seed plans
	// the same lives.
	Seed int64
	// Iterations is the number of worker lives. Zero means: run until
	// every failpoint name was hit at least MinHits times, at most
	// MaxIterations lives (not reaching MinHits is then an error).
	Iterations int
	// MinHits is the number of hits per failpoint name a run with
	// Iterations == 0 waits for (default 5; see also OneHitAfter).
	MinHits int
	// MaxIterations bounds a run with Iterations == 0 (default 400).
	MaxIterations int
	// OneHitAfter, when above 0 (with Iterations == 0), lowers the goal
	// to one hit per failpoint name once that many lives were run: the run
	// ends when every name was hit MinHits times, or after OneHitAfter
	// lives when every name was hit at least once, and fails after
	// MaxIterations lives otherwise. For short runs on slow peers.
	OneHitAfter int

	// Home is a prepared home directory: whatever the store and backends
	// of StoreAndBackends need exists (for SQLiteLocal: `rekey init --dir
	// Home`). Run writes Home/rekey.yaml; Command must make the binary
	// read it (e.g. REKEY_HOME=Home).
	Home string
	// Dir is a scratch directory for the files the writers seal.
	Dir string
	// StoreAndBackends is a text/template (data: TemplateData) of the
	// store: and backends: sections of rekey.yaml. The harness adds the
	// rest (worker, http, log).
	StoreAndBackends string
	// DSN is given to the template as TemplateData.DSN (PostgresLocal
	// needs it; SQLiteLocal ignores it).
	DSN string
	// Vars is given to the template as TemplateData.Vars (SQLiteAWSKMS,
	// SQLitePKCS11 and SQLiteVault say which they need). Never put a
	// credential here: name a file that holds it.
	Vars map[string]string
	// Replicas, when above 1, runs that many `rekey run` processes (each
	// its own owner, the same failpoints) instead of one in
	// every third life, chosen from the seed; they must share the store
	// (e.g. PostgresLocal). 0 or 1: always one worker.
	Replicas int
	// Backend is the backend (a name of StoreAndBackends) the keys are
	// created on.
	Backend string
	// Command returns an unstarted rekey subprocess with args and the
	// extra environment (NAME=value) on top of one that selects Home. It
	// is called from several goroutines.
	Command func(env []string, args ...string) *exec.Cmd
	// Logf receives progress lines (nil: none).
	Logf func(format string, args ...any)

	// BatchSize is worker.batch_size (default 20: a rotation of the
	// initial DEKs takes about ten batches, so the per-batch failpoints
	// have hits to choose from).
	BatchSize int
	// InitialDEKs is the number of DEKs each key starts with (default 200).
	InitialDEKs int
	// MaxDEKs bounds the DEKs the writers create in all; beyond it they
	// only read (default 2000), so that a long run does not slow down as
	// it goes.
	MaxDEKs int
	// FilesPerCheck bounds the files decrypted by each check (a random
	// sample; default 100); the final check opens every file.
	FilesPerCheck int
}

func (c *Config) defaults() error {
	if c.MinHits <= 0 {
		c.MinHits = 5
	}
	if c.MaxIterations <= 0 {
		c.MaxIterations = 400
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 20
	}
	if c.InitialDEKs <= 0 {
		c.InitialDEKs = 200
	}
	if c.MaxDEKs <= 0 {
		c.MaxDEKs = 2000
	}
	if c.FilesPerCheck <= 0 {
		c.FilesPerCheck = 100
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	switch {
	case c.Home == "":
		return errors.New("torture: Config.Home is empty: give a prepared home directory")
	case c.Dir == "":
		return errors.New("torture: Config.Dir is empty: give a scratch directory")
	case c.StoreAndBackends == "":
		return errors.New("torture: Config.StoreAndBackends is empty: give the store and backends template (e.g. torture.SQLiteLocal)")
	case c.Backend == "":
		return errors.New("torture: Config.Backend is empty: name the backend the keys live on (e.g. local)")
	case c.Command == nil:
		return errors.New("torture: Config.Command is nil: give a function that makes a rekey subprocess")
	}
	return nil
}

// keySpec is one root key of the torture and its policy: short real-time
// periods, so that the worker always has a rotation to do or resume.
type keySpec struct {
	name string
	args []string
}

// tortureKeys: k-fast rotates about every second and retires at once
// (grace 0: retire.after_backend_disable every rotation), k-grace keeps
// its old version pending for a second (what the operator may retire
// early), k-manual never comes due (only the operator rotates it).
var tortureKeys = []keySpec{
	{"k-fast", []string{"--period", "3s", "--rotate-within", "2s", "--notify-within", "2s", "--grace", "0s"}},
	{"k-grace", []string{"--period", "4s", "--rotate-within", "2500ms", "--notify-within", "2500ms", "--grace", "1s"}},
	{"k-manual", []string{"--period", "90d", "--rotate-within", "7d", "--grace", "0s"}},
}

// Hits counts what one failpoint name did over a run.
type Hits struct {
	Armed   int // lives it was armed in
	Crashed int // workers that ended with exit 137 at it (several replicas of a life may)
	Errored int // lives whose log shows its injected error
}

// Total is the number of hits: crashes and injected errors.
func (h Hits) Total() int { return h.Crashed + h.Errored }

// Report is what a run did.
type Report struct {
	Seed     int64
	Lives    int
	Duration time.Duration
	Hits     map[string]*Hits // by failpoint name
	Killed   int              // lives ended by kill -9 (of at least one worker)
	// Replicated is the number of lives run with Config.Replicas workers;
	// SharedWork of them had more than one replica log rotation work (a
	// claim, a resumed rotation, a re-wrap pass), LeaseSkips had a replica
	// log that it skipped a key another worker held.
	Replicated, SharedWork, LeaseSkips int
	Rotations                          int            // rotations done at the end
	DEKs                               int            // DEKs in the store at the end
	Files                              int            // files sealed
	Ops                                map[string]int // writer and operator operations by outcome
	Checks                             int            // invariant checks passed
	// Samples holds one message of each operator outcome other than ok.
	Samples map[string]string
}

// String is a multi-line summary.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d lives in %v (%d killed -9), %d checks, %d rotations done, %d DEKs, %d files\n",
		r.Seed, r.Lives, r.Duration.Round(time.Millisecond), r.Killed, r.Checks, r.Rotations, r.DEKs, r.Files)
	if r.Replicated > 0 {
		fmt.Fprintf(&b, "  %d lives with several replicas: %d with rotation work in more than one, %d with a key skipped for another's lease\n",
			r.Replicated, r.SharedWork, r.LeaseSkips)
	}
	for _, n := range failpoint.Names() {
		h := r.Hits[n]
		fmt.Fprintf(&b, "  %-32s armed %4d, hit %4d (crash %d, error %d)\n", n, h.Armed, h.Total(), h.Crashed, h.Errored)
	}
	fmt.Fprintf(&b, "  ops:")
	for _, k := range slices.Sorted(maps.Keys(r.Ops)) {
		fmt.Fprintf(&b, " %s=%d", k, r.Ops[k])
	}
	for _, k := range slices.Sorted(maps.Keys(r.Samples)) {
		fmt.Fprintf(&b, "\n  %s, e.g.: %s", k, r.Samples[k])
	}
	return b.String()
}

// MinHits is the smallest hit count (Hits.Total) over all failpoint names.
func (r *Report) MinHits() int {
	m := -1
	for _, n := range failpoint.Names() {
		if t := r.Hits[n].Total(); m < 0 || t < m {
			m = t
		}
	}
	return m
}

// Failure is the error Run returns when an invariant broke or a process
// misbehaved: it carries the seed that replays the run.
type Failure struct {
	Seed int64
	Life int // 0: setup, -1: the final drain
	Err  error
}

func (f *Failure) Error() string {
	return fmt.Sprintf("torture seed %d, life %d: %v", f.Seed, f.Life, f.Err)
}

func (f *Failure) Unwrap() error { return f.Err }

// harness is one run.
type harness struct {
	cfg   Config
	rep   *Report
	model *model
	check *checker
	app   *setup.System // the library writer's application
	opsMu sync.Mutex
}

// Run tortures the home described by cfg and returns what it did. The
// error is a *Failure (naming the seed) for a broken invariant, an
// unexpected exit, or failpoints not hit MinHits times.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	h := &harness{cfg: cfg, rep: &Report{Seed: cfg.Seed, Hits: map[string]*Hits{}, Ops: map[string]int{}, Samples: map[string]string{}}}
	for _, n := range failpoint.Names() {
		h.rep.Hits[n] = &Hits{}
	}
	start := time.Now()
	defer func() { h.rep.Duration = time.Since(start) }()
	fail := func(life int, err error) (*Report, error) {
		return h.rep, &Failure{Seed: cfg.Seed, Life: life, Err: err}
	}
	if err := h.writeConfig(); err != nil {
		return fail(0, err)
	}
	h.model = newModel()
	var err error
	if h.check, err = newChecker(ctx, cfg.Home, h.model); err != nil {
		return fail(0, err)
	}
	if err := h.createKeys(ctx); err != nil {
		return fail(0, err)
	}
	if err := h.openApp(ctx); err != nil {
		return fail(0, err)
	}
	defer h.app.Close()
	if err := h.checkAll(ctx, false); err != nil {
		return fail(0, fmt.Errorf("before the first life: %w", err))
	}
	for life := 1; ; life++ {
		if cfg.Iterations > 0 && life > cfg.Iterations {
			break
		}
		if cfg.Iterations == 0 {
			if h.rep.MinHits() >= cfg.MinHits {
				break
			}
			if cfg.OneHitAfter > 0 && life > cfg.OneHitAfter && h.rep.MinHits() >= 1 {
				cfg.Logf("torture: %d lives, every failpoint hit at least once (Config.OneHitAfter %d)", life-1, cfg.OneHitAfter)
				break
			}
			if life > cfg.MaxIterations {
				return fail(life, fmt.Errorf("after %d lives some failpoint was hit fewer than %d times:\n%s", cfg.MaxIterations, cfg.MinHits, h.rep))
			}
		}
		if err := ctx.Err(); err != nil {
			return fail(life, err)
		}
		if err := h.life(ctx, life); err != nil {
			return fail(life, err)
		}
		h.rep.Lives = life
		if life%25 == 0 {
			cfg.Logf("torture: %d lives, %v, min hits %d", life, time.Since(start).Round(time.Second), h.rep.MinHits())
		}
	}
	if err := h.drain(ctx); err != nil {
		return fail(-1, err)
	}
	return h.rep, nil
}

// writeConfig writes Home/rekey.yaml: the caller's store and backends,
// the harness's worker settings.
func (h *harness) writeConfig() error {
	t, err := template.New("store and backends").Option("missingkey=error").Parse(h.cfg.StoreAndBackends)
	if err != nil {
		return fmt.Errorf("StoreAndBackends template: %w", err)
	}
	var sb bytes.Buffer
	if err := t.Execute(&sb, TemplateData{Home: h.cfg.Home, DSN: h.cfg.DSN, Vars: h.cfg.Vars}); err != nil {
		return fmt.Errorf("StoreAndBackends template: %w", err)
	}
	y := "version: 1\n" + sb.String() + fmt.Sprintf(`worker:
  check_interval: 200ms
  batch_size: %d
  concurrency: 4
  lease_ttl: 6s
http:
  listen: 127.0.0.1:0
log:
  level: info
  format: json
`, h.cfg.BatchSize)
	if err := os.WriteFile(filepath.Join(h.cfg.Home, "rekey.yaml"), []byte(y), 0o600); err != nil {
		return err
	}
	if r := h.cli(nil, "config", "validate"); r.code != 0 {
		return fmt.Errorf("the generated rekey.yaml is refused: %v\n%s", r, y)
	}
	return nil
}

// createKeys creates the keys and their initial DEKs through the CLI.
func (h *harness) createKeys(ctx context.Context) error {
	for _, k := range tortureKeys {
		args := append([]string{"key", "create", k.name, "--backend", h.cfg.Backend}, k.args...)
		if r := h.cli(nil, args...); r.code != 0 {
			return fmt.Errorf("create key: %v", r)
		}
		if r := h.cli(nil, "dek", "create", "--key", k.name, "--count", fmt.Sprint(h.cfg.InitialDEKs), "--label", "initial"); r.code != 0 {
			return fmt.Errorf("create the initial DEKs: %v", r)
		}
		h.model.addUnknown(k.name, h.cfg.InitialDEKs)
	}
	return nil
}

// life runs the worker once (or Config.Replicas workers, in some lives)
// with this life's plan, the writers and the operator beside it, then
// checks the invariants.
func (h *harness) life(ctx context.Context, n int) error {
	p := planLife(h.cfg.Seed, n)
	for _, a := range p.armed {
		h.rep.Hits[a.name].Armed++
	}
	var env []string
	if spec := p.spec(); spec != "" {
		env = append(env, failpoint.EnvVar+"="+spec)
	}
	replicas := h.replicasOf(n)
	if replicas > 1 {
		h.rep.Replicated++
	}
	ws := make([]*workerProc, replicas)
	actx, stopActors := context.WithCancel(ctx)
	defer stopActors()
	for i := range ws {
		// No REKEY_WORKER_ID: each process is its own owner (hostname-pid),
		// so a dead one's leases are broken at once, as on one host.
		w := &workerProc{cmd: h.cfg.Command(env, "run", "--listen", ""), exited: make(chan struct{})}
		w.cmd.Stderr = &w.stderr
		if err := w.cmd.Start(); err != nil {
			for _, o := range ws[:i] {
				o.cmd.Process.Kill()
				<-o.exited
			}
			return fmt.Errorf("start rekey run: %w", err)
		}
		go func() { w.cmd.Wait(); close(w.exited) }()
		ws[i] = w
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	h.startActors(actx, &wg, errs, n)

	deadline := time.NewTimer(p.killAfter)
	defer deadline.Stop()
	for _, w := range ws {
		select {
		case <-w.exited:
		case <-deadline.C:
			// Every worker still running is killed now.
			for _, o := range ws {
				select {
				case <-o.exited:
				default:
					o.killed = o.cmd.Process.Signal(syscall.SIGKILL) == nil
				}
			}
			<-w.exited
		case <-ctx.Done():
			for _, o := range ws {
				o.cmd.Process.Kill()
				<-o.exited
			}
			stopActors()
			wg.Wait()
			return ctx.Err()
		}
	}
	stopActors()
	wg.Wait()
	close(errs)
	for err := range errs {
		return fmt.Errorf("while the worker ran (%s): %w", p, err)
	}

	what := "worker"
	killedAny := false
	var logs []string
	for i, w := range ws {
		if replicas > 1 {
			what = fmt.Sprintf("replica %d of %d", i+1, replicas)
		}
		log := w.stderr.String()
		logs = append(logs, fmt.Sprintf("%s log:\n%s", what, tail(log)))
		st, _ := w.cmd.ProcessState.Sys().(syscall.WaitStatus)
		switch {
		case st.Signaled() && st.Signal() == syscall.SIGKILL && w.killed:
			killedAny = true
		case w.cmd.ProcessState.ExitCode() == failpoint.CrashStatus:
			name := crashedAt(log)
			if name == "" || !p.arms(name, failpoint.Crash) {
				return fmt.Errorf("%s exited %d without a crash failpoint it was armed with (%s):\n%s", what, failpoint.CrashStatus, p, tail(log))
			}
			h.rep.Hits[name].Crashed++
		default:
			return fmt.Errorf("%s (%s) ended unexpectedly: %v:\n%s", what, p, w.cmd.ProcessState, tail(log))
		}
		for _, a := range p.armed {
			if a.action == failpoint.Error && injectedErrorLogged(log, a.name) {
				h.rep.Hits[a.name].Errored++
			}
		}
	}
	if killedAny {
		h.rep.Killed++
	}
	if replicas > 1 {
		working, skipped := 0, false
		for _, w := range ws {
			log := w.stderr.String()
			if logsMsg(log, "rotation claimed", "key already has an open rotation; resuming it", "re-wrap pass done") {
				working++
			}
			skipped = skipped || logsMsg(log, "key skipped: another worker holds its lease")
		}
		if working > 1 {
			h.rep.SharedWork++
		}
		if skipped {
			h.rep.LeaseSkips++
		}
	}
	if err := h.checkAll(ctx, false); err != nil {
		ends := make([]string, len(ws))
		for i, w := range ws {
			ends[i] = h.describeEnd(w.cmd, w.killed)
		}
		return fmt.Errorf("after %d worker(s) (%s) %s: %w\n%s", replicas, p, strings.Join(ends, "; "), err, strings.Join(logs, "\n"))
	}
	return nil
}

// workerProc is one `rekey run` of a life.
type workerProc struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	exited chan struct{} // closed when cmd.Wait returned
	killed bool          // the harness sent it SIGKILL
}

// replicasOf is the number of workers of life n: Config.Replicas in
// about one life of three (from the seed), else one.
func (h *harness) replicasOf(n int) int {
	if h.cfg.Replicas <= 1 {
		return 1
	}
	if rand.New(rand.NewPCG(uint64(h.cfg.Seed), uint64(n)<<16|0x2e9)).IntN(3) == 0 {
		return h.cfg.Replicas
	}
	return 1
}

func (h *harness) describeEnd(cmd *exec.Cmd, killed bool) string {
	if killed {
		return "was killed -9"
	}
	return "exited: " + cmd.ProcessState.String()
}

// crashedAt returns the failpoint name a crash announced in log, or "".
func crashedAt(log string) string {
	for line := range strings.SplitSeq(log, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "failpoint "); ok {
			if name, ok := strings.CutSuffix(rest, ": crash (exit 137)"); ok {
				return name
			}
		}
	}
	return ""
}

// logsMsg reports whether a JSON log has a line with one of the messages.
func logsMsg(log string, msgs ...string) bool {
	for _, m := range msgs {
		if strings.Contains(log, `"msg":"`+m+`"`) {
			return true
		}
	}
	return false
}

// injectedErrorLogged reports whether the worker logged, as an error of
// its own, the injected error of failpoint name (audit events it forwards
// to the log are not counted: they may be older than this life).
func injectedErrorLogged(log, name string) bool {
	want := "failpoint " + name + ": injected error"
	for line := range strings.SplitSeq(log, "\n") {
		if strings.Contains(line, want) && strings.Contains(line, `"level":"ERROR"`) && !strings.Contains(line, `"msg":"audit_event"`) {
			return true
		}
	}
	return false
}

// drain runs the worker once more without failpoints until no rotation is
// open (each `run --once` completes what it starts or resumes), then
// checks everything, every file included.
func (h *harness) drain(ctx context.Context) error {
	for i := 0; ; i++ {
		r := h.cli(nil, "run", "--once", "--listen", "")
		if r.code != 0 {
			return fmt.Errorf("final run --once: %v", r)
		}
		open, err := h.check.openRotations(ctx)
		if err != nil {
			return err
		}
		if open == 0 {
			break
		}
		if i >= 5 {
			return fmt.Errorf("%d rotation(s) still open after %d clean runs", open, i+1)
		}
	}
	if err := h.checkAll(ctx, true); err != nil {
		return fmt.Errorf("final check: %w", err)
	}
	h.rep.Rotations, h.rep.DEKs = h.check.doneRotations, h.check.deks
	h.rep.Files = h.model.fileCount()
	return nil
}

// checkAll runs every invariant check; all files when allFiles, else a
// seeded sample.
func (h *harness) checkAll(ctx context.Context, allFiles bool) error {
	files := h.model.filesToCheck(allFiles, h.cfg.FilesPerCheck, rand.New(rand.NewPCG(uint64(h.cfg.Seed), uint64(h.rep.Checks))))
	if err := h.check.run(ctx, files); err != nil {
		return err
	}
	if r := h.cli(nil, "audit", "verify"); r.code != 0 {
		return fmt.Errorf("rekey audit verify: %v", r)
	}
	h.rep.Checks++
	return nil
}

// countOutcome counts an operator command by its outcome and keeps one
// message of each outcome other than ok.
func (h *harness) countOutcome(what string, r result) {
	name := what + "-" + outcome(r)
	h.countOp(name)
	if r.code != 0 {
		h.opsMu.Lock()
		if _, ok := h.rep.Samples[name]; !ok {
			h.rep.Samples[name] = strings.TrimSpace(r.stderr)
		}
		h.opsMu.Unlock()
	}
}

func (h *harness) countOp(name string) {
	h.opsMu.Lock()
	h.rep.Ops[name]++
	h.opsMu.Unlock()
}

// result is what one CLI subprocess did.
type result struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("rekey %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, tail(r.stdout), tail(r.stderr))
}

// cli runs one rekey command to its end. A process that cannot start or
// dies of a signal has code -1.
func (h *harness) cli(env []string, args ...string) result {
	cmd := h.cfg.Command(env, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{args: args, code: -1, stdout: out.String(), stderr: errb.String()}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if err != nil && r.code == -1 {
		r.stderr += "\n" + err.Error()
	}
	return r
}

// tail keeps the end of a long text.
func tail(s string) string {
	const n = 6000
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

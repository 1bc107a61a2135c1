package rotation_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/faultkms"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/retry"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/store/retrystore"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

// The fault torture (issue 8, build item 3): the engine over SQLite and
// local keyrings, wrapped as setup wraps them (retrystore, kmsmw), with
// faultkms inside kmsmw so that the middleware's retries and rule 2 meet
// the faults a flaky cloud KMS would give. Replay a failure with the seed
// it prints:
//
//	go test -count=1 -run 'TestFaultTorture/NAME' -v ./rotation -args -fault.seed=N
//
// and run many seeds with -fault.long (or REKEY_LONG=1):
//
//	go test -count=1 -run TestFaultTorture -v ./rotation -args -fault.long
var (
	faultSeed = flag.Int64("fault.seed", 0, "base seed of TestFaultTorture (0: time-based; a failure prints the seed to replay)")
	faultLong = flag.Bool("fault.long", false, "TestFaultTorture runs many seeds, more keys and more DEKs (also REKEY_LONG=1)")
)

// tortureRetry is the middleware's (and rule 2's) retry policy in the
// torture: fast, and enough attempts that 20% faults are absorbed.
var tortureRetry = retry.Policy{Base: time.Millisecond, Max: 20 * time.Millisecond, Attempts: 8}

// flavour is one backend of the torture: a local keyring offering some of
// its optional capabilities, so that every re-wrap path of the engine
// (RewrapBatch, Rewrap, Unwrap+Wrap) runs under the faults.
type flavour struct {
	name string
	caps rekey.Capabilities
}

var flavours = []flavour{
	{"batch", rekey.Capabilities{Rewrap: true, BatchRewrap: true, RetireVersion: true, Ping: true, MAC: true}},
	{"single", rekey.Capabilities{Rewrap: true, RetireVersion: true, Ping: true}},
	{"plain", rekey.Capabilities{RetireVersion: true, Ping: true}},
}

// fullKMS is a backend with every optional interface: a local keyring, or
// another backend behind a fault-free faultkms (whose methods the backend
// lacks fail with rekey.ErrUnsupported).
type fullKMS interface {
	rekey.KMS
	rekey.Rewrapper
	rekey.BatchRewrapper
	rekey.VersionRetirer
	rekey.Pinger
	rekey.MACer
}

// capsKMS is a backend that reports fewer capabilities than it has;
// kmsmw and faultkms honour what it reports.
type capsKMS struct {
	fullKMS
	caps rekey.Capabilities
}

// backendSet is what the keys of a torture run live on: its flavours
// (keys are made on each), how a flavour's backend is opened, and which
// flavour MACs the audit checkpoints. The fault torture of
// fault_backends_test.go runs the same scenarios on awskms, pkcs11 and
// vault this way.
type backendSet struct {
	name     string
	flavours []flavour
	// open returns flavour f's backend without faults or middleware (its
	// io.Closer, if any, is closed with the run), or fails the test.
	open func(e *tortureEnv, f flavour) fullKMS
	// mac is the flavour whose backend MACs the audit checkpoints; ""
	// adds a local keyring (auditFlavour) for that, with the same faults,
	// that holds no key of the run.
	mac string
	// uniqueNames makes key names unique per run (the backend outlives
	// the run and is shared: a PKCS#11 token).
	uniqueNames bool
}

// localBackends is the default set: local keyrings, one per flavour.
var localBackends = &backendSet{name: "local", flavours: flavours, open: openLocal, mac: "batch"}

// auditFlavour is the local keyring that MACs the audit checkpoints of a
// set whose backends cannot.
var auditFlavour = flavour{"audit", rekey.Capabilities{MAC: true, Ping: true}}

// openLocal opens a local keyring of its own for flavour f.
func openLocal(e *tortureEnv, f flavour) fullKMS {
	e.t.Helper()
	c, err := localkms.New(e.ctx, localkms.Config{Keyring: filepath.Join(e.dir, f.name+".keyring"), MasterKeyFile: e.master, Create: true, Now: e.clock.Now})
	if err != nil {
		e.t.Fatalf("open keyring %s: %v", f.name, err)
	}
	return c
}

func (c capsKMS) Capabilities() rekey.Capabilities { return c.caps }

// tortureScenario is one fault configuration (its Seed is set per run).
// op, when set, is the op whose lost replies the scenario is about: a run
// in which none was injected proved nothing and is repeated with the next
// seed.
type tortureScenario struct {
	name        string
	faults      faultkms.Config
	op          string
	concurrency int
	batchSize   int         // 0: 64
	rangeSize   int         // 0: the engine's default (no split at this size)
	backends    *backendSet // nil: localBackends
}

func tortureScenarios() []tortureScenario {
	s := []tortureScenario{
		{name: "errors_20pct", faults: faultkms.Config{ErrorRate: 0.2}, concurrency: 1},
		// Enough that the middleware's 8 attempts are sometimes spent: keys
		// then fail a cycle and resume from their checkpoint in the next.
		{name: "errors_40pct", faults: faultkms.Config{ErrorRate: 0.4}, concurrency: 2},
		// The re-wrap split into ranges (issue 9), one worker taking them
		// in turn, under faults and lost replies of every op.
		{name: "shared_ranges", faults: faultkms.Config{ErrorRate: 0.2, LostReplyRate: 0.1}, concurrency: 2, rangeSize: 40},
	}
	for _, op := range kmsmw.Ops() {
		if op == kmsmw.OpFindKey || op == kmsmw.OpDeleteKey {
			continue // only a move calls them: its recovery, the old backend's clean-up (move_test.go)
		}
		s = append(s, tortureScenario{
			name:        "lost_reply/" + op,
			faults:      faultkms.Config{LostReplyRate: lostReplyRate(op), Ops: []string{op}},
			op:          op,
			concurrency: 1,
		})
	}
	s = append(s, tortureScenario{
		name:        "errors_lost_replies_latency_throttling",
		faults:      faultkms.Config{ErrorRate: 0.2, LostReplyRate: 0.2, Latency: time.Millisecond, ThrottleAbove: 500},
		concurrency: 4, // more realistic; the call order (so the replay) then varies
	})
	return s
}

// lostReplyRate is the share of op's calls whose reply a lost_reply
// scenario loses: 0.2, or 0.5 for the ops a run calls only a few times
// (2 to 8: creating, rotating, retiring, destroying a key version, its
// current version, a batch re-wrap, the audit MAC, ping), so that most
// runs inject one. At 0.2 and 4 calls a run injects none 41% of the time.
func lostReplyRate(op string) float64 {
	switch op {
	case kmsmw.OpCreateKey, kmsmw.OpCurrentVersion, kmsmw.OpRotateKey, kmsmw.OpRewrapBatch,
		kmsmw.OpRetireVersion, kmsmw.OpDestroyVersion, kmsmw.OpMAC, kmsmw.OpPing:
		return 0.5
	}
	return 0.2
}

// maxLostReplyTries bounds the runs of a lost_reply scenario that inject
// no lost reply (each is repeated with the next seed): at 0.5 and 2 calls
// a run injects none a quarter of the time, so 20 fail together with a
// probability of 1e-12.
const maxLostReplyTries = 20

// maxCreateAttempts bounds tortureEnv.createKey's attempts at one key
// (20 failed one run in a thousand or so under lost_reply/create_key).
const maxCreateAttempts = 60

// tortureSize is how much one run does.
type tortureSize struct {
	keysPerFlavour int
	deks           int // per key, made with Keyring.NewDEK
	sealed         int // per key, made with Keyring.Seal
	runs           int // seeds per scenario
}

func tortureSizeFor() tortureSize {
	if *faultLong || os.Getenv("REKEY_LONG") == "1" {
		return tortureSize{keysPerFlavour: 3, deks: 300, sealed: 10, runs: 10}
	}
	return tortureSize{keysPerFlavour: 2, deks: 200, sealed: 5, runs: 1}
}

func TestFaultTorture(t *testing.T) {
	t.Parallel()
	runFaultScenarios(t, tortureScenarios(), tortureSizeFor())
}

// runFaultScenarios runs each scenario as a parallel subtest, size.runs
// seeds each (one: -fault.seed's).
func runFaultScenarios(t *testing.T, scenarios []tortureScenario, size tortureSize) {
	base := time.Now().UnixNano() % 1_000_000_007
	if *faultSeed != 0 {
		size.runs = 1 // a replay: every scenario runs that very seed
	}
	for i, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			for run := range size.runs {
				seed := *faultSeed
				if seed == 0 {
					seed = base + int64(i)*1000 + int64(run)*100_000
				}
				// A scenario about one op's lost replies is repeated with
				// the next seed while none was injected.
				for try := 0; ; try++ {
					lost := runFaultTorture(t, sc, seed+int64(try), size)
					if t.Failed() || sc.op == "" || lost > 0 {
						break
					}
					if try == maxLostReplyTries-1 {
						t.Fatalf("no lost reply of %s was injected in %d runs (seeds %d to %d): the scenario proved nothing", sc.op, try+1, seed, seed+int64(try))
					}
				}
				if t.Failed() {
					return
				}
			}
		})
	}
}

// A backend that throttles below the re-wrap's demand fails one call of a
// batch once the middleware's retries are spent. What the batch re-wrapped
// before that call is kept, so every cycle makes progress and the rotation
// converges; it used to redo the same batch every cycle, forever (found by
// TestFaultTorture/errors_lost_replies_latency_throttling). Here the
// throttle's clock stands still during a cycle: each cycle gets 100 calls.
func TestFaultThrottledBatchKeepsProgress(t *testing.T) {
	t.Parallel()
	throttle := newClock()
	sc := tortureScenario{name: "throttled", concurrency: 2, batchSize: 1000, faults: faultkms.Config{
		ThrottleAbove: 100, Now: throttle.Now, Ops: []string{kmsmw.OpUnwrap, kmsmw.OpRewrap},
	}}
	e := newTortureEnv(t, sc, 1)
	defer e.close()
	p := rekey.Policy{RotationPeriod: 30 * rekey.Day, RotateWithin: 7 * rekey.Day, NotifyWithin: 14 * rekey.Day, Grace: rekey.Day}
	e.createKey("single", "single", p) // one Rewrap per DEK
	e.createKey("plain", "plain", p)   // one Unwrap (and Wrap) per DEK
	for _, k := range e.keys {
		for range 250 {
			e.newDEK(k)
		}
	}
	e.clock.Advance(24 * rekey.Day)
	var progress []int64
	for cycle := 1; !e.stageDone()[0]; cycle++ {
		if cycle > 8 {
			t.Fatalf("not rotated after %d cycles of 100 calls each for 500 DEKs; DEKs done after each cycle: %v; last cycle: %+v",
				cycle-1, progress, e.lastRep)
		}
		e.lastRep = e.eng.RunCycle(e.ctx)
		throttle.Advance(time.Second) // 100 more calls for the next cycle
		e.checkForward()
		var done int64
		for _, k := range e.keys {
			c, err := e.store.CountDEKs(e.ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			done += c[2]
		}
		progress = append(progress, done)
	}
	if st := e.opStats(kmsmw.OpUnwrap); st.Throttled == 0 {
		t.Fatalf("nothing was throttled (%+v): the test proved nothing", st)
	}
	e.checkBackendVersions(true)
	for id, want := range e.prints {
		pt, err := e.clean.OpenDEK(e.ctx, id)
		if err != nil || sha256.Sum256(pt) != want {
			t.Fatalf("dek %s does not unwrap to its plaintext: %v", id, err)
		}
	}
	t.Logf("DEKs on the new version after each cycle: %v", progress)
}

// tortureEnv is one run's stack and what the test keeps outside it.
type tortureEnv struct {
	t      *testing.T
	ctx    context.Context
	seed   int64
	clock  *clock
	store  rekey.Store // retrystore over SQLite
	dir    string
	master string                   // the local keyrings' master key file
	set    *backendSet              // what the keys live on
	faults map[string]*faultkms.KMS // by backend name
	inner  map[string]rekey.KMS     // by backend name: no faults, no middleware
	closer []io.Closer              // backends to close with the run
	kr     *rekey.Keyring           // through the faults
	clean  *rekey.Keyring           // the same store and keyrings without faults
	eng    *rotation.Engine
	keeper *audit.Keeper
	macer  rekey.MACer // the keeper's, without faults

	runID      string              // suffix of key names (backendSet.uniqueNames)
	keys       []string            // created keys
	backend    map[string]string   // key -> backend name
	prints     map[string][32]byte // dek id -> SHA-256 of its plaintext
	sealed     []sealedMsg         //
	vstate     map[string]int      // "key/version" -> highest state rank seen
	rstate     map[string]int      // rotation id -> highest state rank seen
	lastRep    rotation.CycleReport
	failedKeys int // key failures over all cycles (faults that outlasted the retries)
}

type sealedMsg struct {
	key            string
	plain, aad, ct []byte
}

// runFaultTorture runs one seed of sc and returns how many lost replies of
// sc.op were injected (0 when sc.op is empty).
func runFaultTorture(t *testing.T, sc tortureScenario, seed int64, size tortureSize) int64 {
	t.Helper()
	defer func() {
		if t.Failed() {
			top, _, _ := strings.Cut(t.Name(), "/")
			t.Logf("fault torture %s failed: replay with -fault.seed=%d (go test -count=1 -run '^%s$/^%s$' ./rotation -args -fault.seed=%d)",
				sc.name, seed, top, sc.name, seed)
		}
	}()
	e := newTortureEnv(t, sc, seed)
	defer e.close()

	p := rekey.Policy{RotationPeriod: 30 * rekey.Day, RotateWithin: 7 * rekey.Day, NotifyWithin: 14 * rekey.Day,
		Grace: rekey.Day, DestroyAfter: rekey.Day}
	for _, f := range e.set.flavours {
		for i := range size.keysPerFlavour {
			e.createKey(e.keyName(f, i), f.name, p)
		}
	}
	for _, k := range e.keys {
		for range size.deks {
			e.newDEK(k)
		}
		for range size.sealed {
			e.seal(k)
		}
	}
	if t.Failed() {
		return 0
	}

	// Every key is due; cycles run until each is rotated once, its old
	// version retired and destroyed. The clock moves only between stages,
	// never far enough for a second rotation.
	e.clock.Advance(24 * rekey.Day)
	const maxCycles = 100 // the throttled runs of -fault.long take up to ~25
	stage := 0            // 0: rotating, 1: waiting for retirement, 2: waiting for destruction
	for cycle := 1; ; cycle++ {
		if cycle > maxCycles {
			t.Fatalf("seed %d: not converged after %d cycles (stage %d); last cycle: %+v", seed, maxCycles, stage, e.lastRep)
		}
		if stage == 0 && cycle <= 3 {
			// Applications keep writing while the rotation runs.
			for _, k := range e.keys {
				e.newDEK(k)
				e.seal(k)
			}
		}
		e.lastRep = e.eng.RunCycle(e.ctx)
		e.failedKeys += e.lastRep.Failed
		if e.lastRep.Error != "" {
			t.Fatalf("seed %d: cycle %d could not list keys: %s", seed, cycle, e.lastRep.Error)
		}
		for _, kr := range e.lastRep.Keys {
			if kr.Err != nil && !rekey.IsTransient(kr.Err) {
				t.Fatalf("seed %d: cycle %d: key %s failed with an error that is not a fault: %v", seed, cycle, kr.Key, kr.Err)
			}
		}
		e.checkpoint()
		e.probe()
		e.checkForward()
		e.checkBackendVersions(false)
		if t.Failed() {
			return 0
		}
		switch done := e.stageDone(); {
		case stage == 0 && done[0]:
			stage = 1
			e.clock.Advance(rekey.Day + time.Minute) // past the grace
		case stage == 1 && done[1]:
			stage = 2
			e.clock.Advance(rekey.Day + time.Minute) // past destroy_after
		case stage == 2 && done[2]:
			e.checkAll()
			t.Logf("seed %d: converged in %d cycles (%d failed keys on the way); faults: %s", seed, cycle, e.failedKeys, e.faultSummary())
			if sc.op == "" {
				return 0
			}
			return e.opStats(sc.op).LostReplies
		}
	}
}

func newTortureEnv(t *testing.T, sc tortureScenario, seed int64) *tortureEnv {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	clk := newClock()
	st, err := sqlitestore.Open(ctx, sqlitestore.Config{Path: filepath.Join(dir, "rekey.db"), Create: true, Now: clk.Now})
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	e := &tortureEnv{
		t: t, ctx: ctx, seed: seed, clock: clk,
		store:   retrystore.Wrap(st, tortureRetry),
		dir:     dir,
		master:  filepath.Join(dir, "master.key"),
		set:     cmp.Or(sc.backends, localBackends),
		faults:  map[string]*faultkms.KMS{},
		inner:   map[string]rekey.KMS{},
		backend: map[string]string{},
		prints:  map[string][32]byte{},
		vstate:  map[string]int{},
		rstate:  map[string]int{},
	}
	if err := localkms.CreateMasterKeyFile(e.master); err != nil {
		t.Fatal(err)
	}
	backends, clean := map[string]rekey.KMS{}, map[string]rekey.KMS{}
	flavs, mac := e.set.flavours, e.set.mac
	if mac == "" {
		flavs, mac = append(slices.Clone(flavs), auditFlavour), auditFlavour.name
	}
	for i, f := range flavs {
		var c fullKMS
		if f == auditFlavour && e.set.mac == "" {
			c = openLocal(e, f)
		} else {
			c = e.set.open(e, f)
		}
		if cl, ok := c.(io.Closer); ok {
			e.closer = append(e.closer, cl)
		}
		e.inner[f.name] = c
		in := capsKMS{fullKMS: c, caps: f.caps}
		fc := sc.faults
		fc.Seed = seed*31 + int64(i)
		e.faults[f.name] = faultkms.Wrap(in, fc)
		backends[f.name] = kmsmw.Wrap(e.faults[f.name], kmsmw.Options{Name: f.name, Retry: tortureRetry})
		clean[f.name] = kmsmw.Wrap(in, kmsmw.Options{Name: f.name, Retry: tortureRetry})
	}
	e.kr = rekey.NewKeyring(e.store, backends, rekey.WithClock(clk.Now), rekey.WithActor("torture"))
	e.clean = rekey.NewKeyring(e.store, clean, rekey.WithClock(clk.Now), rekey.WithActor("torture-check"))
	e.eng, err = rotation.New(rotation.Config{
		Store: e.store, Backends: backends, Now: clk.Now, Owner: "torture-worker",
		Logger:    slog.New(slog.DiscardHandler),
		BatchSize: cmp.Or(sc.batchSize, 64), Concurrency: sc.concurrency, RotateRetry: tortureRetry,
		RangeSize: sc.rangeSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The keeper MACs through the faults, as the worker's does.
	e.keeper = &audit.Keeper{Store: e.store, MACer: backends[mac].(rekey.MACer), KeyID: mac + "/" + audit.Purpose,
		AnchorPath: filepath.Join(dir, "audit.anchor"), StoreID: "torture", Now: clk.Now}
	e.macer = clean[mac].(rekey.MACer)
	return e
}

// keyName is the name of the i-th key on flavour f: unique per run when
// the set says so (a random suffix; names stay within 63 characters).
func (e *tortureEnv) keyName(f flavour, i int) string {
	name := fmt.Sprintf("%s-%d", f.name, i)
	if e.set.uniqueNames {
		if e.runID == "" {
			e.runID = strings.ToLower(rekey.NewID())
		}
		name += "-" + e.runID
	}
	return name
}

func (e *tortureEnv) close() {
	if e.t.Failed() {
		e.t.Logf("seed %d: %s", e.seed, e.faultSummary())
	}
	for _, f := range e.faults {
		f.Close()
	}
	for _, c := range e.closer {
		c.Close()
	}
	e.store.Close()
}

// faultSummary says what was injected, by op: calls/errors/lost/throttled.
func (e *tortureEnv) faultSummary() string {
	var b strings.Builder
	for _, op := range kmsmw.Ops() {
		if s := e.opStats(op); s.Calls > 0 {
			fmt.Fprintf(&b, " %s=%d/%d/%d/%d", op, s.Calls, s.Errors, s.LostReplies, s.Throttled)
		}
	}
	return "calls/errors/lost/throttled" + b.String()
}

// opStats sums the faults of op over the backends.
func (e *tortureEnv) opStats(op string) faultkms.OpStats {
	var sum faultkms.OpStats
	for _, f := range e.faults {
		s := f.Stats()[op]
		sum.Calls += s.Calls
		sum.Errors += s.Errors
		sum.LostReplies += s.LostReplies
		sum.Throttled += s.Throttled
	}
	return sum
}

// createKey creates a key as an application would under a flaky backend:
// a failed create is tried again, and a name the backend already holds
// from a create whose reply was lost (the Keyring cannot adopt it: it
// never learnt the reference) is given up for the next name, as the error
// says. Under lost_reply/create_key (half the replies lost) a name costs
// two attempts when its create's reply is lost, so maxCreateAttempts
// fails a key with a probability of about 0.5^30.
func (e *tortureEnv) createKey(name, backend string, p rekey.Policy) {
	e.t.Helper()
	try := name
	for attempt := 1; ; attempt++ {
		_, err := e.kr.CreateKey(e.ctx, try, backend, p)
		switch {
		case err == nil:
			e.keys = append(e.keys, try)
			e.backend[try] = backend
			return
		case attempt >= maxCreateAttempts:
			e.t.Fatalf("seed %d: create key %s: still failing after %d attempts: %v", e.seed, name, attempt, err)
			return
		case errors.Is(err, rekey.ErrKeyExists) && strings.Contains(err.Error(), "backend"):
			try = fmt.Sprintf("%s-r%d", name, attempt)
		case rekey.IsTransient(err):
		default:
			e.t.Fatalf("seed %d: create key %s: %v", e.seed, try, err)
			return
		}
	}
}

// newDEK makes a DEK with Keyring.NewDEK and keeps its fingerprint. A
// transient failure stores nothing (only the backend is faulted) and is
// tried again.
func (e *tortureEnv) newDEK(key string) {
	e.t.Helper()
	for attempt := 1; ; attempt++ {
		id, pt, err := e.kr.NewDEK(e.ctx, key, "torture")
		if err == nil {
			e.prints[id] = sha256.Sum256(pt)
			clear(pt)
			return
		}
		if !rekey.IsTransient(err) || attempt >= 10 {
			e.t.Fatalf("seed %d: new DEK of %s: %v", e.seed, key, err)
			return
		}
	}
}

// seal seals a random message with Keyring.Seal and keeps it.
func (e *tortureEnv) seal(key string) {
	e.t.Helper()
	m := sealedMsg{key: key, plain: make([]byte, 100+len(e.sealed)), aad: []byte("msg-" + key)}
	rand.Read(m.plain)
	for attempt := 1; ; attempt++ {
		ct, err := e.kr.Seal(e.ctx, key, m.plain, m.aad)
		if err == nil {
			m.ct = ct
			e.sealed = append(e.sealed, m)
			return
		}
		if !rekey.IsTransient(err) || attempt >= 10 {
			e.t.Fatalf("seed %d: seal under %s: %v", e.seed, key, err)
			return
		}
	}
}

// checkpoint checkpoints the audit trail as the worker does after a
// cycle. A MAC that failed through the faults is skipped (the next cycle's
// checkpoint covers the events); anything else is a failure.
func (e *tortureEnv) checkpoint() {
	e.t.Helper()
	if err := e.keeper.Checkpoint(e.ctx); err != nil && !rekey.IsTransient(err) {
		e.t.Errorf("seed %d: audit checkpoint: %v", e.seed, err)
	}
}

// probe pings every backend as /readyz does: only faults may fail it.
func (e *tortureEnv) probe() {
	e.t.Helper()
	for name, f := range e.faults {
		k := kmsmw.Wrap(f, kmsmw.Options{Name: name, Retry: tortureRetry})
		if err := k.Ping(e.ctx); err != nil && !rekey.IsTransient(err) {
			e.t.Errorf("seed %d: ping %s: %v", e.seed, name, err)
		}
	}
}

var (
	versionRank = map[rekey.VersionState]int{
		rekey.VersionCreated: 1, rekey.VersionActive: 2, rekey.VersionPendingRetirement: 3,
		rekey.VersionRetired: 4, rekey.VersionDestroyed: 5,
	}
	rotationRank = map[rekey.RotationState]int{
		rekey.RotationClaimed: 1, rekey.RotationVersionCreated: 2, rekey.RotationRewrapping: 3,
		rekey.RotationCommitted: 4, rekey.RotationDone: 5,
	}
)

// checkForward checks that no version or rotation state moved back since
// the last look (a compromised version never appears here).
func (e *tortureEnv) checkForward() {
	e.t.Helper()
	for _, k := range e.keys {
		vs, err := e.store.ListVersions(e.ctx, k)
		if err != nil {
			e.t.Fatalf("list versions of %s: %v", k, err)
		}
		for _, v := range vs {
			id := fmt.Sprintf("%s/v%d", k, v.Version)
			r, ok := versionRank[v.State]
			if !ok {
				e.t.Errorf("seed %d: %s is in state %s", e.seed, id, v.State)
				continue
			}
			if r < e.vstate[id] {
				e.t.Errorf("seed %d: %s moved back to %s", e.seed, id, v.State)
			}
			e.vstate[id] = max(e.vstate[id], r)
		}
		rs, err := e.store.ListRotations(e.ctx, rekey.RotationQuery{Key: k})
		if err != nil {
			e.t.Fatalf("list rotations of %s: %v", k, err)
		}
		for _, r := range rs {
			rank := rotationRank[r.State]
			if rank == 0 || rank < e.rstate[r.ID] {
				e.t.Errorf("seed %d: rotation %s of %s moved back to %s", e.seed, r.ID, k, r.State)
			}
			e.rstate[r.ID] = max(e.rstate[r.ID], rank)
		}
	}
}

// checkBackendVersions checks that no backend has more versions than one
// rotation makes (final: exactly 2, and the store agrees).
func (e *tortureEnv) checkBackendVersions(final bool) {
	e.t.Helper()
	for _, k := range e.keys {
		key, err := e.store.GetKey(e.ctx, k)
		if err != nil {
			e.t.Fatalf("get key %s: %v", k, err)
		}
		cur, err := e.inner[e.backend[k]].CurrentVersion(e.ctx, key.BackendRef)
		if err != nil {
			e.t.Fatalf("backend current version of %s: %v", k, err)
		}
		if cur > 2 || (final && (cur != 2 || key.ActiveVersion != 2)) {
			e.t.Errorf("seed %d: key %s: backend at version %d, store's active version %d; want one new version (2) in both: a lost reply made an extra version",
				e.seed, k, cur, key.ActiveVersion)
		}
	}
}

// stageDone says, for each stage, whether every key is past it: rotated
// (v2 active, no open rotation), v1 retired, v1 destroyed.
func (e *tortureEnv) stageDone() [3]bool {
	e.t.Helper()
	done := [3]bool{true, true, true}
	for _, k := range e.keys {
		key, err := e.store.GetKey(e.ctx, k)
		if err != nil {
			e.t.Fatalf("get key %s: %v", k, err)
		}
		_, err = e.store.OpenRotation(e.ctx, k)
		if key.ActiveVersion != 2 || !errors.Is(err, rekey.ErrRotationNotFound) {
			done[0] = false
		}
		r := e.vstate[k+"/v1"]
		if r < versionRank[rekey.VersionRetired] {
			done[1] = false
		}
		if r < versionRank[rekey.VersionDestroyed] {
			done[2] = false
		}
	}
	done[1] = done[1] && done[0]
	done[2] = done[2] && done[1]
	return done
}

// checkAll checks the invariants once every key converged.
func (e *tortureEnv) checkAll() {
	t := e.t
	t.Helper()
	e.checkBackendVersions(true)
	for _, k := range e.keys {
		rs, err := e.store.ListRotations(e.ctx, rekey.RotationQuery{Key: k})
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 1 || rs[0].State != rekey.RotationDone || rs[0].FromVersion != 1 || rs[0].ToVersion != 2 || rs[0].Failed != 0 {
			t.Errorf("seed %d: key %s: rotations %+v, want one done 1 → 2 with no failed DEK", e.seed, k, rs)
		}
		vs, err := e.store.ListVersions(e.ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		states := map[int]rekey.VersionState{}
		for _, v := range vs {
			states[v.Version] = v.State
		}
		if len(states) != 2 || states[1] != rekey.VersionDestroyed || states[2] != rekey.VersionActive {
			t.Errorf("seed %d: key %s: versions %v, want v1 destroyed and v2 active", e.seed, k, states)
		}
		counts, err := e.store.CountDEKs(e.ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if len(counts) != 1 || counts[2] == 0 {
			t.Errorf("seed %d: key %s: DEKs per version %v, want all on v2", e.seed, k, counts)
		}
	}

	// Every DEK unwraps (without faults) to the plaintext it had.
	total := 0
	for _, k := range e.keys {
		counts, _ := e.store.CountDEKs(e.ctx, k)
		for _, n := range counts {
			total += int(n)
		}
	}
	if want := len(e.prints) + len(e.sealed); total != want {
		t.Errorf("seed %d: the store holds %d DEKs, want %d (made with NewDEK and Seal)", e.seed, total, want)
	}
	for _, id := range slices.Sorted(maps.Keys(e.prints)) {
		pt, err := e.clean.OpenDEK(e.ctx, id)
		if err != nil {
			t.Fatalf("seed %d: dek %s does not unwrap: %v", e.seed, id, err)
		}
		if sha256.Sum256(pt) != e.prints[id] {
			t.Fatalf("seed %d: dek %s unwraps to another plaintext", e.seed, id)
		}
		clear(pt)
	}
	for i, m := range e.sealed {
		pt, err := e.clean.Open(e.ctx, m.ct, m.aad)
		if err != nil || !bytes.Equal(pt, m.plain) {
			t.Fatalf("seed %d: sealed message %d (key %s) does not open to its plaintext: %v", e.seed, i, m.key, err)
		}
	}

	// The audit chain verifies, checkpoints and all, with the MAC key.
	for range 10 {
		if err := e.keeper.Checkpoint(e.ctx); err == nil {
			break
		} else if !rekey.IsTransient(err) {
			t.Fatalf("seed %d: final audit checkpoint: %v", e.seed, err)
		}
	}
	res, err := audit.Verify(e.ctx, e.store, e.macer, audit.Purpose)
	if err != nil || !res.Valid || res.Checkpoints == 0 || res.UncheckedTail != nil {
		t.Errorf("seed %d: audit.Verify = %+v, %v; want a valid chain, checkpointed to its head", e.seed, res, err)
	}
	for _, k := range e.keys {
		evs, err := e.store.ListAudit(e.ctx, rekey.AuditQuery{Key: k, Limit: 100000})
		if err != nil {
			t.Fatal(err)
		}
		n := map[rekey.AuditType]int{}
		for _, ev := range evs {
			n[ev.Type]++
		}
		if n[rekey.AuditVersionCreated]+n[rekey.AuditVersionAdopted] != 1 || n[rekey.AuditRotationCompleted] != 1 ||
			n[rekey.AuditVersionRetired] != 1 || n[rekey.AuditVersionDestroyed] != 1 {
			t.Errorf("seed %d: key %s: audit events by type %v, want one version created or adopted, one completion, one retirement, one destruction", e.seed, k, n)
		}
	}
}

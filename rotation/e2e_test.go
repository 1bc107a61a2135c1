package rotation_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

// openSQLite returns an env on the SQLite store and local keyring in dir
// (created on first use), with the clock at now.
func openSQLite(t testing.TB, dir string, now time.Time) *env {
	t.Helper()
	ctx := context.Background()
	c := &clock{now: now}
	st, err := sqlitestore.Open(ctx, sqlitestore.Config{Create: true, Path: filepath.Join(dir, "rekey.db"), Now: c.Now})
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	mk := filepath.Join(dir, "master.key")
	if _, err := os.Stat(mk); errors.Is(err, os.ErrNotExist) {
		if err := localkms.CreateMasterKeyFile(mk); err != nil {
			t.Fatal(err)
		}
	}
	k, err := localkms.New(ctx, localkms.Config{Keyring: filepath.Join(dir, "keyring"), MasterKeyFile: mk, Create: true, Now: c.Now})
	if err != nil {
		st.Close()
		t.Fatalf("open local keyring: %v", err)
	}
	e := &env{ctx: ctx, store: st, kms: k, backend: "local", clock: c, logs: &syncBuffer{}, plain: map[string][]byte{}}
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	if c, ok := e.kms.(io.Closer); ok {
		c.Close()
	}
	e.store.Close()
}

// End to end on the embedded default (SQLite + local keyring): a scheduled
// rotation, the grace, the retirement, and an intact audit chain.
func TestEndToEndSQLiteLocalKMS(t *testing.T) {
	t.Parallel()
	e := openSQLite(t, t.TempDir(), newClock().Now())
	e.createKey(t, "payments", testPolicy())
	long := testPolicy()
	long.RotationPeriod = 365 * rekey.Day
	e.createKey(t, "orders", long)
	e.addDEKs(t, "payments", 1234)
	e.addDEKs(t, "orders", 10)
	e.makeDue(t, "payments")
	eng := e.engine(t, func(c *rotation.Config) { c.BatchSize = 200 })
	rep := eng.RunCycle(e.ctx)
	if kr := keyReport(t, rep, "payments"); !rep.OK() || kr.Outcome != rotation.OutcomeRotated || kr.Rewrapped != 1234 {
		t.Fatalf("cycle = %+v", rep)
	}
	if kr := keyReport(t, rep, "orders"); kr.Outcome != rotation.OutcomeIdle {
		t.Fatalf("orders = %+v", kr)
	}
	if c := e.counts(t, "payments"); c[2] != 1234 || len(c) != 1 {
		t.Fatalf("counts = %v", c)
	}
	e.checkDEKs(t, "payments")
	e.clock.Advance(3 * rekey.Day)
	rep = eng.RunCycle(e.ctx)
	if kr := keyReport(t, rep, "payments"); len(kr.Retired) != 1 {
		t.Fatalf("cycle after grace = %+v", kr)
	}
	want := []rekey.AuditType{
		rekey.AuditKeyCreated, rekey.AuditRotationStarted, rekey.AuditVersionCreated, rekey.AuditRewrapProgress,
		rekey.AuditRotationCommitted, rekey.AuditVersionPendingRetirement, rekey.AuditRotationCompleted, rekey.AuditVersionRetired,
	}
	if got := e.auditTypes(t, "payments"); !equalTypes(got, want) {
		t.Fatalf("audit story = %v", got)
	}
	all, err := e.store.ListAudit(e.ctx, rekey.AuditQuery{Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	prev := rekey.GenesisHash
	for _, ev := range all {
		if ev.PrevHash != prev || ev.ComputeHash() != ev.Hash {
			t.Fatalf("audit chain broken at seq %d", ev.Seq)
		}
		prev = ev.Hash
	}
}

// Crash (exit 137, a real process) at every failpoint on the embedded
// default, then a new process resumes: exactly one new backend version,
// every DEK on it and unwrapping, the old version retired.
func TestEndToEndCrashAtEveryFailpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process per failpoint")
	}
	t.Parallel()
	for _, name := range failpoint.Names() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			e := openSQLite(t, dir, newClock().Now())
			p := testPolicy()
			p.Grace = 0
			e.createKey(t, "k", p)
			e.addDEKs(t, "k", 35)
			e.makeDue(t, "k")
			now := e.clock.Now()
			e.close()

			spec := name + "=crash"
			if strings.HasPrefix(name, "rewrap.") {
				spec += "@2" // mid re-wrap: the second batch
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestEndToEndChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "REKEY_E2E_DIR="+dir, "REKEY_E2E_NOW="+strconv.FormatInt(now.UnixMicro(), 10),
				failpoint.EnvVar+"="+spec)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != failpoint.CrashStatus || !strings.Contains(string(out), "failpoint "+name+": crash") {
				t.Fatalf("child: %v\n%s", err, out)
			}

			// A new process, after the crashed one's lease expired.
			e2 := openSQLite(t, dir, now.Add(time.Hour))
			e2.plain = e.plain
			if rep := e2.engine(t).RunCycle(e2.ctx); !rep.OK() {
				t.Fatalf("cycle after crash = %+v", rep)
			}
			if v := e2.backendVersion(t, "k"); v != 2 {
				t.Fatalf("backend version = %d, want exactly one new version", v)
			}
			vs := e2.versions(t, "k")
			if len(vs) != 2 || vs[2].State != rekey.VersionActive || vs[1].State != rekey.VersionRetired {
				t.Fatalf("versions = %+v", vs)
			}
			if c := e2.counts(t, "k"); c[2] != 35 {
				t.Fatalf("counts = %v", c)
			}
			if rs := e2.rotations(t, "k"); len(rs) != 1 || rs[0].State != rekey.RotationDone {
				t.Fatalf("rotations = %+v", rs)
			}
			e2.checkDEKs(t, "k")
		})
	}
}

// The acceptance scenario: a worker with the default owner id crashes
// (exit 137) holding its lease, and the next process, started at once —
// the clock has not moved, the lease is far from expiry — takes the lease
// of the dead worker over and finishes the rotation.
func TestEndToEndCrashThenImmediateResume(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process per failpoint")
	}
	host := hostname(t)
	t.Parallel()
	for _, spec := range []string{failpoint.RotationAfterClaim + "=crash", failpoint.RewrapAfterBatchCommit + "=crash@2"} {
		t.Run(spec, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			e := openSQLite(t, dir, newClock().Now())
			p := testPolicy()
			p.Grace = 0
			e.createKey(t, "k", p)
			e.addDEKs(t, "k", 35)
			e.makeDue(t, "k")
			now := e.clock.Now()
			e.close()

			cmd := exec.Command(os.Args[0], "-test.run=^TestEndToEndChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "REKEY_E2E_DIR="+dir, "REKEY_E2E_NOW="+strconv.FormatInt(now.UnixMicro(), 10),
				"REKEY_E2E_DEFAULT_OWNER=1", failpoint.EnvVar+"="+spec)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != failpoint.CrashStatus {
				t.Fatalf("child: %v\n%s", err, out)
			}

			e2 := openSQLite(t, dir, now.Add(time.Second))
			e2.plain = e.plain
			held, err := e2.store.GetLease(e2.ctx, "k")
			if err != nil || held.Owner != fmt.Sprintf("%s-%d", host, cmd.ProcessState.Pid()) || !held.ExpiresAt.After(e2.clock.Now()) {
				t.Fatalf("lease left by the crash = %+v, %v; want the child's, unexpired", held, err)
			}
			rep := e2.engine(t, defaultOwner).RunCycle(e2.ctx)
			if kr := keyReport(t, rep, "k"); !rep.OK() || kr.Outcome != rotation.OutcomeRotated {
				t.Fatalf("cycle right after the crash = %+v\n%s", rep, e2.logs.String())
			}
			if !strings.Contains(e2.logs.String(), "taking over the lease of a dead worker") {
				t.Fatalf("no takeover logged:\n%s", e2.logs.String())
			}
			if v := e2.backendVersion(t, "k"); v != 2 {
				t.Fatalf("backend version = %d, want exactly one new version", v)
			}
			vs := e2.versions(t, "k")
			if len(vs) != 2 || vs[2].State != rekey.VersionActive || vs[1].State != rekey.VersionRetired {
				t.Fatalf("versions = %+v", vs)
			}
			if c := e2.counts(t, "k"); c[2] != 35 {
				t.Fatalf("counts = %v", c)
			}
			if rs := e2.rotations(t, "k"); len(rs) != 1 || rs[0].State != rekey.RotationDone || rs[0].Epoch <= held.Epoch {
				t.Fatalf("rotations = %+v", rs)
			}
			if _, err := e2.store.RenewLease(e2.ctx, held, time.Hour, e2.clock.Now()); !errors.Is(err, rekey.ErrFenced) {
				t.Fatalf("RenewLease of the crashed worker's lease = %v, want ErrFenced", err)
			}
			e2.checkDEKs(t, "k")
		})
	}
}

// TestEndToEndChild is the crashing process of
// TestEndToEndCrashAtEveryFailpoint and TestEndToEndCrashThenImmediateResume;
// on its own it does nothing.
func TestEndToEndChild(t *testing.T) {
	dir := os.Getenv("REKEY_E2E_DIR")
	if dir == "" {
		t.Skip("run by TestEndToEndCrashAtEveryFailpoint")
	}
	us, err := strconv.ParseInt(os.Getenv("REKEY_E2E_NOW"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	e := openSQLite(t, dir, time.UnixMicro(us).UTC())
	set, err := failpoint.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	eng := e.engine(t, func(c *rotation.Config) {
		c.Failpoints = set
		c.Owner = "crashing-child"
		if os.Getenv("REKEY_E2E_DEFAULT_OWNER") != "" {
			c.Owner = "" // hostname-pid, as rekey run without REKEY_WORKER_ID
		}
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	})
	rep := eng.RunCycle(e.ctx)
	fmt.Fprintf(os.Stderr, "child finished without crashing: %+v\n", rep)
}

package rotation_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/rotation"
)

// hostname returns this host's name, or skips the test.
func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil || h == "" {
		t.Skipf("no host name (%v): dead workers are never recognised", err)
	}
	return h
}

// deadPID returns the pid of a process that existed and is gone (exited
// and reaped).
func deadPID(t *testing.T) int {
	t.Helper()
	path, err := exec.LookPath("true")
	if err != nil {
		t.Skipf("no true(1): %v", err)
	}
	cmd := exec.Command(path)
	if err := cmd.Run(); err != nil {
		t.Fatalf("run true: %v", err)
	}
	return cmd.ProcessState.Pid()
}

// livePID returns the pid of a sleeping child, killed when the test ends.
func livePID(t *testing.T) int {
	t.Helper()
	path, err := exec.LookPath("sleep")
	if err != nil {
		t.Skipf("no sleep(1): %v", err)
	}
	cmd := exec.Command(path, "600")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

// holdLease gives owner the lease on key for an hour, as a worker that is
// working on it (or crashed while it was) would have it.
func (e *env) holdLease(t *testing.T, key, owner string) rekey.Lease {
	t.Helper()
	l, err := e.store.AcquireLease(e.ctx, key, owner, time.Hour, e.clock.Now())
	if err != nil {
		t.Fatalf("AcquireLease(%s): %v", owner, err)
	}
	return l
}

func defaultOwner(c *rotation.Config) { c.Owner = "" }

func TestDefaultOwnerFormat(t *testing.T) {
	t.Parallel()
	host := hostname(t)
	if got, want := rotation.DefaultOwner(), fmt.Sprintf("%s-%d", host, os.Getpid()); got != want {
		t.Fatalf("DefaultOwner() = %q, want %q", got, want)
	}
	e := setup(t)
	if got := e.engine(t, defaultOwner).Owner(); got != rotation.DefaultOwner() {
		t.Fatalf("engine owner without Config.Owner = %q, want DefaultOwner() %q", got, rotation.DefaultOwner())
	}
}

// Rule 7: the lease of a worker of this host whose process is gone (a
// crash, kill -9) is taken over at once, not at its expiry: the next run
// rotates the key, and the dead worker's fence is void.
func TestRule7_DeadWorkerLeaseTakenOver(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 25)
	e.makeDue(t, "k")
	dead := fmt.Sprintf("%s-%d", hostname(t), deadPID(t))
	old := e.holdLease(t, "k", dead)

	eng := e.engine(t, defaultOwner)
	rep := eng.RunCycle(e.ctx)
	if kr := keyReport(t, rep, "k"); !rep.OK() || kr.Outcome != rotation.OutcomeRotated || kr.Rewrapped != 25 {
		t.Fatalf("cycle with a dead worker's lease = %+v", rep)
	}
	if e.backendVersion(t, "k") != 2 || e.counts(t, "k")[2] != 25 {
		t.Fatal("not rotated")
	}
	e.checkDEKs(t, "k")
	if r := e.rotations(t, "k")[0]; r.State != rekey.RotationDone || r.Owner != eng.Owner() || r.Epoch <= old.Epoch {
		t.Fatalf("rotation = %+v, want done by %s with an epoch above %d", r, eng.Owner(), old.Epoch)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `"msg":"taking over the lease of a dead worker"`) ||
		!strings.Contains(logs, `"old_owner":"`+dead+`"`) || !strings.Contains(logs, fmt.Sprintf(`"old_epoch":%d`, old.Epoch)) {
		t.Fatalf("no takeover warning naming %s epoch %d in the logs:\n%s", dead, old.Epoch, logs)
	}

	// The dead worker's fence is void, even if it came back.
	_, err := e.store.RenewLease(e.ctx, old, time.Hour, e.clock.Now())
	if !errors.Is(err, rekey.ErrFenced) {
		t.Fatalf("RenewLease of the broken lease = %v, want ErrFenced", err)
	}
	d := e.allDEKs(t, "k")[0]
	lost, err := e.store.SwapDEKs(e.ctx, []rekey.DEKSwap{{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: []byte("x"), NewVersion: 1}}, old)
	if !errors.Is(err, rekey.ErrFenced) || len(lost) != 0 {
		t.Fatalf("SwapDEKs with the broken lease = %v, %v; want ErrFenced", lost, err)
	}
	r := rekey.Rotation{ID: rekey.NewID(), Key: "k", FromVersion: 2, State: rekey.RotationClaimed, Reason: rekey.ReasonManual, StartedAt: e.clock.Now()}
	if err := e.store.CreateRotation(e.ctx, r, old); !errors.Is(err, rekey.ErrFenced) {
		t.Fatalf("CreateRotation with the broken lease = %v, want ErrFenced", err)
	}
	e.checkDEKs(t, "k")
}

// Rotate (the CLI's rekey rotate) takes over a dead worker's lease too.
func TestRule7_RotateTakesOverDeadWorkerLease(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 5)
	e.holdLease(t, "k", fmt.Sprintf("%s-%d", hostname(t), deadPID(t)))
	r, err := e.engine(t).Rotate(e.ctx, "k", "", "")
	if err != nil || r.State != rekey.RotationDone || e.backendVersion(t, "k") != 2 {
		t.Fatalf("Rotate = %+v, %v", r, err)
	}
	e.checkDEKs(t, "k")
}

// Rule 7: a lease is broken only on proof that its holder is dead. A live
// process, this process, another host, or an id not of the default form
// keep their lease until it expires: the key is skipped, as before.
func TestRule7_LiveOrUnknownWorkerLeaseNotBroken(t *testing.T) {
	t.Parallel()
	host := hostname(t)
	deadPid := deadPID(t)
	tests := []struct {
		name  string
		owner func(t *testing.T) string
	}{
		{"live parent process", func(t *testing.T) string { return fmt.Sprintf("%s-%d", host, os.Getppid()) }},
		{"live child process", func(t *testing.T) string { return fmt.Sprintf("%s-%d", host, livePID(t)) }},
		// Another engine of this process (the one under test then has an
		// id of its own: the same id would simply re-acquire).
		{"this process", func(t *testing.T) string { return fmt.Sprintf("%s-%d", host, os.Getpid()) }},
		{"another host", func(t *testing.T) string { return fmt.Sprintf("other-%s-%d", host, deadPid) }},
		{"custom id", func(t *testing.T) string { return fmt.Sprintf("worker-%d", deadPid) }},
		{"custom id with a zero-padded pid", func(t *testing.T) string { return fmt.Sprintf("%s-0%d", host, deadPid) }},
		{"custom id with a signed pid", func(t *testing.T) string { return fmt.Sprintf("%s-+%d", host, deadPid) }},
		{"host name alone", func(t *testing.T) string { return host }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.createKey(t, "k", testPolicy())
			e.addDEKs(t, "k", 3)
			e.makeDue(t, "k")
			holder := e.holdLease(t, "k", tc.owner(t))
			eng := e.engine(t)
			if holder.Owner != rotation.DefaultOwner() {
				eng = e.engine(t, defaultOwner)
			}
			rep := eng.RunCycle(e.ctx)
			if kr := keyReport(t, rep, "k"); kr.Outcome != rotation.OutcomeSkipped || !rep.OK() {
				t.Fatalf("report = %+v, want the key skipped", kr)
			}
			if _, err := eng.Rotate(e.ctx, "k", "", ""); !errors.Is(err, rekey.ErrLeaseHeld) {
				t.Fatalf("Rotate = %v, want ErrLeaseHeld", err)
			}
			if e.backendVersion(t, "k") != 1 {
				t.Fatal("rotated without the lease")
			}
			got, err := e.store.GetLease(e.ctx, "k")
			if err != nil || got != holder {
				t.Fatalf("lease after the cycle = %+v, %v; want %+v untouched", got, err, holder)
			}
			if _, err := e.store.RenewLease(e.ctx, holder, time.Hour, e.clock.Now()); err != nil {
				t.Fatalf("the holder's fence: %v", err)
			}
			if strings.Contains(e.logs.String(), "taking over the lease") {
				t.Fatalf("took over %s:\n%s", holder.Owner, e.logs.String())
			}
		})
	}
}

// Rule 7: the break is a compare-and-swap on the lease as read. A holder
// that renews between the read and the break keeps its lease (here the
// "dead" worker renews, as a live one with a reused-looking id would).
func TestRule7_DeadWorkerBreakLosesToRenewal(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.makeDue(t, "k")
	holder := e.holdLease(t, "k", fmt.Sprintf("%s-%d", hostname(t), deadPID(t)))
	renewed := holder
	e.mstore.Fail = func(op string) error {
		if op != "BreakLease" {
			return nil
		}
		var err error
		renewed, err = e.store.RenewLease(e.ctx, holder, 2*time.Hour, e.clock.Now())
		return err
	}
	eng := e.engine(t, defaultOwner)
	if kr := keyReport(t, eng.RunCycle(e.ctx), "k"); kr.Outcome != rotation.OutcomeSkipped {
		t.Fatalf("report = %+v, want the key skipped", kr)
	}
	e.mstore.Fail = nil
	if got, err := e.store.GetLease(e.ctx, "k"); err != nil || got != renewed || got == holder {
		t.Fatalf("lease = %+v, %v; want the renewed %+v", got, err, renewed)
	}
	if e.backendVersion(t, "k") != 1 || strings.Contains(e.logs.String(), "taking over the lease") {
		t.Fatalf("took the lease over despite the renewal:\n%s", e.logs.String())
	}
}

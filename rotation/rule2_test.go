package rotation_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/rotation"
)

// rotatedThenLost is a backend whose RotateKey rotates and then loses the
// reply (a transient error), the case rule 2's loop exists for.
type rotatedThenLost struct {
	*memkms.KMS
	lose atomic.Int64 // replies left to lose
}

func (k *rotatedThenLost) RotateKey(ctx context.Context, ref string) (int, error) {
	v, err := k.KMS.RotateKey(ctx, ref)
	if err == nil && k.lose.Add(-1) >= 0 {
		return 0, transient(errors.New("reply lost"))
	}
	return v, err
}

// Rule 2: a RotateKey that did rotate but reported a transient failure is
// not repeated: the engine looks at CurrentVersion again and adopts the
// version it finds, so the rotation makes exactly one backend version.
func TestRule2_TransientRotateThatRotatedIsAdopted(t *testing.T) {
	t.Parallel()
	e := setup(t)
	flaky := &rotatedThenLost{KMS: e.mkms}
	flaky.lose.Store(1)
	e.kms = flaky
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 12)
	e.makeDue(t, "k")
	kr := keyReport(t, e.engine(t).RunCycle(e.ctx), "k")
	if kr.Outcome != rotation.OutcomeRotated || kr.ToVersion != 2 {
		t.Fatalf("report = %+v", kr)
	}
	if got := e.backendVersion(t, "k"); got != 2 {
		t.Fatalf("backend at v%d, want 2: RotateKey was repeated", got)
	}
	if e.countAudit(t, "k", rekey.AuditVersionAdopted) != 1 {
		t.Fatalf("audit = %v, want version.adopted", e.auditTypes(t, "k"))
	}
	e.checkDEKs(t, "k")
}

// Rule 2: a RotateKey that keeps failing transiently (and never rotates) is
// asked at most RotateRetry.Attempts times, each after a new look at
// CurrentVersion; then the cycle fails and nothing was created.
func TestRule2_RotateRetryIsBounded(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.makeDue(t, "k")
	var rotates, currents atomic.Int64
	e.mkms.Fail = func(op, ref string) error {
		switch op {
		case memkms.OpRotate:
			rotates.Add(1)
			return transient(errors.New("503"))
		case memkms.OpCurrent:
			currents.Add(1)
		}
		return nil
	}
	kr := keyReport(t, e.engine(t).RunCycle(e.ctx), "k")
	if kr.Outcome != rotation.OutcomeFailed || !strings.Contains(kr.Error, "backend rotate") {
		t.Fatalf("report = %+v", kr)
	}
	// kmsmw tries rotate_key once per call; the engine's loop is the only
	// retry. CurrentVersion: once before the claim (the backend answers),
	// then once per round.
	if r, c := rotates.Load(), currents.Load(); r != int64(fastRetry.Attempts) || c != r+1 {
		t.Fatalf("%d RotateKey and %d CurrentVersion calls, want %d and %d", r, c, fastRetry.Attempts, fastRetry.Attempts+1)
	}
	if got := e.backendVersion(t, "k"); got != 1 {
		t.Fatalf("backend at v%d", got)
	}
}

// Nothing is retried at two levels: a CurrentVersion that keeps failing
// transiently is retried by the middleware only (its Attempts), never
// again by the engine's rule-2 loop around it.
func TestRule2_CurrentVersionNotRetriedTwice(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.makeDue(t, "k")
	var currents atomic.Int64
	e.mkms.Fail = func(op, ref string) error {
		if op == memkms.OpCurrent {
			currents.Add(1)
			return transient(errors.New("timeout"))
		}
		return nil
	}
	var observed atomic.Int64
	eng := e.engine(t, func(c *rotation.Config) {
		c.Backends = map[string]rekey.KMS{e.backend: kmsmw.Wrap(e.kms, kmsmw.Options{Name: e.backend, Retry: fastRetry, Observer: countCalls{&observed}})}
	})
	kr := keyReport(t, eng.RunCycle(e.ctx), "k")
	if kr.Outcome != rotation.OutcomeFailed || !strings.Contains(kr.Error, "did not answer") {
		t.Fatalf("report = %+v", kr)
	}
	if rs := e.rotations(t, "k"); len(rs) != 0 {
		t.Fatalf("rotations = %+v: nothing may be written for a backend that does not answer", rs)
	}
	if n := currents.Load(); n != int64(fastRetry.Attempts) {
		t.Fatalf("CurrentVersion called %d times, want %d (the middleware's tries only)", n, fastRetry.Attempts)
	}
	if n := observed.Load(); n != int64(fastRetry.Attempts) {
		t.Fatalf("middleware observed %d calls, want %d", n, fastRetry.Attempts)
	}
}

// countCalls is a kmsmw.Observer that counts the tries it sees.
type countCalls struct{ n *atomic.Int64 }

func (c countCalls) KMSCall(backend, op, result string, d time.Duration) { c.n.Add(1) }

package main

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/rekeyhq/rekey/internal/torture"
)

// TestTorturePostgres (issue 9 item 6): the crash torture of TestTorture
// with the store on a real PostgreSQL (a fresh schema per run, from
// REKEY_TEST_PG_DSN) and the local keyring; in about one life of three
// two `rekey run` replicas share the store instead of one worker (in
// some of those both must log rotation work). The
// same invariants are checked after every life. By default it runs until
// every failpoint name was hit at least 3 times (at most 150 lives); the
// -torture.seed and -torture.iterations flags of TestTorture apply.
// Without REKEY_TEST_PG_DSN it fails under CI and is skipped otherwise.
//
//	eval "$(scripts/pg start)"
//	go test -count=1 -run TestTorturePostgres -v ./cmd/rekey -torture.seed=N   # replay
//	scripts/pg stop
func TestTorturePostgres(t *testing.T) {
	dsn := replicaDSN(t)
	seed := *tortureSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	iterations := *tortureIterations
	if iterations == 0 && e2eLong() {
		iterations = 2000
	}
	t.Logf("torture seed %d (replay: -torture.seed=%d), iterations %d", seed, seed, iterations)
	h := newPGHome(t, dsn, pgOpts{})
	rep, err := torture.Run(context.Background(), torture.Config{
		Seed:             seed,
		Iterations:       iterations,
		MinHits:          3,
		MaxIterations:    150,
		Home:             h.home,
		Dir:              h.dir,
		StoreAndBackends: torture.PostgresLocal,
		DSN:              h.dsn,
		Replicas:         2,
		Backend:          "local",
		Command:          func(env []string, args ...string) *exec.Cmd { return h.command(env, args...) },
		Logf:             t.Logf,
	})
	if rep != nil {
		t.Logf("%s", rep)
	}
	if err != nil {
		var f *torture.Failure
		if errors.As(err, &f) {
			t.Fatalf("%v\nreplay: go test -count=1 -run TestTorturePostgres -v ./cmd/rekey -torture.seed=%d", err, f.Seed)
		}
		t.Fatal(err)
	}
	switch {
	case rep.Replicated == 0 && rep.Lives >= 10:
		t.Errorf("%d lives, none with two replicas: the harness did not run replicas", rep.Lives)
	case rep.Replicated >= 5 && rep.SharedWork == 0:
		t.Errorf("%d lives with two replicas, but in none did both log rotation work: the replicas did not share the store's work", rep.Replicated)
	}
}

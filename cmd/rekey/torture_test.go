package main

import (
	"context"
	"errors"
	"flag"
	"os/exec"
	"testing"
	"time"

	"github.com/rekeyhq/rekey/internal/torture"
)

var (
	tortureSeed       = flag.Int64("torture.seed", 0, "seed of TestTorture (0: a new one, printed)")
	tortureIterations = flag.Int("torture.iterations", 0, "worker lives of TestTorture (0: until every failpoint was hit 5 times; REKEY_LONG=1: 2000)")
)

// TestTorture (issue 8): the crash torture on the embedded default (SQLite
// store, local keyring). `rekey run` lives again and again with random
// failpoints (crash@N, error@N) and a kill -9 after a random delay, with
// writers and an operator beside it; the invariants are checked after
// every life (see package internal/torture). By default it runs until
// every failpoint name was hit at least 5 times; a failure prints its
// seed.
//
//	go test -count=1 -run 'TestTorture$' -v ./cmd/rekey -torture.seed=N           # replay
//	go test -count=1 -run 'TestTorture$' -v ./cmd/rekey -torture.iterations=2000  # long (or REKEY_LONG=1)
func TestTorture(t *testing.T) {
	seed := *tortureSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	iterations := *tortureIterations
	if iterations == 0 && e2eLong() {
		iterations = 2000
	}
	t.Logf("torture seed %d (replay: -torture.seed=%d), iterations %d", seed, seed, iterations)
	h := newE2EHome(t, e2eOpts{})
	rep, err := torture.Run(context.Background(), torture.Config{
		Seed:             seed,
		Iterations:       iterations,
		Home:             h.home,
		Dir:              h.dir,
		StoreAndBackends: torture.SQLiteLocal,
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
			t.Fatalf("%v\nreplay: go test -count=1 -run 'TestTorture$' -v ./cmd/rekey -torture.seed=%d", err, f.Seed)
		}
		t.Fatal(err)
	}
}

package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/torture"
	"github.com/rekeyhq/rekey/kms/vault/transitserver"
)

// The crash torture of TestTorture on the remote backends (issue 10 item
// 6, issue 13 item 4): the SQLite store and the local keyring of the home
// (which MACs the audit checkpoints), the torture's keys on awskms
// (local-kms), pkcs11 (SoftHSM2, in torture_backends_pkcs11_test.go) or
// vault (transitserver, in this test process, so that it outlives every
// worker the torture kills). Each is short by default: until every
// failpoint name was hit at least backendTortureMinHits times, or, after
// backendTortureOneHitAfter lives, at least once (at most
// backendTortureMaxLives lives: a name still not hit then fails); the -torture.seed and -torture.iterations
// flags of TestTorture apply, and REKEY_LONG=1 runs 400 lives. A missing
// peer fails the test under CI and skips it otherwise.
//
//	go test -count=1 -run 'TestTorture(AWSKMS|PKCS11|Vault)' -v ./cmd/rekey -torture.seed=N

const (
	backendTortureMinHits     = 2
	backendTortureOneHitAfter = 20
	backendTortureMaxLives    = 60
	backendTortureLongRun     = 400
)

// runBackendTorture runs the crash torture on h with the given template,
// keys on backend, and fails the test (naming the seed and the replay
// command) on any violation.
func runBackendTorture(t *testing.T, h *e2eHome, test, template, backend string, vars map[string]string) *torture.Report {
	t.Helper()
	seed := *tortureSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	iterations := *tortureIterations
	if iterations == 0 && e2eLong() {
		iterations = backendTortureLongRun
	}
	t.Logf("torture seed %d (replay: -torture.seed=%d), iterations %d (0: until every failpoint was hit %d times, or once after %d lives; at most %d lives)",
		seed, seed, iterations, backendTortureMinHits, backendTortureOneHitAfter, backendTortureMaxLives)
	rep, err := torture.Run(context.Background(), torture.Config{
		Seed:          seed,
		Iterations:    iterations,
		MinHits:       backendTortureMinHits,
		MaxIterations: backendTortureMaxLives,
		OneHitAfter:   backendTortureOneHitAfter,
		// A third of the default DEKs, in batches of a third of the
		// default: a rotation still takes about ten batches (the per-batch
		// failpoints have hits to choose from), and every check, which
		// unwraps every DEK at the backend, takes a third of the time.
		InitialDEKs:      70,
		BatchSize:        7,
		MaxDEKs:          700,
		FilesPerCheck:    40,
		Home:             h.home,
		Dir:              h.dir,
		StoreAndBackends: template,
		Vars:             vars,
		Backend:          backend,
		Command:          func(env []string, args ...string) *exec.Cmd { return h.command(env, args...) },
		Logf:             t.Logf,
	})
	if rep != nil {
		t.Logf("%s", rep)
	}
	if err != nil {
		var f *torture.Failure
		if errors.As(err, &f) {
			t.Fatalf("%v\nreplay: go test -count=1 -run '%s$' -v ./cmd/rekey -torture.seed=%d", err, test, f.Seed)
		}
		t.Fatal(err)
	}
	if rep.Rotations == 0 {
		t.Errorf("%d lives and no rotation done: the torture did not rotate the keys on backend %s", rep.Lives, backend)
	}
	return rep
}

// TestTortureAWSKMS: the crash torture with the keys on awskms (mode
// new-key) against local-kms, under an alias prefix of this run's own.
// Every check of a life also asks the emulator for each key's current
// version (the alias's KMS key), so that a version made by a killed worker
// and never recorded, or recorded twice, is seen.
func TestTortureAWSKMS(t *testing.T) {
	endpoint := awsEndpoint(t)
	// The default chain reads these (the emulator checks none); the test
	// process (the library writer and the checker) and every child use it.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDREKEYTORTURE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "rekey-torture-not-a-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	h := newE2EHome(t, e2eOpts{})
	runBackendTorture(t, h, "TestTortureAWSKMS", torture.SQLiteAWSKMS, "aws", map[string]string{
		"endpoint":     endpoint,
		"alias_prefix": "alias/rekey-torture-" + strings.ToLower(rekey.NewID()) + "/",
	})
}

// TestTortureVault: the crash torture with the keys on vault, against a
// transitserver (Vault's own keysutil behind the Transit endpoints) that
// this test process serves on 127.0.0.1: the workers it kills are other
// processes, so Transit's state outlives them, as a real Vault's would.
func TestTortureVault(t *testing.T) {
	srv, err := transitserver.Start(transitserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := newE2EHome(t, e2eOpts{})
	tokenFile := filepath.Join(h.dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(srv.Token()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep := runBackendTorture(t, h, "TestTortureVault", torture.SQLiteVault, "vault", map[string]string{
		"address":    srv.URL,
		"token_file": tokenFile,
	})
	c := srv.Counts()
	t.Logf("Transit requests over the run: %+v", c)
	if rep.Rotations > 0 && c.Rewrap == 0 {
		t.Errorf("%d rotations done and no Transit rewrap request: the workers did not re-wrap at Vault", rep.Rotations)
	}
}

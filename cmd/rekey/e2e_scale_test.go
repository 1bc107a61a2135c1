package main

// End-to-end tests of large re-wraps through the real rekey binary:
// concurrent writers, SIGTERM mid-way, and peak memory. Their default sizes
// run in seconds; REKEY_LONG=1 runs the sizes of the acceptance criteria:
//
//	cd /work/main && REKEY_LONG=1 go test -count=1 -run 'TestE2E_(SIGTERM|RewrapMemory|ConcurrentWriters)' -v ./cmd/rekey

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// TestE2E_ConcurrentWriters (acceptance 3): while `rekey run --once`
// re-wraps 30,000 DEKs (batch_size 500; REKEY_LONG=1: 200,000), other
// processes keep creating DEKs (`rekey dek create --count 50`) and sealing
// and opening files, until the run exits. Afterwards every DEK, old or
// new, is on version 2 without another run (the final sweep caught the
// DEKs written during the re-wrap), none is lost, and every file decrypts.
//
//	REKEY_LONG=1 go test -count=1 -run TestE2E_ConcurrentWriters -v ./cmd/rekey
func TestE2E_ConcurrentWriters(t *testing.T) {
	t.Parallel()
	deks := e2eSize(30000, 200000)
	h := newE2EHome(t, e2eOpts{batchSize: 500})
	h.must("key", "create", "k")
	h.createDEKs("k", deks)
	before := h.sealFiles("k", "before", []int{0, 5000, 70000})
	h.makeDue("k")

	type op struct {
		kind       string
		start, end time.Time
	}
	var (
		mu      sync.Mutex
		ops     []op
		sealed  []sealedFile
		created int
	)
	record := func(kind string, start time.Time) {
		mu.Lock()
		ops = append(ops, op{kind, start, time.Now()})
		mu.Unlock()
	}
	stop := make(chan struct{})
	ready := make(chan struct{}, 2)
	// Each writer says once that it is going (or that it gave up).
	ready1 := sync.OnceFunc(func() { ready <- struct{}{} })
	ready2 := sync.OnceFunc(func() { ready <- struct{}{} })
	var wg sync.WaitGroup
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWriters) // also when the test ends early
	// Writer 1: DEKs in bulk.
	wg.Go(func() {
		defer ready1()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			r := h.run("dek", "create", "--key", "k", "--count", "50", "--label", "w"+strconv.Itoa(i))
			if r.code != 0 {
				t.Errorf("concurrent dek create: %v", r)
				return
			}
			record("dek create", start)
			mu.Lock()
			created += 50
			mu.Unlock()
			ready1()
		}
	})
	// Writer 2: seal a small file and open it again.
	wg.Go(func() {
		defer ready2()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f := sealedFile{plain: filepath.Join(h.dir, fmt.Sprintf("during-%03d.bin", i))}
			f.sealed = f.plain + ".rekey"
			if err := os.WriteFile(f.plain, randomBytes(t, 100+i*37), 0o600); err != nil {
				t.Error(err)
				return
			}
			start := time.Now()
			if r := h.run("encrypt", "--key", "k", "--in", f.plain, "--out", f.sealed); r.code != 0 {
				t.Errorf("concurrent encrypt: %v", r)
				return
			}
			record("encrypt", start)
			mu.Lock()
			sealed = append(sealed, f)
			mu.Unlock()
			start = time.Now()
			if r := h.run("decrypt", "--in", f.sealed, "--out", f.plain+".back"); r.code != 0 {
				t.Errorf("concurrent decrypt: %v", r)
				return
			}
			record("decrypt", start)
			ready2()
		}
	})
	<-ready
	<-ready // both writers are going before the rotation starts
	if t.Failed() {
		t.FailNow()
	}

	run := h.command(nil, "run", "--once")
	pipe, err := run.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := watchLines(pipe, `"msg":"rotation committed"`)
	runStart := time.Now()
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	<-w.done // Wait must not close the pipe before it is drained
	err = run.Wait()
	runEnd := time.Now()
	stopWriters()
	stderr := w.text()
	if err != nil {
		t.Fatalf("run --once with concurrent writers: %v\n%s", err, e2eTail(stderr, 4000))
	}

	// How much really overlapped the re-wrap (from the worker's own log).
	claimed, committed := logTime(stderr, "rotation claimed"), logTime(stderr, "rotation committed")
	if claimed.IsZero() || committed.IsZero() {
		t.Fatalf("no rotation in the run's log:\n%s", e2eTail(stderr, 4000))
	}
	during, inRun := map[string]int{}, 0
	for _, o := range ops {
		if o.end.After(claimed) && o.start.Before(committed) {
			during[o.kind]++
		}
		if o.end.After(runStart) && o.start.Before(runEnd) {
			inRun++
		}
	}
	t.Logf("run --once: %v for %d DEKs (claimed→committed %v); writer ops overlapping the re-wrap: %v; writer ops during the run: %d",
		runEnd.Sub(runStart).Round(time.Millisecond), deks, committed.Sub(claimed).Round(time.Millisecond), during, inRun)
	if during["dek create"] == 0 && during["encrypt"] == 0 {
		t.Errorf("no DEK was written while the re-wrap ran (claimed %v, committed %v): the test proved nothing", claimed, committed)
	}

	want := int64(deks + len(before) + created + len(sealed))
	k := h.keyShow("k")
	if n := k.version(t, 1).DEKs; n != 0 {
		t.Errorf("after the run, %d DEKs are still on v1: the final sweep missed DEKs written during the re-wrap; running once more", n)
		if r := h.run("run", "--once"); r.code != 0 {
			t.Fatalf("extra run: %v", r)
		}
	}
	h.assertAllOn("k", 2, want)
	h.checkFiles(before)
	h.checkFiles(sealed)
}

// TestE2E_SIGTERM (acceptance 8): SIGTERM to `rekey run --once` while it
// re-wraps 100,000 DEKs (REKEY_LONG=1: 500,000) ends it with exit 0 within
// 5 s; `rekey status --json` then shows the open rotation with its
// progress; the next `rekey run --once` (the lease was released: it need
// not wait) finishes it and every DEK is on v2, each counted once.
//
//	REKEY_LONG=1 go test -count=1 -run TestE2E_SIGTERM -v ./cmd/rekey
func TestE2E_SIGTERM(t *testing.T) {
	t.Parallel()
	deks := e2eSize(100000, 500000)
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "k")
	h.createDEKs("k", deks)
	files := h.sealFiles("k", "f", []int{10, 70000})
	total := int64(deks + len(files))
	h.makeDue("k")

	run := h.command(nil, "--log-level", "debug", "run", "--once")
	pipe, err := run.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := watchLines(pipe, `"msg":"re-wrap batch committed"`)
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.found:
	case <-w.done:
		run.Wait()
		t.Fatalf("the run ended before any batch was committed:\n%s", e2eTail(w.text(), 4000))
	case <-time.After(60 * time.Second):
		run.Process.Kill()
		t.Fatalf("no batch committed within 60s:\n%s", e2eTail(w.text(), 4000))
	}
	sent := time.Now()
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() {
		<-w.done // Wait must not close the pipe before it is drained
		exited <- run.Wait()
	}()
	var werr error
	select {
	case werr = <-exited:
	case <-time.After(30 * time.Second):
		run.Process.Kill()
		t.Fatalf("rekey run did not exit within 30s of SIGTERM:\n%s", e2eTail(w.text(), 4000))
	}
	latency := time.Since(sent)
	code := run.ProcessState.ExitCode()
	t.Logf("SIGTERM during the re-wrap of %d DEKs: exit %d after %v", total, code, latency.Round(time.Millisecond))
	if werr != nil || code != 0 {
		t.Errorf("after SIGTERM: exit %d (%v), want 0\n%s", code, werr, e2eTail(w.text(), 4000))
	}
	if latency >= 5*time.Second {
		t.Errorf("exit took %v after SIGTERM, want < 5s", latency)
	}

	st := h.status()
	if len(st.Rotations) != 1 {
		t.Fatalf("after SIGTERM: open rotations %+v, want the interrupted one (did it finish before the signal?)", st.Rotations)
	}
	open := st.Rotations[0]
	if open.Done <= 0 || open.Done >= total || open.Total != total || open.State != string(rekey.RotationRewrapping) {
		t.Errorf("open rotation %+v, want rewrapping with 0 < deks_done < %d", open, total)
	}
	t.Logf("checkpointed: %d of %d DEKs", open.Done, open.Total)

	r := h.run("run", "--once")
	if r.code != 0 || len(logLines(r.stderr, "key skipped: another worker holds its lease")) > 0 {
		t.Fatalf("resuming run (the stopped worker should have released its lease): %v", r)
	}
	t.Logf("resuming run: %v", r.dur.Round(time.Millisecond))
	h.assertAllOn("k", 2, total)
	st = h.status()
	if len(st.Rotations) != 0 || len(st.Recent) != 1 || st.Recent[0].ID != open.ID || st.Recent[0].State != string(rekey.RotationDone) {
		t.Fatalf("after resuming: open %+v, recent %+v; want the same rotation done", st.Rotations, st.Recent)
	}
	if d := st.Recent[0].Done; d != total {
		t.Errorf("the resumed rotation counts %d DEKs re-wrapped, want %d (each once)", d, total)
	}
	h.checkFiles(files)
}

// TestE2E_RewrapMemory (acceptance 9): the peak RSS of the `rekey run
// --once` process re-wrapping 100,000 DEKs (REKEY_LONG=1: 1,000,000) stays
// under 100 MB: re-wrapping streams in batches, memory does not grow with
// the number of DEKs.
//
//	REKEY_LONG=1 go test -count=1 -run TestE2E_RewrapMemory -v ./cmd/rekey
func TestE2E_RewrapMemory(t *testing.T) {
	t.Parallel()
	deks := e2eSize(100000, 1000000)
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "k")
	start := time.Now()
	h.createDEKs("k", deks)
	created := time.Since(start)
	h.makeDue("k")
	r := h.runMeasured("run", "--once")
	if r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	const limit = 100 << 20
	t.Logf("re-wrap of %d DEKs: %v (%.0f DEKs/s), peak RSS %.1f MB; dek create --count %d took %v",
		deks, r.dur.Round(time.Millisecond), float64(deks)/r.dur.Seconds(), float64(r.maxRSS)/(1<<20), deks, created.Round(time.Millisecond))
	if r.maxRSS <= 0 {
		t.Fatal("no rusage for the run")
	}
	if r.maxRSS >= limit {
		t.Errorf("re-wrapping %d DEKs peaked at %.1f MB RSS, want < 100 MB", deks, float64(r.maxRSS)/(1<<20))
	}
	h.assertAllOn("k", 2, int64(deks))
}

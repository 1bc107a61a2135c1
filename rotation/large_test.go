package rotation_test

import (
	"crypto/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/rotation"
)

// TestLargeRotationMemory rotates a key with REKEY_LARGE_DEKS DEKs (say
// 1000000) on SQLite + the local keyring and checks that the process's
// peak RSS during the rotation stays under 100 MB: the re-wrap streams, so
// memory does not grow with the number of DEKs. Off unless the variable is
// set (it takes about a minute for a million).
//
//	REKEY_LARGE_DEKS=1000000 go test -run TestLargeRotationMemory -v ./rotation
func TestLargeRotationMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("REKEY_LARGE_DEKS"))
	if n <= 0 {
		t.Skip("off by default (the 1M-DEK run is also in cmd/rekey under REKEY_LONG=1); run: REKEY_LARGE_DEKS=1000000 go test -run TestLargeRotationMemory -v ./rotation")
	}
	e := openSQLite(t, t.TempDir(), newClock().Now())
	k := e.createKey(t, "big", testPolicy())
	const chunk = 10_000
	pt := make([]byte, 32)
	for done := 0; done < n; done += chunk {
		deks := make([]rekey.DEK, min(chunk, n-done))
		for i := range deks {
			rand.Read(pt)
			w, err := e.kms.Wrap(e.ctx, k.BackendRef, 1, pt)
			if err != nil {
				t.Fatal(err)
			}
			deks[i] = rekey.DEK{ID: rekey.NewID(), Key: "big", Version: 1, Wrapped: w}
		}
		if err := e.store.InsertDEKs(e.ctx, deks); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	// Reset the peak RSS so that it measures the rotation alone.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset peak RSS: %v", err)
	}
	eng := e.engine(t, func(c *rotation.Config) {
		c.BatchSize = rotation.DefaultBatchSize
		c.Concurrency = rotation.DefaultConcurrency
		c.Logger = nil
	})
	start := time.Now()
	r, err := eng.Rotate(e.ctx, "big", "", "")
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if r.Done != int64(n) {
		t.Fatalf("re-wrapped %d of %d", r.Done, n)
	}
	peak := peakRSS(t)
	t.Logf("%d DEKs in %v (%.0f DEKs/s), peak RSS during the rotation %d MB", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), peak>>20)
	if peak > 100<<20 {
		t.Fatalf("peak RSS %d MB, want under 100 MB", peak>>20)
	}
}

func peakRSS(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Skip("no VmHWM")
	return 0
}

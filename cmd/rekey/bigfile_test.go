package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func fileSHA(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

// TestLargeFileStreams seals and opens a 200 MiB file through the real
// binary: byte for byte equal, and peak memory (the child's own RSS, see
// runMeasured) under 64 MB for each.
func TestLargeFileStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips the 200 MiB file (run without -short)")
	}
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "payments")
	in := filepath.Join(h.dir, "big.bin")
	f, err := os.Create(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, 200<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	const limit = 64 << 20
	for _, args := range [][]string{
		{"encrypt", "--key", "payments", "--in", in, "--out", in + ".rekey"},
		{"decrypt", "--in", in + ".rekey", "--out", in + ".back"},
	} {
		r := h.runMeasured(args...)
		if r.code != 0 {
			t.Fatalf("%v", r)
		}
		if r.maxRSS > limit {
			t.Errorf("%s of 200 MiB peaked at %d MB RSS, want < 64 MB", args[0], r.maxRSS>>20)
		}
		t.Logf("%s 200 MiB: peak RSS %.1f MB in %v", args[0], float64(r.maxRSS)/(1<<20), r.dur)
	}
	if !bytes.Equal(fileSHA(t, in), fileSHA(t, in+".back")) {
		t.Fatal("200 MiB round trip differs")
	}
}

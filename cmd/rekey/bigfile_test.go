package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// buildRekey builds the rekey binary once per test binary run.
func buildRekey(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rekey")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runBinary runs the built binary and returns its peak RSS in bytes.
func runBinary(t *testing.T, bin, home string, args ...string) int64 {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "REKEY_HOME="+home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("rekey %v: %v\n%s", args, err, stderr.String())
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Fatal("no rusage")
	}
	return ru.Maxrss * 1024 // Linux reports KiB
}

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
// binary: byte for byte equal, and peak memory (RSS, from the kernel's
// rusage of the child) under 64 MB for each.
func TestLargeFileStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips the 200 MiB file (run without -short)")
	}
	bin := buildRekey(t)
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	runBinary(t, bin, home, "init")
	runBinary(t, bin, home, "key", "create", "payments")
	in := filepath.Join(dir, "big.bin")
	f, err := os.Create(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, 200<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	const limit = 64 << 20
	if rss := runBinary(t, bin, home, "encrypt", "--key", "payments", "--in", in, "--out", in+".rekey"); rss > limit {
		t.Errorf("encrypt of 200 MiB peaked at %d MB RSS, want < 64 MB", rss>>20)
	} else {
		t.Logf("encrypt 200 MiB: peak RSS %.1f MB", float64(rss)/(1<<20))
	}
	if rss := runBinary(t, bin, home, "decrypt", "--in", in+".rekey", "--out", in+".back"); rss > limit {
		t.Errorf("decrypt of 200 MiB peaked at %d MB RSS, want < 64 MB", rss>>20)
	} else {
		t.Logf("decrypt 200 MiB: peak RSS %.1f MB", float64(rss)/(1<<20))
	}
	if !bytes.Equal(fileSHA(t, in), fileSHA(t, in+".back")) {
		t.Fatal("200 MiB round trip differs")
	}
}

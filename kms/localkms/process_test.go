package localkms

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// helperEnv tells a child test process to act as one rekey process
// sharing the keyring of TestTwoProcesses.
const helperEnv = "LOCALKMS_TEST_HELPER"

// TestHelperProcess is the child side of TestTwoProcesses: it rotates the
// key and wraps a DEK under each new version, and writes "version hex" lines
// to its output file. It does nothing unless LOCALKMS_TEST_HELPER is set.
func TestHelperProcess(t *testing.T) {
	spec, ok := os.LookupEnv(helperEnv)
	if !ok {
		t.Skip("child side of TestTwoProcesses")
	}
	// spec is "dir,id,rounds"
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		t.Fatalf("bad %s=%q", helperEnv, spec)
	}
	f := fixture{dir: parts[0], keyring: filepath.Join(parts[0], "keyring"), masterFile: filepath.Join(parts[0], "master.key")}
	id, _ := strconv.Atoi(parts[1])
	rounds, _ := strconv.Atoi(parts[2])
	c := f.open(t, func(c *Config) { c.Create = false })
	out, err := os.Create(filepath.Join(f.dir, fmt.Sprintf("out-%d", id)))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	for i := range rounds {
		v, err := c.RotateKey(t.Context(), "payments")
		if err != nil {
			t.Fatal(err)
		}
		w := mustWrap(t, c, "payments", v, dek(id*rounds+i))
		fmt.Fprintf(out, "%d %d %s\n", v, id*rounds+i, hex.EncodeToString(w))
	}
}

// TestTwoProcesses has two processes rotate one key in one keyring file at
// the same time, and checks that no version is lost or made twice.
func TestTwoProcesses(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts child processes; run without -short")
	}
	f := setup(t)
	c := f.open(t)
	mustCreate(t, c, "payments")

	const procs, rounds = 2, 8
	var wg sync.WaitGroup
	for id := range procs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d", helperEnv, f.dir, id, rounds))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("child %d: %v\n%s", id, err, out)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if v, err := c.CurrentVersion(t.Context(), "payments"); err != nil || v != procs*rounds+1 {
		t.Fatalf("CurrentVersion = %d, %v; want %d", v, err, procs*rounds+1)
	}
	seen := map[int]bool{}
	for id := range procs {
		file, err := os.Open(filepath.Join(f.dir, fmt.Sprintf("out-%d", id)))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(file)
		lines := 0
		for sc.Scan() {
			var v, n int
			var hexw string
			if _, err := fmt.Sscan(sc.Text(), &v, &n, &hexw); err != nil {
				t.Fatal(err)
			}
			w, _ := hex.DecodeString(hexw)
			if seen[v] {
				t.Errorf("version %d was handed to two rotations", v)
			}
			seen[v] = true
			mustUnwrap(t, c, "payments", v, w, dek(n))
			lines++
		}
		file.Close()
		if lines != rounds {
			t.Errorf("child %d wrote %d results, want %d", id, lines, rounds)
		}
	}
}

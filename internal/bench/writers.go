package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// WritersResult is what an application sharing the store saw during the
// engine phase (Options.WithWriters): one loop, in another process per
// command, alternating `rekey dek create` and `rekey decrypt` of a sealed
// file. Latencies are wall times of whole commands (process start,
// opening the store, the work, exit), in milliseconds.
type WritersResult struct {
	// Ops counts the commands run (DEKCreates + Decrypts).
	Ops        int `json:"ops"`
	DEKCreates int `json:"dek_creates"`
	Decrypts   int `json:"decrypts"`
	// P50Ms, P99Ms and MaxMs are over every command.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// DEKCreateP99Ms and DecryptP99Ms are per command.
	DEKCreateP99Ms float64 `json:"dek_create_p99_ms"`
	DecryptP99Ms   float64 `json:"decrypt_p99_ms"`
	// LockedErrors counts the commands that failed with SQLite's
	// "database is locked" (or "database table is locked"); OtherErrors
	// the others that failed.
	LockedErrors int `json:"database_locked_errors"`
	OtherErrors  int `json:"other_errors"`
	// FirstError is the first failure's message, if any.
	FirstError string `json:"first_error,omitempty"`
	// BaselineP50Ms and BaselineMaxMs are the same commands run
	// baselineOps times before the engine phase, with no rotation: what
	// a command costs on this machine alone (mostly process start).
	BaselineP50Ms float64 `json:"baseline_p50_ms"`
	BaselineMaxMs float64 `json:"baseline_max_ms"`
}

// baselineOps is how many commands the writers run before the engine
// phase, for WritersResult's baseline.
const baselineOps = 6

// writerLoop is the running loop of startWriters.
type writerLoop struct {
	done  chan struct{} // closed by stop
	ended chan struct{} // closed when the loop has returned
	mu    sync.Mutex
	res   WritersResult
	all   []float64 // latencies, ms
	byCmd map[string][]float64
}

// startWriters seals a small file with `rekey encrypt` (so that the
// decrypts have work) and starts the loop. It returns once the file is
// sealed.
func (e *runEnv) startWriters(ctx context.Context) (*writerLoop, error) {
	plain := filepath.Join(e.dir, "writers.txt")
	sealed := filepath.Join(e.dir, "writers.sealed")
	if err := os.WriteFile(plain, []byte("rekey bench: a file the writers decrypt during the rotation\n"), 0o600); err != nil {
		return nil, fmt.Errorf("bench: writers: %w", err)
	}
	if err := e.o.RunCLI(ctx, e.cfgPath, "encrypt", "--key", KeyName, "--in", plain, "--out", sealed); err != nil {
		return nil, fmt.Errorf("bench: writers: seal a file to decrypt: %w", err)
	}
	out := filepath.Join(e.dir, "writers.out")
	cmds := [][]string{
		{"dek", "create", "--key", KeyName, "--label", "bench-writer"},
		{"decrypt", "--in", sealed, "--out", out},
	}
	var base []float64
	for i := range baselineOps {
		args := cmds[i%len(cmds)]
		start := time.Now()
		if err := e.o.RunCLI(ctx, e.cfgPath, args...); err != nil {
			return nil, fmt.Errorf("bench: writers: before the rotation: %w", err)
		}
		base = append(base, float64(time.Since(start).Microseconds())/1000)
	}
	w := &writerLoop{done: make(chan struct{}), ended: make(chan struct{}), byCmd: map[string][]float64{}}
	w.res.BaselineP50Ms, w.res.BaselineMaxMs = percentile(base, 0.5), percentile(base, 1)
	go func() {
		defer close(w.ended)
		for i := 0; ; i++ {
			select {
			case <-w.done:
				return
			case <-ctx.Done():
				return
			default:
			}
			args := cmds[i%len(cmds)]
			start := time.Now()
			err := e.o.RunCLI(ctx, e.cfgPath, args...)
			w.record(args[0], time.Since(start), err)
		}
	}()
	return w, nil
}

func (w *writerLoop) record(cmd string, d time.Duration, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ms := float64(d.Microseconds()) / 1000
	w.all = append(w.all, ms)
	w.byCmd[cmd] = append(w.byCmd[cmd], ms)
	w.res.Ops++
	if cmd == "dek" {
		w.res.DEKCreates++
	} else {
		w.res.Decrypts++
	}
	if err == nil {
		return
	}
	if isLocked(err) {
		w.res.LockedErrors++
	} else {
		w.res.OtherErrors++
	}
	if w.res.FirstError == "" {
		w.res.FirstError = err.Error()
	}
}

// isLocked reports whether err is SQLite's "database is locked" (or
// "database table is locked"), as a command prints it.
func isLocked(err error) bool {
	s := err.Error()
	return strings.Contains(s, "database is locked") || strings.Contains(s, "database table is locked") || strings.Contains(s, "SQLITE_BUSY")
}

// stop ends the loop after the command in flight and returns the result.
func (w *writerLoop) stop() WritersResult {
	close(w.done)
	<-w.ended
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.res
	r.P50Ms, r.P99Ms, r.MaxMs = percentile(w.all, 0.50), percentile(w.all, 0.99), percentile(w.all, 1)
	r.DEKCreateP99Ms, r.DecryptP99Ms = percentile(w.byCmd["dek"], 0.99), percentile(w.byCmd["decrypt"], 0.99)
	return r
}

// percentile returns the q-quantile of xs by the nearest-rank method (0
// for none).
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(float64(len(s))*q)) - 1
	return s[min(max(i, 0), len(s)-1)]
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/spf13/cobra"

	"github.com/rekeyhq/rekey/internal/bench"
)

// benchEngineCommand is the hidden subcommand the engine phase of rekey
// bench runs in: a child process of its own, so that its peak RSS is the
// engine's alone.
const benchEngineCommand = "__bench-engine"

func (c *cli) benchCommand() *cobra.Command {
	var o bench.Options
	cmd := &cobra.Command{
		Use:   "bench --deks N --store sqlite|postgres --backend local [--dsn DSN] [--json]",
		Short: "Measure the re-wrap on a throwaway store (never your data)",
		Long: `Measure the re-wrap. rekey bench seeds N DEKs under a fresh key in a
temporary directory (for postgres: a fresh schema on the server of --dsn or
$REKEY_TEST_PG_DSN, dropped after) and measures, in one run:

  engine   a full rotation by the engine (the code path of rekey run), in a
           child process: DEKs/s, seconds, peak RSS, backend calls per DEK
  naive    the article's algorithm (all DEKs in memory, per-row unwrap, wrap
           and autocommit UPDATE) on min(N, 100000) DEKs
  floor    crypto only (unwrap + wrap in memory), store only (N rows of
           rekey's deks table updated in 1000-row transactions, one writer),
           and the same on a minimal table (text id + blob, WITHOUT ROWID)

and the ratios engine/naive, engine/min(floors) and engine/minimal. Your
configuration and home are not read. A progress bar goes to stderr when it
is a terminal.`,
		Example: "  rekey bench --deks 100000 --store sqlite --backend local\n  rekey bench --deks 1000000 --store postgres --backend local --dsn postgres://localhost/postgres --json",
		Args:    exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Store == bench.StorePostgres && o.DSN == "" {
				o.DSN = c.getenv("REKEY_TEST_PG_DSN")
			}
			if err := o.Validate(); err != nil {
				return usagef("%v", err)
			}
			return c.runBench(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.DEKs, "deks", 100_000, "DEKs to seed and re-wrap")
	f.StringVar(&o.Store, "store", bench.StoreSQLite, "sqlite or postgres")
	f.StringVar(&o.Backend, "backend", bench.BackendLocal, "local")
	f.StringVar(&o.DSN, "dsn", "", "PostgreSQL server for a fresh schema (default $REKEY_TEST_PG_DSN)")
	f.IntVar(&o.BatchSize, "batch-size", 0, "worker.batch_size of the engine (default 1000)")
	f.IntVar(&o.Concurrency, "concurrency", 0, "worker.concurrency of the engine (default 8)")
	f.Float64Var(&o.RateLimit, "kms-rate-limit", 0, "worker.kms_rate_limit of the engine (default 0: none)")
	return cmd
}

// benchEngineCmd is the hidden child of rekey bench: it runs the engine
// phase on --config and prints its result as JSON.
func (c *cli) benchEngineCmd() *cobra.Command {
	return &cobra.Command{
		Use:    benchEngineCommand,
		Hidden: true,
		Args:   exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c.configPath == "" {
				return usagef("%s needs --config", benchEngineCommand)
			}
			res, err := bench.RunEngine(cmd.Context(), c.configPath)
			if err != nil {
				return err
			}
			return json.NewEncoder(c.stdout).Encode(res)
		},
	}
}

// engineInChild runs the engine phase in a child process of this binary.
func (c *cli) engineInChild(ctx context.Context, configPath string) (bench.EngineResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return bench.EngineResult{}, fmt.Errorf("find this binary to run the engine phase: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, "--config", configPath, benchEngineCommand)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return bench.EngineResult{}, fmt.Errorf("engine child process: %w: %s", err, bytes.TrimSpace(errb.Bytes()))
	}
	var res bench.EngineResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return bench.EngineResult{}, fmt.Errorf("engine child process: reading its result %q: %w", out.String(), err)
	}
	return res, nil
}

func (c *cli) runBench(ctx context.Context, o bench.Options) error {
	o.Engine = c.engineInChild
	if f, ok := c.stderr.(*os.File); ok && isTerminal(f) {
		o.Progress = progressBar(f)
	}
	start := time.Now()
	res, err := bench.Run(ctx, o)
	if o.Progress != nil {
		fmt.Fprint(c.stderr, "\r\033[K")
	}
	if err != nil {
		return err
	}
	if c.jsonOut {
		return c.printJSON(res)
	}
	w := c.stdout
	fmt.Fprintf(w, "rekey bench: %d DEKs, store %s, backend %s, batch_size %d, concurrency %d, kms_rate_limit %v (%s, in %s)\n\n",
		res.DEKs, res.Store, res.Backend, res.Settings.BatchSize, res.Settings.Concurrency, res.Settings.RateLimit,
		time.Now().UTC().Format("2006-01-02"), time.Since(start).Round(time.Second))
	fmt.Fprintf(w, "%-36s %14s\n", "what", "DEKs/s")
	fmt.Fprintf(w, "%-36s %14.0f   (%.2f s, peak RSS %.1f MB, %.2f backend calls/DEK)\n", "engine (full rotation)",
		res.Engine.DEKsPerS, res.Engine.Seconds, float64(res.Engine.PeakRSSBytes)/1e6, res.Engine.BackendCallsPerDEK)
	fmt.Fprintf(w, "%-36s %14.0f\n", fmt.Sprintf("naive (%d DEKs)", res.Naive.DEKs), res.Naive.DEKsPerS)
	fmt.Fprintf(w, "%-36s %14.0f\n", "floor: crypto only", res.Floor.CryptoDEKsPerS)
	fmt.Fprintf(w, "%-36s %14.0f\n", "floor: store only (deks table)", res.Floor.StoreRowsPerS)
	fmt.Fprintf(w, "%-36s %14.0f\n", "floor: minimal table", res.Floor.MinimalStoreRowsPerS)
	fmt.Fprintf(w, "\nengine/naive %.2f   engine/floor %.2f   engine/minimal %.2f\n",
		res.Ratios.EngineVsNaive, res.Ratios.EngineVsFloor, res.Ratios.EngineVsMinimal)
	return nil
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progressBar draws "phase [=====     ] 42%" on f, redrawn in place.
func progressBar(f *os.File) func(phase string, done, total int) {
	return func(phase string, done, total int) {
		const width = 30
		pct := 0
		if total > 0 {
			pct = done * 100 / total
		}
		n := pct * width / 100
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < n {
				bar[i] = '='
			}
		}
		fmt.Fprintf(f, "\r\033[K%-14s [%s] %3d%%", phase, bar, pct)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
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
		Use:   "bench --deks N --store sqlite|postgres --backend local|awskms [--dsn DSN] [--endpoint URL] [--throttle-at R] [--with-writers] [--json]",
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

and the ratios engine/naive, engine/min(floors) and engine/minimal. Each
phase starts on a settled store: VACUUM (ANALYZE) of the table it writes
on PostgreSQL (the rows the phase before wrote would set off autovacuum
during it), a WAL checkpoint on SQLite.

--backend awskms runs on the KMS endpoint of --endpoint (default
$REKEY_TEST_AWSKMS_ENDPOINT: the local-kms emulator of scripts/localkms),
with keys under an alias prefix of the run's own, scheduled for deletion
after; it also measures the endpoint's raw ReEncrypt at the engine's
concurrency, just before the engine phase and after it (engine/raw is
over the mean of the two). --throttle-at R makes the backend of the engine
phase refuse data requests above R per second (kms/faultkms), and reports
the rate the engine sustained and the share of its requests throttled.
--with-writers runs rekey dek create and rekey decrypt in a loop, each in
a process of its own, on the bench's store during the engine phase, and
reports their latency and "database is locked" errors.

Your configuration and home are not read. A progress bar goes to stderr
when it is a terminal.`,
		Example: "  rekey bench --deks 100000 --store sqlite --backend local\n  rekey bench --deks 1000000 --store postgres --backend local --dsn postgres://localhost/postgres --json\n" +
			"  rekey bench --deks 20000 --backend awskms --endpoint http://127.0.0.1:4599 --throttle-at 500\n  rekey bench --deks 1000000 --with-writers",
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Store == bench.StorePostgres && o.DSN == "" {
				o.DSN = c.getenv("REKEY_TEST_PG_DSN")
			}
			if o.Backend == bench.BackendAWSKMS && o.Endpoint == "" {
				o.Endpoint = c.getenv(bench.EnvAWSEndpoint)
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
	f.StringVar(&o.Backend, "backend", bench.BackendLocal, "local or awskms")
	f.StringVar(&o.Endpoint, "endpoint", "", "awskms: the KMS endpoint, http(s)://host[:port] (default $"+bench.EnvAWSEndpoint+")")
	f.Float64Var(&o.ThrottleAt, "throttle-at", 0, "make the backend refuse data requests above this rate per second during the engine phase (0: none)")
	f.BoolVar(&o.WithWriters, "with-writers", false, "run rekey dek create and rekey decrypt in a loop on the bench's store during the engine phase")
	f.StringVar(&o.DSN, "dsn", "", "PostgreSQL server for a fresh schema (default $REKEY_TEST_PG_DSN)")
	f.IntVar(&o.BatchSize, "batch-size", 0, "worker.batch_size of the engine (default 1000)")
	f.IntVar(&o.Concurrency, "concurrency", 0, "worker.concurrency of the engine (default 8)")
	f.Float64Var(&o.RateLimit, "kms-rate-limit", 0, "worker.kms_rate_limit of the engine (default 0: none)")
	f.IntVar(&o.RangeWorkers, "range-workers", 0, "worker.range_workers of the engine (default 0: the store's choice, 2 on PostgreSQL, 1 on SQLite)")
	return cmd
}

// benchEngineCmd is the hidden child of rekey bench: it runs the engine
// phase on --config and prints its result as JSON.
func (c *cli) benchEngineCmd() *cobra.Command {
	var run bench.EngineRun
	cmd := &cobra.Command{
		Use:    benchEngineCommand,
		Hidden: true,
		Args:   exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c.configPath == "" {
				return usagef("%s needs --config", benchEngineCommand)
			}
			run.ConfigPath = c.configPath
			res, err := bench.RunEngine(cmd.Context(), run)
			if err != nil {
				return err
			}
			return json.NewEncoder(c.stdout).Encode(res)
		},
	}
	cmd.Flags().StringVar(&run.Backend, "backend", bench.BackendLocal, "the key's backend")
	cmd.Flags().Float64Var(&run.ThrottleAt, "throttle-at", 0, "throttle the backend's data requests above this rate")
	return cmd
}

// engineInChild runs the engine phase in a child process of this binary.
func (c *cli) engineInChild(ctx context.Context, run bench.EngineRun) (bench.EngineResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return bench.EngineResult{}, fmt.Errorf("find this binary to run the engine phase: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, "--config", run.ConfigPath, benchEngineCommand,
		"--backend", run.Backend, "--throttle-at", strconv.FormatFloat(run.ThrottleAt, 'g', -1, 64))
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

// runInChild runs one rekey command on configPath in a child process of
// this binary (the --with-writers loop); a failure's error carries its
// stderr.
func runInChild(ctx context.Context, configPath string, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, append([]string{"--config", configPath}, args...)...)
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("rekey %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(errb.Bytes()))
	}
	return nil
}

func (c *cli) runBench(ctx context.Context, o bench.Options) error {
	o.Engine = c.engineInChild
	o.RunCLI = runInChild
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
	fmt.Fprintf(w, "rekey bench: %d DEKs, store %s, backend %s, batch_size %d, concurrency %d, kms_rate_limit %v, range_workers %d (%s, in %s)\n\n",
		res.DEKs, res.Store, res.Backend, res.Settings.BatchSize, res.Settings.Concurrency, res.Settings.RateLimit, res.Engine.RangeWorkers,
		time.Now().UTC().Format("2006-01-02"), time.Since(start).Round(time.Second))
	fmt.Fprintf(w, "%-36s %14s\n", "what", "DEKs/s")
	fmt.Fprintf(w, "%-36s %14.0f   (%.2f s, peak RSS %.1f MB, %.2f backend calls/DEK)\n", "engine (full rotation)",
		res.Engine.DEKsPerS, res.Engine.Seconds, float64(res.Engine.PeakRSSBytes)/1e6, res.Engine.BackendCallsPerDEK)
	fmt.Fprintf(w, "%-36s %14.0f\n", fmt.Sprintf("naive (%d DEKs)", res.Naive.DEKs), res.Naive.DEKsPerS)
	fmt.Fprintf(w, "%-36s %14.0f\n", "floor: crypto only", res.Floor.CryptoDEKsPerS)
	fmt.Fprintf(w, "%-36s %14.0f\n", "floor: store only (deks table)", res.Floor.StoreRowsPerS)
	fmt.Fprintf(w, "%-36s %14.0f\n", "floor: minimal table", res.Floor.MinimalStoreRowsPerS)
	if res.Floor.RawRewrapPerS > 0 {
		fmt.Fprintf(w, "%-36s %14.0f   (%d at a time; mean of %.0f before the engine, %.0f after)\n", "raw ReEncrypt of the endpoint",
			res.Floor.RawRewrapPerS, res.Settings.Concurrency, res.Floor.RawRewrapBeforePerS, res.Floor.RawRewrapAfterPerS)
	}
	fmt.Fprintf(w, "\nengine/naive %.2f   engine/floor %.2f   engine/minimal %.2f", res.Ratios.EngineVsNaive, res.Ratios.EngineVsFloor, res.Ratios.EngineVsMinimal)
	if res.Floor.RawRewrapPerS > 0 {
		fmt.Fprintf(w, "   engine/raw %.2f", res.Ratios.EngineVsRawRewrap)
	}
	fmt.Fprintln(w)
	if t := res.Engine.Throttle; t != nil {
		fmt.Fprintf(w, "\nthrottled above %v requests/s: the engine sustained %.0f requests/s; %d of its %d requests throttled (%.2f%%); rate at the end %.0f/s\n",
			t.ThrottleAt, t.SustainedReqPerS, t.Throttled, t.Requests, 100*t.ThrottledShare, t.FinalRate)
	}
	if wr := res.Writers; wr != nil {
		fmt.Fprintf(w, "\nwriters during the engine phase: %d commands (%d dek create, %d decrypt): p50 %.0f ms, p99 %.0f ms, max %.0f ms; %d \"database is locked\", %d other errors\n",
			wr.Ops, wr.DEKCreates, wr.Decrypts, wr.P50Ms, wr.P99Ms, wr.MaxMs, wr.LockedErrors, wr.OtherErrors)
		fmt.Fprintf(w, "the same commands before the rotation: p50 %.0f ms, max %.0f ms\n", wr.BaselineP50Ms, wr.BaselineMaxMs)
		if wr.FirstError != "" {
			fmt.Fprintf(w, "first error: %s\n", wr.FirstError)
		}
	}
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

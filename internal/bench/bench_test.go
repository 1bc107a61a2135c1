package bench_test

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey/internal/bench"
)

func checkResult(t *testing.T, res bench.Result, n int) {
	t.Helper()
	if res.DEKs != n || res.Engine.DEKs != n {
		t.Fatalf("deks = %d, re-wrapped %d; want %d", res.DEKs, res.Engine.DEKs, n)
	}
	if res.Engine.DEKsPerS <= 0 || res.Engine.Seconds <= 0 || res.Engine.PeakRSSBytes <= 0 {
		t.Errorf("engine = %+v, want positive figures", res.Engine)
	}
	// The local backend re-wraps each DEK in memory with no request: one
	// unwrap and one wrap, or a batch call, per DEK at most.
	if res.Engine.BackendCallsPerDEK <= 0 || res.Engine.BackendCallsPerDEK > 2.1 {
		t.Errorf("backend calls per DEK = %v, want in (0, 2.1]", res.Engine.BackendCallsPerDEK)
	}
	if res.Naive.DEKs != min(n, bench.NaiveMax) || res.Naive.DEKsPerS <= 0 {
		t.Errorf("naive = %+v", res.Naive)
	}
	if res.Floor.CryptoDEKsPerS <= 0 || res.Floor.StoreRowsPerS <= 0 || res.Floor.MinimalStoreRowsPerS <= 0 {
		t.Errorf("floor = %+v, want positive figures", res.Floor)
	}
	if res.Ratios.EngineVsNaive <= 0 || res.Ratios.EngineVsFloor <= 0 || res.Ratios.EngineVsMinimal <= 0 {
		t.Errorf("ratios = %+v, want positive figures", res.Ratios)
	}
}

func TestRunSQLite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var phases []string
	res, err := bench.Run(t.Context(), bench.Options{DEKs: 3000, Store: bench.StoreSQLite, Backend: bench.BackendLocal, Dir: dir,
		Progress: func(phase string, done, total int) {
			if len(phases) == 0 || phases[len(phases)-1] != phase {
				phases = append(phases, phase)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, 3000)
	if res.Engine.RangeWorkers != 1 {
		t.Errorf("range workers of the engine on SQLite = %d, want 1 (its single writer)", res.Engine.RangeWorkers)
	}
	if got := strings.Join(phases, ","); got != "seed,engine,naive,crypto floor,store floor,minimal store" {
		t.Errorf("phases %s", got)
	}
	// Nothing is left behind.
	left, err := os.ReadDir(dir)
	if err != nil || len(left) != 0 {
		t.Errorf("left in the temporary directory: %v, %v", left, err)
	}
}

func TestRunPostgres(t *testing.T) {
	dsn := os.Getenv("REKEY_TEST_PG_DSN")
	if dsn == "" {
		const how = "REKEY_TEST_PG_DSN is not set: start a throwaway PostgreSQL with `eval \"$(scripts/pg start)\"`, or run scripts/test"
		if os.Getenv("CI") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	for _, workers := range []int{0, 3} {
		res, err := bench.Run(context.Background(), bench.Options{DEKs: 2000, Store: bench.StorePostgres, Backend: bench.BackendLocal, DSN: dsn, Dir: t.TempDir(), RangeWorkers: workers})
		if err != nil {
			t.Fatal(err)
		}
		checkResult(t, res, 2000)
		// worker.range_workers reaches the engine; 0 is the store's
		// choice, 2 for PostgreSQL.
		if want := max(workers, 2); res.Engine.RangeWorkers != want || res.Settings.RangeWorkers != workers {
			t.Errorf("RangeWorkers %d: the engine worked %d ranges at once (settings say %d), want %d",
				workers, res.Engine.RangeWorkers, res.Settings.RangeWorkers, want)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	good := bench.Options{DEKs: 1, Store: "sqlite", Backend: "local"}
	for _, o := range []bench.Options{
		good,
		{DEKs: 1, Store: "sqlite", Backend: "awskms", Endpoint: "http://127.0.0.1:4599", ThrottleAt: 500, WithWriters: true},
		{DEKs: 1, Store: "sqlite", Backend: "awskms", Endpoint: "https://kms.eu-west-1.amazonaws.com/"},
	} {
		if err := o.Validate(); err != nil {
			t.Fatalf("good options %+v: %v", o, err)
		}
	}
	for _, c := range []struct {
		mut  func(*bench.Options)
		want string
	}{
		{func(o *bench.Options) { o.DEKs = 0 }, "--deks"},
		{func(o *bench.Options) { o.Store = "mysql" }, "--store"},
		{func(o *bench.Options) { o.Backend = "vault" }, "--backend"},
		{func(o *bench.Options) { o.Store = "postgres" }, "--dsn"},
		{func(o *bench.Options) { o.BatchSize = 200_000 }, "--batch-size"},
		{func(o *bench.Options) { o.Concurrency = -1 }, "--concurrency"},
		{func(o *bench.Options) { o.RateLimit = -1 }, "--kms-rate-limit"},
		{func(o *bench.Options) { o.RangeWorkers = 65 }, "--range-workers"},
		{func(o *bench.Options) { o.Backend = "awskms" }, "--endpoint"},
		{func(o *bench.Options) { o.Endpoint = "http://127.0.0.1:4599" }, "--endpoint"},
		{func(o *bench.Options) { o.Backend, o.Endpoint = "awskms", "ftp://127.0.0.1:21" }, "--endpoint"},
		{func(o *bench.Options) { o.Backend, o.Endpoint = "awskms", "http://127.0.0.1:4599/kms" }, "--endpoint"},
		{func(o *bench.Options) { o.ThrottleAt = -1 }, "--throttle-at"},
		{func(o *bench.Options) { o.ThrottleAt = math.NaN() }, "--throttle-at"},
		{func(o *bench.Options) { o.ThrottleAt = math.Inf(1) }, "--throttle-at"},
	} {
		o := good
		c.mut(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %s", o, err, c.want)
		}
	}
}

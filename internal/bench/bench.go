// Package bench measures rekey's re-wrap on a throwaway store: the real
// engine (the code path of `rekey run`), the article's naive algorithm, and
// the floors (crypto only, store only, a minimal table), with the ratios
// between them. It is what `rekey bench` runs. Everything happens in a
// fresh temporary directory (and, for PostgreSQL, a fresh schema dropped
// afterwards): never on a user's data.
package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx" for the naive and floor phases
	_ "github.com/mattn/go-sqlite3"    // database/sql driver "sqlite3"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/setup"
)

// Stores and backends Run supports.
const (
	StoreSQLite   = "sqlite"
	StorePostgres = "postgres"
	BackendLocal  = "local"
	BackendAWSKMS = "awskms"
)

// KeyName is the root key the bench creates in its temporary store.
const KeyName = "bench"

// NaiveMax is the most DEKs the naive phase re-wraps (it is slow).
const NaiveMax = 100_000

// EnvAWSEndpoint is the environment variable `rekey bench --backend
// awskms` reads the KMS endpoint from when --endpoint is not given (the
// one scripts/localkms prints).
const EnvAWSEndpoint = "REKEY_TEST_AWSKMS_ENDPOINT"

// EnvDSN is the environment variable that carries the PostgreSQL DSN into
// the temporary configuration (as ${REKEY_BENCH_DSN}), so that no
// password is written to a file.
const EnvDSN = "REKEY_BENCH_DSN"

// Options configures Run.
type Options struct {
	DEKs    int    // DEKs to seed and re-wrap (at least 1)
	Store   string // StoreSQLite or StorePostgres
	Backend string // BackendLocal or BackendAWSKMS
	DSN     string // PostgreSQL server for a fresh schema (Store postgres)
	// Endpoint is the AWS KMS endpoint of BackendAWSKMS,
	// http(s)://host[:port] (the local-kms emulator). Credentials come
	// from the AWS SDK's default chain; for an emulator on a loopback
	// address with none in the environment, Run sets dummy ones.
	Endpoint string
	// ThrottleAt, when above 0, wraps the backend of the engine phase in
	// kms/faultkms throttling its data requests (wrap, unwrap, rewrap,
	// rewrap_batch) above this many per second, inside the middleware, so
	// that the middleware's adaptive rate meets it; EngineResult.Throttle
	// reports what happened.
	ThrottleAt float64
	// WithWriters runs a loop of `rekey dek create` and `rekey decrypt`
	// (through RunCLI, another process) against the bench's home during
	// the engine phase, and reports their latency and errors in
	// Result.Writers.
	WithWriters bool
	// RunCLI runs one rekey command on the configuration at configPath in
	// another process and returns its error (with its stderr in the
	// message). WithWriters needs it; `rekey bench` runs its own binary.
	RunCLI      func(ctx context.Context, configPath string, args ...string) error
	BatchSize   int     // worker.batch_size; 0 = the default
	Concurrency int     // worker.concurrency; 0 = the default
	RateLimit   float64 // worker.kms_rate_limit; 0 = none
	// RangeWorkers is worker.range_workers; 0 = the store's choice.
	RangeWorkers int
	// Dir is the parent of the temporary directory; "" = os.TempDir().
	Dir string
	// Engine runs the engine phase (`rekey bench` runs it in a child
	// process, for a fair peak RSS); nil runs RunEngine in this process.
	Engine func(ctx context.Context, run EngineRun) (EngineResult, error)
	// Progress, when set, is told how far each phase is.
	Progress func(phase string, done, total int)
	// Logger receives the parts' logs; nil discards them.
	Logger *slog.Logger
}

// Result is what Run measured; its JSON is the `rekey bench --json`
// contract.
type Result struct {
	DEKs    int          `json:"deks"`
	Store   string       `json:"store"`
	Backend string       `json:"backend"`
	Engine  EngineResult `json:"engine"`
	Naive   NaiveResult  `json:"naive"`
	Floor   FloorResult  `json:"floor"`
	Ratios  Ratios       `json:"ratios"`
	// Settings are the worker settings in force.
	Settings Settings `json:"settings"`
	// Writers is what the other process saw during the engine phase
	// (Options.WithWriters); nil without.
	Writers *WritersResult `json:"writers,omitempty"`
}

// EngineResult is a full rotation by the engine.
type EngineResult struct {
	DEKsPerS           float64 `json:"deks_per_s"`
	Seconds            float64 `json:"seconds"`
	PeakRSSBytes       int64   `json:"peak_rss_bytes"`
	BackendCallsPerDEK float64 `json:"backend_calls_per_dek"`
	// DEKs is how many DEKs the rotation re-wrapped.
	DEKs int `json:"rewrapped"`
	// RangeWorkers is how many ranges the engine re-wrapped at once
	// (worker.range_workers, or the store's choice).
	RangeWorkers int `json:"range_workers"`
	// Throttle is what the throttling of Options.ThrottleAt did; nil
	// without it.
	Throttle *ThrottleResult `json:"throttle,omitempty"`
}

// ThrottleResult is the engine phase against a backend throttling above
// a request rate (Options.ThrottleAt).
type ThrottleResult struct {
	// ThrottleAt is the rate above which the backend refused requests.
	ThrottleAt float64 `json:"throttle_at"`
	// Requests counts the engine's backend requests, every try of a
	// retried call included; Throttled those refused for the rate.
	Requests  int64 `json:"requests"`
	Throttled int64 `json:"throttled"`
	// ThrottledShare is Throttled / Requests.
	ThrottledShare float64 `json:"throttled_share"`
	// SustainedReqPerS is the requests that succeeded per second of the
	// engine phase.
	SustainedReqPerS float64 `json:"sustained_req_per_s"`
	// FinalRate is the middleware's request rate at the end (0: no
	// limit).
	FinalRate float64 `json:"final_rate"`
}

// NaiveResult is the article's algorithm on min(DEKs, NaiveMax) DEKs.
type NaiveResult struct {
	DEKs     int     `json:"deks"`
	DEKsPerS float64 `json:"deks_per_s"`
}

// FloorResult holds the floors: what crypto alone and the store alone do.
type FloorResult struct {
	CryptoDEKsPerS       float64 `json:"crypto_deks_per_s"`
	StoreRowsPerS        float64 `json:"store_rows_per_s"`
	MinimalStoreRowsPerS float64 `json:"minimal_store_rows_per_s"`
	// RawRewrapPerS is the backend's own re-wrap with nothing of rekey's
	// around it: for awskms, ReEncrypt calls of the AWS SDK straight to
	// the endpoint, Settings.Concurrency at a time, the ciphertext
	// discarded (0 for the local backend). It is the mean of two
	// measures of every DEK, RawRewrapBeforePerS just before the engine
	// phase (under the DEKs' own KMS key) and RawRewrapAfterPerS after
	// it, so that the baseline brackets the engine: the emulator's speed
	// drifts by ±25% between phases on a shared 2-core machine.
	RawRewrapPerS       float64 `json:"raw_rewrap_per_s,omitempty"`
	RawRewrapBeforePerS float64 `json:"raw_rewrap_before_per_s,omitempty"`
	RawRewrapAfterPerS  float64 `json:"raw_rewrap_after_per_s,omitempty"`
}

// Ratios compare the engine with the others: engine_vs_floor is the
// engine over min(crypto floor, store floor).
type Ratios struct {
	EngineVsNaive   float64 `json:"engine_vs_naive"`
	EngineVsFloor   float64 `json:"engine_vs_floor"`
	EngineVsMinimal float64 `json:"engine_vs_minimal"`
	// EngineVsRawRewrap is the engine over FloorResult.RawRewrapPerS
	// (awskms only).
	EngineVsRawRewrap float64 `json:"engine_vs_raw_rewrap,omitempty"`
}

// Settings are the worker settings and store pragmas of the run.
type Settings struct {
	BatchSize   int     `json:"batch_size"`
	Concurrency int     `json:"concurrency"`
	RateLimit   float64 `json:"kms_rate_limit"`
	// RangeWorkers is worker.range_workers (0: the store's choice).
	RangeWorkers int    `json:"range_workers"`
	StoreNotes   string `json:"store_notes"`
	// ThrottleAt is Options.ThrottleAt (0: none).
	ThrottleAt float64 `json:"throttle_at,omitempty"`
	// Endpoint is the awskms endpoint.
	Endpoint string `json:"endpoint,omitempty"`
	// AliasPrefix starts the aliases of the run's KMS keys (awskms); the
	// keys are scheduled for deletion when the run ends.
	AliasPrefix string `json:"alias_prefix,omitempty"`
}

// Validate returns an error naming the first bad field.
func (o Options) Validate() error {
	switch {
	case o.DEKs < 1:
		return fmt.Errorf("--deks %d: give a number of DEKs of at least 1", o.DEKs)
	case o.Store != StoreSQLite && o.Store != StorePostgres:
		return fmt.Errorf("--store %q: use sqlite or postgres", o.Store)
	case o.Backend != BackendLocal && o.Backend != BackendAWSKMS:
		return fmt.Errorf("--backend %q: use local or awskms", o.Backend)
	case o.Backend == BackendAWSKMS && o.Endpoint == "":
		return errors.New("--backend awskms needs a KMS endpoint: give --endpoint http://127.0.0.1:PORT (start local-kms with `eval \"$(scripts/localkms start)\"`) or set " + EnvAWSEndpoint)
	case o.Backend != BackendAWSKMS && o.Endpoint != "":
		return fmt.Errorf("--endpoint %q is for --backend awskms: leave it out, or add --backend awskms", o.Endpoint)
	case o.Endpoint != "" && !validEndpoint(o.Endpoint):
		return fmt.Errorf("--endpoint %q is not a KMS endpoint: use http(s)://host[:port] with no path", o.Endpoint)
	case o.ThrottleAt < 0 || math.IsNaN(o.ThrottleAt) || math.IsInf(o.ThrottleAt, 0):
		return fmt.Errorf("--throttle-at %v: give a positive rate per second above which the backend refuses requests (0: no throttling)", o.ThrottleAt)
	case o.Store == StorePostgres && o.DSN == "":
		return errors.New("--store postgres needs a server: give --dsn or set REKEY_TEST_PG_DSN (a fresh schema is made there and dropped after)")
	case o.BatchSize < 0 || o.BatchSize > 100_000:
		return fmt.Errorf("--batch-size %d: use 1 to 100000 (0: the default)", o.BatchSize)
	case o.Concurrency < 0 || o.Concurrency > 256:
		return fmt.Errorf("--concurrency %d: use 1 to 256 (0: the default)", o.Concurrency)
	case o.RangeWorkers < 0 || o.RangeWorkers > config.MaxRangeWorkers:
		return fmt.Errorf("--range-workers %d: use 1 to %d (0: the store's choice)", o.RangeWorkers, config.MaxRangeWorkers)
	case o.RateLimit < 0 || math.IsNaN(o.RateLimit) || math.IsInf(o.RateLimit, 0):
		return fmt.Errorf("--kms-rate-limit %v: give 0 (none) or a positive rate per second", o.RateLimit)
	}
	return nil
}

// Run seeds o.DEKs DEKs under a fresh key in a temporary store and
// measures the engine, the naive algorithm and the floors. It removes
// what it made (the directory, the PostgreSQL schema) before it returns.
func Run(ctx context.Context, o Options) (res Result, err error) {
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = func(string, int, int) {}
	}
	if o.Engine == nil {
		o.Engine = RunEngine
	}
	if o.WithWriters && o.RunCLI == nil {
		return Result{}, errors.New("bench: WithWriters needs Options.RunCLI (the writers are another process)")
	}
	dir, err := os.MkdirTemp(o.Dir, "rekey-bench-")
	if err != nil {
		return Result{}, fmt.Errorf("bench: make a temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)

	env := &runEnv{o: o, dir: dir, cfgPath: filepath.Join(dir, "rekey.yaml")}
	defer func() {
		if cerr := env.cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := env.writeConfig(ctx); err != nil {
		return Result{}, err
	}
	if err := env.seed(ctx); err != nil {
		return Result{}, err
	}
	if err := env.settle(ctx, "deks"); err != nil {
		return Result{}, err
	}
	res = Result{DEKs: o.DEKs, Store: o.Store, Backend: o.Backend, Settings: env.settings}

	// The rate limit is the engine's alone: seeding, the naive phase and
	// the crypto floor run without it.
	if err := env.setRateLimit(o.RateLimit); err != nil {
		return Result{}, err
	}
	if o.Backend == BackendAWSKMS {
		if res.Floor.RawRewrapBeforePerS, err = env.rawRewrapBefore(ctx); err != nil {
			return Result{}, err
		}
	}
	var writers *writerLoop
	if o.WithWriters {
		if writers, err = env.startWriters(ctx); err != nil {
			return Result{}, err
		}
	}
	o.Progress("engine", 0, o.DEKs)
	res.Engine, err = o.Engine(ctx, EngineRun{ConfigPath: env.cfgPath, Backend: o.Backend, ThrottleAt: o.ThrottleAt})
	if writers != nil {
		w := writers.stop()
		res.Writers = &w
	}
	if err != nil {
		return Result{}, fmt.Errorf("bench: engine phase: %w", err)
	}
	if err := env.setRateLimit(0); err != nil {
		return Result{}, err
	}
	o.Progress("engine", o.DEKs, o.DEKs)
	// The writers' DEKs made before the rotation's new version are
	// re-wrapped too.
	if res.Engine.DEKs != o.DEKs && (!o.WithWriters || res.Engine.DEKs < o.DEKs) {
		return Result{}, fmt.Errorf("bench: the rotation re-wrapped %d DEKs of %d", res.Engine.DEKs, o.DEKs)
	}
	if err := env.measureOthers(ctx, &res); err != nil {
		return Result{}, err
	}
	floor := math.Min(res.Floor.CryptoDEKsPerS, res.Floor.StoreRowsPerS)
	res.Ratios = Ratios{
		EngineVsNaive:     ratio(res.Engine.DEKsPerS, res.Naive.DEKsPerS),
		EngineVsFloor:     ratio(res.Engine.DEKsPerS, floor),
		EngineVsMinimal:   ratio(res.Engine.DEKsPerS, res.Floor.MinimalStoreRowsPerS),
		EngineVsRawRewrap: ratio(res.Engine.DEKsPerS, res.Floor.RawRewrapPerS),
	}
	return res, nil
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return math.Round(a/b*1000) / 1000
}

// runEnv is one run's temporary world.
type runEnv struct {
	o        Options
	dir      string
	cfgPath  string
	schema   string // PostgreSQL: the fresh schema
	settings Settings
	ref      string // the key's backend reference, once seeded
}

// writeConfig makes the embedded default in dir (local backend, master key
// file 0600, SQLite), then points it at PostgreSQL and sets the worker
// settings asked for.
func (e *runEnv) writeConfig(ctx context.Context) error {
	sys, err := setup.Open(ctx, setup.Options{Home: e.dir, Getenv: func(string) string { return "" }})
	if err != nil {
		return fmt.Errorf("bench: make the temporary home: %w", err)
	}
	if err := sys.Close(); err != nil {
		return fmt.Errorf("bench: make the temporary home: %w", err)
	}
	b, err := os.ReadFile(e.cfgPath)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	cfg := string(b)
	replace := func(old, new string) error {
		if !strings.Contains(cfg, old) {
			return fmt.Errorf("bench: the default configuration has no %q to rewrite", old)
		}
		cfg = strings.Replace(cfg, old, new, 1)
		return nil
	}
	e.settings = Settings{BatchSize: 1000, Concurrency: 8, RateLimit: e.o.RateLimit, RangeWorkers: e.o.RangeWorkers}
	if e.o.BatchSize > 0 {
		e.settings.BatchSize = e.o.BatchSize
	}
	if e.o.Concurrency > 0 {
		e.settings.Concurrency = e.o.Concurrency
	}
	for _, r := range [][2]string{
		{"batch_size: 1000", fmt.Sprintf("batch_size: %d", e.settings.BatchSize)},
		{"concurrency: 8", fmt.Sprintf("concurrency: %d", e.settings.Concurrency)},
		{"range_workers: 0", fmt.Sprintf("range_workers: %d", e.settings.RangeWorkers)},
		{"level: info", "level: warn"},
	} {
		if err := replace(r[0], r[1]); err != nil {
			return err
		}
	}
	if e.o.Backend == BackendAWSKMS {
		if err := e.setupAWS(replace); err != nil {
			return err
		}
	}
	e.settings.ThrottleAt = e.o.ThrottleAt
	e.settings.StoreNotes = "SQLite (mattn/go-sqlite3, cgo): WAL, synchronous=NORMAL, one writer connection; file in " + os.TempDir()
	if e.o.Store == StorePostgres {
		if err := e.makeSchema(ctx); err != nil {
			return err
		}
		if err := os.Remove(filepath.Join(e.dir, "rekey.db")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("bench: %w", err)
		}
		if err := replace("driver: sqlite", "driver: postgres"); err != nil {
			return err
		}
		if err := replace("dsn: rekey.db", "dsn: ${"+EnvDSN+"}"); err != nil {
			return err
		}
		// The DSN (with any password) stays in the environment, inherited
		// by the engine's child process, never in the file.
		if err := os.Setenv(EnvDSN, e.pgDSN()); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		e.settings.StoreNotes = "PostgreSQL (pgx pool), schema " + e.schema + " on the server of --dsn"
	}
	return os.WriteFile(e.cfgPath, []byte(cfg), 0o600)
}

// setRateLimit sets worker.kms_rate_limit in the temporary configuration,
// and the rate_limit of the awskms backend (which has a default of its
// own otherwise); 0 is none.
func (e *runEnv) setRateLimit(rps float64) error {
	b, err := os.ReadFile(e.cfgPath)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	lines := strings.Split(string(b), "\n")
	found := false
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if name, _, ok := strings.Cut(t, ":"); ok && (name == "kms_rate_limit" || name == "rate_limit") {
			indent := l[:len(l)-len(strings.TrimLeft(l, " "))]
			lines[i] = fmt.Sprintf("%s%s: %v", indent, name, rps)
			found = true
		}
	}
	if !found {
		return fmt.Errorf("bench: the configuration has no kms_rate_limit to set")
	}
	return os.WriteFile(e.cfgPath, []byte(strings.Join(lines, "\n")), 0o600)
}

func (e *runEnv) pgDSN() string {
	sep := "?"
	if strings.Contains(e.o.DSN, "?") {
		sep = "&"
	}
	return e.o.DSN + sep + "search_path=" + e.schema
}

func (e *runEnv) makeSchema(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, e.o.DSN)
	if err != nil {
		return fmt.Errorf("bench: connect to the PostgreSQL server of --dsn: %w", err)
	}
	defer conn.Close(ctx)
	e.schema = fmt.Sprintf("rekey_bench_%d", time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+e.schema); err != nil {
		e.schema = ""
		return fmt.Errorf("bench: create a fresh schema: %w", err)
	}
	return nil
}

func (e *runEnv) cleanup() error {
	awsErr := e.cleanupAWS()
	if err := e.dropSchema(); err != nil {
		return err
	}
	return awsErr
}

func (e *runEnv) dropSchema() error {
	if e.schema == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.o.DSN)
	if err != nil {
		return fmt.Errorf("bench: drop schema %s: %w (drop it by hand)", e.schema, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA "+e.schema+" CASCADE"); err != nil {
		return fmt.Errorf("bench: drop schema %s: %w (drop it by hand)", e.schema, err)
	}
	return nil
}

func (e *runEnv) open(ctx context.Context) (*setup.System, error) {
	sys, err := setup.Open(ctx, setup.Options{ConfigPath: e.cfgPath, Logger: e.o.Logger, NoCreate: true})
	if err != nil {
		return nil, fmt.Errorf("bench: open the temporary store: %w", err)
	}
	return sys, nil
}

// seed creates the key and o.DEKs DEKs under it.
func (e *runEnv) seed(ctx context.Context) error {
	sys, err := e.open(ctx)
	if err != nil {
		return err
	}
	defer sys.Close()
	k, err := sys.Keyring.CreateKey(ctx, KeyName, e.o.Backend, rekey.DefaultPolicy())
	if err != nil {
		return fmt.Errorf("bench: create the key: %w", err)
	}
	e.ref = k.BackendRef
	const chunk = 10_000
	for done := 0; done < e.o.DEKs; {
		e.o.Progress("seed", done, e.o.DEKs)
		n := min(chunk, e.o.DEKs-done)
		if _, err := sys.Keyring.NewDEKs(ctx, KeyName, "", n); err != nil {
			return fmt.Errorf("bench: seed DEKs: %w", err)
		}
		done += n
	}
	e.o.Progress("seed", e.o.DEKs, e.o.DEKs)
	return nil
}

// settle leaves table as a long-lived store would have it before a
// measured phase, so that no phase pays for the one before it: on
// PostgreSQL a VACUUM (ANALYZE) (rows just inserted or rewritten by the
// phase before would otherwise set off autovacuum during this one, and
// every first read of a fresh row writes its hint bits), on SQLite a
// checkpoint that empties the write-ahead log. The vacuum that a phase's
// own writes set off is that phase's cost.
func (e *runEnv) settle(ctx context.Context, table string) error {
	db, d, err := e.db()
	if err != nil {
		return fmt.Errorf("bench: open the store's database: %w", err)
	}
	defer db.Close()
	q := "PRAGMA wal_checkpoint(TRUNCATE)"
	if d.pg {
		q = "VACUUM (ANALYZE) " + table
	}
	if _, err := db.ExecContext(ctx, q); err != nil {
		return fmt.Errorf("bench: settle the store before a phase (%s): %w", q, err)
	}
	return nil
}

// db opens the store's database directly, for the naive and floor phases.
func (e *runEnv) db() (*sql.DB, dialect, error) {
	if e.o.Store == StorePostgres {
		db, err := sql.Open("pgx", e.pgDSN())
		return db, dialect{pg: true}, err
	}
	// The store's own settings (sqlitestore): WAL (set on the file),
	// synchronous=NORMAL, a busy timeout, one writer.
	db, err := sql.Open("sqlite3", filepath.Join(e.dir, "rekey.db")+"?_busy_timeout=5000&_synchronous=NORMAL&_txlock=immediate")
	if err != nil {
		return nil, dialect{}, err
	}
	db.SetMaxOpenConns(1)
	return db, dialect{}, nil
}

// dialect writes the few SQL differences.
type dialect struct{ pg bool }

// p returns the i-th placeholder (1-based).
func (d dialect) p(i int) string {
	if d.pg {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

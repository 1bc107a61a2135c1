// Package setup is rekey's front door: Open resolves the configuration
// exactly as the rekey command does, opens the store and every backend
// (each wrapped once in the middleware: rate limit, retries, metrics, error
// classification), and returns a System with the Keyring an application
// uses, the rotation engine, the worker `rekey run` runs, and the HTTP
// handler it serves.
//
//	sys, err := setup.Open(ctx, setup.Options{})
//	if err != nil { ... }
//	defer sys.Close()
//	ct, err := sys.Keyring.AEAD("payments").Encrypt(ctx, plaintext, associatedData)
package setup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/httpapi"
	"github.com/rekeyhq/rekey/kms/awskms"
	"github.com/rekeyhq/rekey/kms/keyprotect"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/kms/pkcs11"
	"github.com/rekeyhq/rekey/kms/vault"
	"github.com/rekeyhq/rekey/metrics"
	"github.com/rekeyhq/rekey/retry"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/source"
	"github.com/rekeyhq/rekey/store/pgstore"
	"github.com/rekeyhq/rekey/store/retrystore"
	"github.com/rekeyhq/rekey/store/sqlitestore"
	"github.com/rekeyhq/rekey/worker"
)

// Environment variables Open reads (through Options.Getenv).
const (
	EnvConfig     = "REKEY_CONFIG"
	EnvHome       = "REKEY_HOME"
	EnvWorkerID   = "REKEY_WORKER_ID"
	EnvFailpoints = failpoint.EnvVar
)

// Options says where the configuration is and what to inject. Zero values
// resolve exactly as the rekey command does: ConfigPath (--config), else
// $REKEY_CONFIG, else ./rekey.yaml, else the embedded default in
// $REKEY_HOME (default ./rekey-data), created on first use; the local
// backend's master key from $REKEY_MASTER_KEY or its key file.
type Options struct {
	// ConfigPath is the configuration file; empty resolves as above.
	ConfigPath string
	// Home is the embedded default's directory, used instead of
	// $REKEY_CONFIG, ./rekey.yaml and $REKEY_HOME when ConfigPath is empty.
	Home string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Logger receives the logs of every part; nil means LoggerFor, else
	// the logs are discarded.
	Logger *slog.Logger
	// LoggerFor, when Logger is nil, makes the logger once the
	// configuration is loaded (its log: section says the format and
	// level).
	LoggerFor func(*config.Config) *slog.Logger
	// Registerer receives rekey's metrics. Nil means a registry of the
	// System's own (with the Go and process collectors), served by
	// Handler; a Registerer that is also a prometheus.Gatherer is served
	// by Handler too.
	Registerer prometheus.Registerer
	// Now is the clock of every part; nil means time.Now.
	Now func() time.Time
	// Clock is the worker's clock (its wait between cycles); nil means
	// the real clock (with Now, when given, for timestamps).
	Clock worker.Clock
	// Actor names who acts in the audit events the Keyring writes; empty
	// means "library".
	Actor string
	// TolerateBackendErrors makes a backend that cannot be opened a
	// backend whose every call fails with that error, instead of failing
	// Open: keys on it fail each cycle, loudly, and the others still
	// rotate (what `rekey run` wants).
	TolerateBackendErrors bool
	// NoCreate refuses to create the embedded default when it does not
	// exist yet (Open then fails with an error matching fs.ErrNotExist).
	NoCreate bool
	// ReadOnly opens for reading only: the SQLite store is opened
	// read-only and Close writes no audit checkpoint. (The embedded
	// default is still created on first use, unless NoCreate.) Commands that only read (status, key list/show, dek
	// show, plan, audit list/verify/export, report, decrypt) use it, so
	// that they work on a read-only copy of a home.
	ReadOnly bool
	// WrapBackend, when set, wraps each backend as it is opened, inside the
	// middleware (the middleware's rate limit, retries and metrics see
	// what it returns): `rekey bench --throttle-at` puts kms/faultkms
	// there. name is the backend's configuration key. Nil: none.
	WrapBackend func(name string, inner rekey.KMS) rekey.KMS
}

// System is rekey opened from one configuration. Close it when done.
type System struct {
	// Config is the configuration in force.
	Config *config.Config
	// ConfigPath is the file it was read from.
	ConfigPath string
	// Home is the directory the configuration's relative paths resolve
	// against, where the audit anchor is kept.
	Home string
	// Created lists the files Open created (the embedded default on first
	// use); empty otherwise.
	Created []string
	// Store is the store, wrapped in the retry decorator.
	Store rekey.Store
	// Backends are the configured backends by name, each wrapped in the
	// middleware.
	Backends map[string]rekey.KMS
	// Keyring is what an application uses: keys, DEKs, AEAD, data keys.
	Keyring *rekey.Keyring
	// Engine is the rotation engine (plan, rotate, retire, cycles).
	Engine *rotation.Engine
	// Worker is the daemon's loop, ready to Start or Run.
	Worker *worker.Worker
	// Metrics feeds the Prometheus metrics.
	Metrics *metrics.Metrics
	// Audit checkpoints and verifies the audit trail.
	Audit *audit.Keeper
	// Logger is the logger every part writes to.
	Logger *slog.Logger
	// Sources are the DEK sources (dek_sources): the application's own
	// tables the engine rotates in place.
	Sources []*source.Source

	gatherer  prometheus.Gatherer
	now       func() time.Time
	readOnly  bool
	auditHead int64
	handler   http.Handler
}

// Open resolves the configuration, creates the embedded default on first
// use (unless NoCreate), and opens the store and the backends. Errors name
// the file or field that is wrong and how to fix it; nothing is left open
// after an error.
func Open(ctx context.Context, o Options) (sys *System, err error) {
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	s := &System{now: now}
	defer func() {
		if err != nil {
			s.closeParts()
		}
	}()
	if err := s.resolve(ctx, o, getenv); err != nil {
		return nil, err
	}
	logger := o.Logger
	switch {
	case logger != nil:
	case o.LoggerFor != nil:
		logger = o.LoggerFor(s.Config)
	default:
		logger = slog.New(slog.DiscardHandler)
	}
	s.Logger = logger

	reg, gatherer := o.Registerer, prometheus.Gatherer(nil)
	if reg == nil {
		r := prometheus.NewRegistry()
		r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg, gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		gatherer = g
	}
	s.gatherer = gatherer

	s.readOnly = o.ReadOnly
	st, err := openStore(ctx, s.Config, s.ConfigPath, logger, o.ReadOnly)
	if err != nil {
		return nil, err
	}
	s.Store = retrystore.Wrap(st, retry.Policy{})

	if s.Metrics, err = metrics.New(reg, metrics.Options{Store: s.Store, Now: now, Backends: s.Config.BackendNames(), KMSOps: kmsmw.Ops(), Logger: logger}); err != nil {
		return nil, err
	}
	if s.Backends, err = openBackends(ctx, s.Config, s.Store, getenv, logger, s.Metrics, o.TolerateBackendErrors, o.WrapBackend); err != nil {
		return nil, err
	}
	s.Metrics.SetBackends(s.Backends)
	actor := o.Actor
	if actor == "" {
		actor = "library"
	}
	s.Keyring = rekey.NewKeyring(s.Store, s.Backends, rekey.WithActor(actor), rekey.WithClock(now))

	fps, err := failpoint.Parse(getenv(EnvFailpoints))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvFailpoints, err)
	}
	if s.Sources, err = openSources(s.Config); err != nil {
		return nil, err
	}
	if err := registerSourceMetrics(reg, s.Store, s.Sources, logger); err != nil {
		return nil, err
	}
	w := s.Config.Worker
	if s.Engine, err = rotation.New(rotation.Config{
		Sources: engineSources(s.Sources),
		Store:   s.Store, Backends: s.Backends, Logger: logger, Now: now,
		Owner: getenv(EnvWorkerID), BatchSize: w.BatchSize, Concurrency: w.Concurrency,
		RangeWorkers: w.RangeWorkers, LeaseTTL: w.LeaseTTL, Failpoints: fps, Observer: s.Metrics,
		DeclaredBackends: declaredBackends(s.Config),
	}); err != nil {
		return nil, err
	}
	// rekey_retirement_blocked counts the sources' rows too.
	s.Metrics.SetSourceCounts(s.sourceCounts())

	s.Audit = &audit.Keeper{Store: s.Store, AnchorPath: filepath.Join(s.Home, "audit.anchor"), StoreID: s.storeID(), Now: now, Logger: logger}
	s.Audit.MACer, s.Audit.KeyID = auditMACer(s.Backends)
	if s.auditHead, err = audit.HeadSeq(ctx, s.Store); err != nil {
		return nil, err
	}
	s.Audit.OpenHead = s.auditHead
	if g, ok := st.(audit.GuardChecker); ok {
		s.Audit.Guards = g
	}
	clock := o.Clock
	if clock == nil {
		clock = nowClock{now}
	}
	if s.Worker, err = worker.New(worker.Config{
		Engine: s.Engine, Store: s.Store, Audit: s.Audit, Gauge: s.Metrics, Reconcile: s.ReconcileKeys,
		Interval: w.CheckInterval, Clock: clock, Logger: logger, AuditSeq: s.auditHead,
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// resolve finds and loads the configuration.
func (s *System) resolve(ctx context.Context, o Options, getenv func(string) string) error {
	var (
		path, home string
		fromFile   bool
	)
	switch {
	case o.ConfigPath != "":
		path, home, fromFile = o.ConfigPath, filepath.Dir(o.ConfigPath), true
	case o.Home != "":
		home = filepath.Clean(o.Home)
		path = filepath.Join(home, config.FileName)
		_, err := os.Stat(path)
		fromFile = err == nil
	default:
		path, home, fromFile = config.Resolve("", getenv)
	}
	if !fromFile {
		if o.NoCreate {
			if _, err := os.Stat(home); err != nil {
				return fmt.Errorf("no rekey configuration found (no --config, $%s, ./rekey.yaml, and no embedded default in %s): run rekey init: %w", EnvConfig, home, err)
			}
		}
		created, err := InitHome(ctx, home, getenv)
		if err != nil && o.ReadOnly && homeComplete(home, getenv) {
			// A complete home without its rekey.yaml that cannot be
			// written (a read-only copy): read it as the embedded
			// default, without the file.
			cfg := config.Default(home)
			if err := cfg.Validate(); err != nil {
				return err
			}
			s.Config, s.ConfigPath, s.Home = cfg, filepath.Join(home, config.FileName), home
			return nil
		}
		if err != nil {
			return err
		}
		s.Created = created
		path = filepath.Join(home, config.FileName)
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	s.Config, s.ConfigPath, s.Home = cfg, path, home
	return nil
}

// homeComplete reports whether home holds every file of the embedded
// default.
func homeComplete(home string, getenv func(string) string) bool {
	_, missing, err := scanHome(home, getenv(EnvMasterKey) != "")
	return err == nil && len(missing) == 0
}

// nowClock is the real clock's waiting with an injected Now.
type nowClock struct{ now func() time.Time }

func (c nowClock) Now() time.Time                         { return c.now() }
func (c nowClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// openStore opens the configured store. It never creates a SQLite file:
// only InitHome does (rekey init, and the first use of the embedded
// default), so that a database deleted from a home is an error, not a new
// empty store beside the keyring whose DEKs it held.
func openStore(ctx context.Context, cfg *config.Config, cfgPath string, logger *slog.Logger, readOnly bool) (rekey.Store, error) {
	switch cfg.Store.Driver {
	case config.DriverSQLite:
		path := cfg.Store.DSN.Value()
		s, err := sqlitestore.Open(ctx, sqlitestore.Config{Path: path, Logger: logger, ReadOnly: readOnly})
		if errors.Is(err, fs.ErrNotExist) {
			return nil, missingStoreError{fmt.Sprintf("store.dsn (in %s): the database file %s does not exist: rekey does not create it again, since the DEKs it held would be lost while their keys stay in the backend. If it was deleted or moved, restore it from backup (or fix store.dsn); for a new setup, run 'rekey init --dir DIR' with a new directory. Nothing was changed",
				cfgPath, path)}
		}
		if errors.Is(err, sqlitestore.ErrReadOnly) {
			return nil, fmt.Errorf("store.dsn (in %s): %w: this command writes to the store; run it on a writable home (the read-only commands status, key list/show, dek show, plan, audit list/verify/export, report and decrypt work on a read-only copy). Nothing was changed", cfgPath, err)
		}
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return s, nil
	case config.DriverPostgres:
		// The PG* environment variables fill in what the DSN leaves out
		// (pgx reads them); errors and logs name the DSN redacted.
		s, err := pgstore.Open(ctx, pgstore.Config{DSN: cfg.Store.DSN.Value(), Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return s, nil
	default:
		return nil, fmt.Errorf("store.driver %q is not available in this build: use sqlite or postgres", cfg.Store.Driver)
	}
}

// missingStoreError is a configured database file that does not exist; it
// matches fs.ErrNotExist.
type missingStoreError struct{ msg string }

func (e missingStoreError) Error() string { return e.msg }
func (e missingStoreError) Unwrap() error { return fs.ErrNotExist }

// openBackends opens every configured backend and wraps each in the
// middleware. With tolerate, a backend that cannot be opened is replaced by
// one whose every call fails with that error. wrap, when not nil, wraps
// each opened backend inside the middleware.
func openBackends(ctx context.Context, cfg *config.Config, st rekey.Store, getenv func(string) string, logger *slog.Logger, obs kmsmw.Observer, tolerate bool, wrap func(string, rekey.KMS) rekey.KMS) (map[string]rekey.KMS, error) {
	out := make(map[string]rekey.KMS, len(cfg.Backends))
	for _, name := range slices.Sorted(maps.Keys(cfg.Backends)) {
		inner, err := openBackend(ctx, name, cfg.Backends[name], getenv, logger, usageLimit(st, name))
		if err != nil {
			err = fmt.Errorf("backend %s: %w", name, err)
			if !tolerate {
				closeBackends(out)
				return nil, err
			}
			logger.Error("backend unavailable: keys on it will fail until it is fixed", "backend", name, "error", err.Error())
			inner = failingKMS{err: err}
			if _, ok := cfg.Backends[name].Settings.(*localkms.Settings); ok {
				// It would MAC the audit checkpoints: it still does, by
				// failing, so that verification says it could not check
				// them instead of skipping them.
				inner = failingMACKMS{failingKMS{err: err}}
			}
		}
		if wrap != nil {
			inner = wrap(name, inner)
		}
		out[name] = kmsmw.Wrap(inner, kmsmw.Options{
			Name: name, RateLimit: config.EffectiveRateLimit(cfg.Backends[name], cfg.Worker.KMSRateLimit), Observer: obs, Logger: logger,
			Usage: &kmsmw.UsageOptions{Counter: st, Limit: usageLimit(st, name)},
		})
	}
	return out, nil
}

// openBackend opens one backend from its settings (config dispatches the
// YAML to each backend package's settings type).
func openBackend(ctx context.Context, name string, b config.BackendConfig, getenv func(string) string, logger *slog.Logger,
	keyLimit func(context.Context, string) (int64, error)) (rekey.KMS, error) {
	switch s := b.Settings.(type) {
	case *localkms.Settings:
		mk, err := masterKeyFromEnv(getenv)
		if err != nil {
			return nil, err
		}
		return localkms.New(ctx, localkms.Config{
			Keyring: s.Keyring, MasterKeyFile: s.MasterKeyFile, MasterKey: mk, Logger: logger, KeyLimit: keyLimit,
		})
	case *keyprotect.Settings:
		key, source, err := keyprotect.APIKey(s, getenv)
		if err != nil {
			return nil, err
		}
		return keyprotect.New(keyprotect.Config{
			Name: name, Endpoint: s.BaseURL(), IAMEndpoint: s.IAMURL(), InstanceID: s.InstanceID,
			APIKey: key, KeySource: source, Logger: logger,
		})
	case *awskms.Settings:
		c := s.Config()
		c.Name, c.Logger = name, logger
		return awskms.New(ctx, c)
	case *pkcs11.Settings:
		pin, err := s.PIN(getenv)
		if err != nil {
			return nil, err
		}
		return pkcs11.New(ctx, pkcs11.Config{
			Module: s.Module, TokenLabel: s.TokenLabel, Slot: s.Slot, PIN: pin, PINSource: s.PINSource(),
			MaxSessions: s.MaxSessions, Logger: logger,
		})
	case *vault.Settings:
		vc, err := s.Config(name, getenv)
		if err != nil {
			return nil, err
		}
		vc.Logger = logger
		return vault.New(ctx, vc)
	default:
		return nil, fmt.Errorf("type %s is not available in this build yet: %w", b.Type, rekey.ErrUnsupported)
	}
}

func closeBackends(bs map[string]rekey.KMS) error {
	var errs []error
	for _, b := range bs {
		if c, ok := b.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// failingKMS stands for a backend that cannot be used (it failed to open):
// every call fails with err, and keys on other backends are unaffected.
type failingKMS struct{ err error }

func (f failingKMS) CreateKey(context.Context, string) (string, error)   { return "", f.err }
func (f failingKMS) CurrentVersion(context.Context, string) (int, error) { return 0, f.err }
func (f failingKMS) RotateKey(context.Context, string) (int, error)      { return 0, f.err }
func (f failingKMS) Wrap(context.Context, string, int, []byte) ([]byte, error) {
	return nil, f.err
}
func (f failingKMS) Unwrap(context.Context, string, int, []byte) ([]byte, error) {
	return nil, f.err
}
func (f failingKMS) Ping(context.Context) error { return f.err }

// failingMACKMS is a failingKMS of a type that MACs (the local backend):
// its MAC fails with the same error.
type failingMACKMS struct{ failingKMS }

func (f failingMACKMS) MAC(context.Context, string, []byte) ([]byte, error) { return nil, f.err }

// auditMACer is the backend whose key MACs the audit checkpoints: the
// "local" backend when it has one, else the first (by name) that can. The
// key lives in the backend, never in the store, so write access to the
// database alone cannot forge a checkpoint. It returns nil when no backend
// can MAC (checkpoints are then skipped and verify says so).
func auditMACer(backends map[string]rekey.KMS) (rekey.MACer, string) {
	names := slices.SortedFunc(maps.Keys(backends), func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == "local":
			return -1
		case b == "local":
			return 1
		case a < b:
			return -1
		}
		return 1
	})
	for _, n := range names {
		if rekey.CapabilitiesOf(backends[n]).MAC {
			return backends[n].(rekey.MACer), n + "/" + audit.Purpose
		}
	}
	return nil, ""
}

// storeID names the store in the anchor file. A SQLite file is named
// relative to the anchor's directory, so that a home directory moved or
// restored elsewhere keeps its anchor.
func (s *System) storeID() string {
	dsn := s.Config.Store.DSN.Value()
	if s.Config.Store.Driver == config.DriverSQLite {
		if abs, err := filepath.Abs(dsn); err == nil {
			dsn = abs
			if home, err := filepath.Abs(s.Home); err == nil {
				if rel, err := filepath.Rel(home, abs); err == nil {
					dsn = rel
				}
			}
		}
		return "sqlite:" + dsn
	}
	return s.Config.Store.Driver + ":" + s.Config.Store.RedactedDSN()
}

// Handler is the HTTP face of the System: /metrics, /healthz, /readyz,
// /api/v1/status and the status page (see package httpapi).
func (s *System) Handler() http.Handler {
	srv, err := s.server()
	if err != nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		})
	}
	return srv.Handler()
}

func (s *System) server() (*httpapi.Server, error) {
	cfg := httpapi.Config{Store: s.Store, Backends: s.Backends, Gatherer: s.gatherer, Logger: s.Logger, Now: s.now}
	addHTTPSources(&cfg, s)
	return httpapi.New(cfg)
}

// Listen binds addr for the HTTP endpoints and serves them until ctx ends,
// in a goroutine; the listener is bound before it returns, so a taken port
// is an error here, not a log line. The returned channel is closed when the
// server has stopped.
func (s *System) Listen(ctx context.Context, addr string) (net.Addr, <-chan struct{}, error) {
	srv, err := s.server()
	if err != nil {
		return nil, nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	s.Logger.Info("serving /metrics, /healthz, /readyz, /api/v1/status and the status page", "address", ln.Addr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			s.Logger.Error("http server stopped", "error", err.Error())
		}
	}()
	return ln.Addr(), done, nil
}

// Close checkpoints the audit trail when something was written to it
// since Open (so that every command's events get a MACed checkpoint;
// never for a ReadOnly System), then
// closes the store and the backends. A checkpoint that cannot be made is
// returned as an error after everything is closed.
func (s *System) Close() error {
	var errs []error
	if s.Audit != nil && s.Store != nil && !s.readOnly {
		if err := s.Audit.CheckpointIfMoved(context.Background(), s.auditHead); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.closeParts())
	return errors.Join(errs...)
}

func (s *System) closeParts() error {
	var errs []error
	if s.Worker != nil {
		errs = append(errs, s.Worker.Stop(context.Background()))
	}
	if s.Store != nil {
		errs = append(errs, s.Store.Close())
		s.Store = nil
	}
	errs = append(errs, closeBackends(s.Backends))
	s.Backends = nil
	errs = append(errs, closeSources(s.Sources))
	s.Sources = nil
	return errors.Join(errs...)
}

// DefaultActor names the person running a command, for audit events:
// "cli:" and the user name.
func DefaultActor(getenv func(string) string) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	name := getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if name == "" {
		name = "unknown"
	}
	return "cli:" + name
}

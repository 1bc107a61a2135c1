package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

// app is what a command works with: the configuration, the store, the
// backends and the Keyring over them.
type app struct {
	cfg        *config.Config
	configPath string // "" for the embedded default
	home       string
	store      rekey.Store
	backends   map[string]rekey.KMS
	keyring    *rekey.Keyring
	logger     *slog.Logger
	now        func() time.Time
	// auditHead is the audit trail's last seq when the app opened: a
	// command that moved it checkpoints the new head before it exits.
	auditHead int64
}

// Close releases the store and the backends.
func (a *app) Close() error {
	var errs []error
	if a.store != nil {
		errs = append(errs, a.store.Close())
	}
	for _, b := range a.backends {
		if c, ok := b.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// open resolves the configuration (creating the embedded default on first
// use), opens the store and the backends, and remembers them for Close.
func (c *cli) open(ctx context.Context) (*app, error) {
	if c.app != nil && c.app.keyring != nil {
		return c.app, nil
	}
	path, home, fromFile := config.Resolve(c.configPath, c.getenv)
	var cfg *config.Config
	if fromFile {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, err
		}
	} else {
		if _, err := c.initHome(ctx, home, false); err != nil {
			return nil, err
		}
		path = filepath.Join(home, config.FileName)
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, err
		}
	}
	a := &app{cfg: cfg, configPath: path, home: home, now: time.Now}
	a.logger = c.newLogger(cfg, slog.LevelWarn)
	c.app = a // so that Close releases what opened before a failure
	var err error
	if a.backends, err = c.openBackends(ctx, cfg, a.logger, c.tolerateBackendErrors); err != nil {
		return nil, err
	}
	if a.store, err = openStore(ctx, cfg, a.logger); err != nil {
		return nil, err
	}
	a.keyring = rekey.NewKeyring(a.store, a.backends, rekey.WithActor(c.actor()))
	if a.auditHead, err = audit.HeadSeq(ctx, a.store); err != nil {
		return nil, err
	}
	return a, nil
}

// newLogger makes the JSON (or text) logger on stderr. The CLI commands log
// at warn unless asked; the worker at the config's level.
func (c *cli) newLogger(cfg *config.Config, fallback slog.Level) *slog.Logger {
	level := fallback
	if cfg != nil && cfg.Log.Level != "" && fallback == slog.LevelInfo {
		level = cfg.Log.SlogLevel()
	}
	if c.logLevel != "" {
		var l slog.Level
		if err := l.UnmarshalText([]byte(c.logLevel)); err == nil {
			level = l
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg != nil && cfg.Log.Format == config.LogText {
		return slog.New(slog.NewTextHandler(c.stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(c.stderr, opts))
}

func openStore(ctx context.Context, cfg *config.Config, logger *slog.Logger) (rekey.Store, error) {
	switch cfg.Store.Driver {
	case config.DriverSQLite:
		s, err := sqlitestore.Open(ctx, sqlitestore.Config{Path: cfg.Store.DSN.Value(), Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return s, nil
	default:
		return nil, fmt.Errorf("store.driver %q is not available in this build yet (the PostgreSQL store arrives with its own issue): use sqlite", cfg.Store.Driver)
	}
}

// masterKeyFromEnv reads REKEY_MASTER_KEY, if set.
func (c *cli) masterKeyFromEnv() ([]byte, error) {
	s := c.getenv("REKEY_MASTER_KEY")
	if s == "" {
		return nil, nil
	}
	k, err := localkms.ParseMasterKey(s)
	if err != nil {
		return nil, fmt.Errorf("REKEY_MASTER_KEY: %w", err)
	}
	return k, nil
}

// openBackends opens every configured backend. With tolerate (the worker),
// a backend that cannot be opened is replaced by one whose every call fails
// with that error: keys on it fail each cycle, loudly, and keys on the other
// backends still rotate (rule 6). Without it (CLI commands), the first such
// error ends the command.
func (c *cli) openBackends(ctx context.Context, cfg *config.Config, logger *slog.Logger, tolerate bool) (map[string]rekey.KMS, error) {
	out := make(map[string]rekey.KMS, len(cfg.Backends))
	names := make([]string, 0, len(cfg.Backends))
	for n := range cfg.Backends {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		b := cfg.Backends[name]
		switch settings := b.Settings.(type) {
		case *localkms.Settings:
			mk, err := c.masterKeyFromEnv()
			if err != nil {
				return nil, err
			}
			cl, err := localkms.New(ctx, localkms.Config{
				Keyring: settings.Keyring, MasterKeyFile: settings.MasterKeyFile, MasterKey: mk, Logger: logger,
			})
			if err != nil {
				err = fmt.Errorf("backend %s: %w", name, err)
				if !tolerate {
					return nil, err
				}
				logger.Error("backend unavailable: keys on it will fail until it is fixed", "backend", name, "error", err.Error())
				out[name] = failingKMS{err: err}
				continue
			}
			out[name] = cl
		default:
			out[name] = failingKMS{err: fmt.Errorf("backend %s: type %s is not available in this build yet: %w", name, b.Type, rekey.ErrUnsupported)}
		}
	}
	return out, nil
}

// defaultBackend picks the backend a new key goes to when --backend is not
// given: the only one, or the one called "local".
func (a *app) defaultBackend(flag string) (string, error) {
	if flag != "" {
		if _, ok := a.backends[flag]; !ok {
			return "", usagef("--backend %q is not configured: configured backends are %s", flag, strings.Join(a.cfg.BackendNames(), ", "))
		}
		return flag, nil
	}
	if b := a.cfg.DefaultBackend(); b != "" {
		return b, nil
	}
	if _, ok := a.backends["local"]; ok {
		return "local", nil
	}
	return "", usagef("several backends are configured (%s): choose one with --backend", strings.Join(a.cfg.BackendNames(), ", "))
}

// failingKMS stands for a backend that cannot be used (it failed to open,
// or its type is not in this build yet): every call fails with err, and keys
// on other backends are unaffected.
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

// embeddedFiles are the files of the embedded default in its home.
var embeddedFiles = []string{"rekey.db", "keyring", "master.key"}

// initHome makes sure the embedded default exists in home: on first use it
// creates the directory (0700), the master key file (0600, unless
// REKEY_MASTER_KEY is set), the keyring (0600), the SQLite database (0600)
// and rekey.yaml. It refuses to create anything beside a partial setup (a
// database without its keyring, say): that would strand the DEKs. It returns
// the files it created.
func (c *cli) initHome(ctx context.Context, home string, verbose bool) ([]string, error) {
	mk, err := c.masterKeyFromEnv()
	if err != nil {
		return nil, err
	}
	var present, missing []string
	for _, f := range embeddedFiles {
		if f == "master.key" && mk != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(home, f)); err == nil {
			present = append(present, f)
		} else if errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, f)
		} else {
			return nil, err
		}
	}
	cfgPath := filepath.Join(home, config.FileName)
	_, cfgErr := os.Stat(cfgPath)
	if len(missing) == 0 {
		if cfgErr != nil {
			if err := writeFile0600(cfgPath, config.DefaultYAML()); err != nil {
				return nil, err
			}
			return []string{cfgPath}, nil
		}
		return nil, nil
	}
	if len(present) > 0 {
		return nil, fmt.Errorf("%s holds %s but not %s: rekey will not create new key files beside existing data (DEKs wrapped under the old keyring would become unreadable); restore the missing file(s) from backup, or use another --dir / $REKEY_HOME",
			home, strings.Join(present, ", "), strings.Join(missing, ", "))
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", home, err)
	}
	var created []string
	mkFile := filepath.Join(home, "master.key")
	if mk == nil {
		if err := localkms.CreateMasterKeyFile(mkFile); err != nil {
			return nil, err
		}
		created = append(created, mkFile)
	}
	kr, err := localkms.New(ctx, localkms.Config{Keyring: filepath.Join(home, "keyring"), MasterKeyFile: mkFile, MasterKey: mk, Create: true})
	if err != nil {
		return nil, err
	}
	if err := kr.Close(); err != nil {
		return nil, err
	}
	created = append(created, filepath.Join(home, "keyring"))
	s, err := sqlitestore.Open(ctx, sqlitestore.Config{Path: filepath.Join(home, "rekey.db")})
	if err != nil {
		return nil, err
	}
	if err := s.Close(); err != nil {
		return nil, err
	}
	created = append(created, filepath.Join(home, "rekey.db"))
	if cfgErr != nil {
		if err := writeFile0600(cfgPath, config.DefaultYAML()); err != nil {
			return nil, err
		}
		created = append(created, cfgPath)
	}
	if !verbose {
		fmt.Fprintf(c.stderr, "rekey: created the embedded default in %s (local keyring + SQLite); production keeps the master key out of this directory: see README\n", home)
	}
	return created, nil
}

func writeFile0600(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Package config reads, validates and defaults rekey's YAML configuration
// (DESIGN.md, "Config"), and finds which configuration the command line
// uses (Resolve).
//
// The YAML keys are a contract. Parse walks the YAML tree itself so that
// every problem names its field path ("worker.check_interval",
// "backends.aws.region", "keys[1].backend"); it collects all problems and
// returns them together as a *ValidationError. Unknown fields are errors.
// Scalar values may reference environment variables as ${VAR} ($$ is a
// literal $). Secrets (pin, token, api_key, the store DSN) are held as
// Secret, which never prints its value, and no error message repeats them.
package config

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/redact"
	"github.com/rekeyhq/rekey/kms/localkms"
)

// Store drivers.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// Backend types. Only BackendLocal is available in this build (see
// AvailableBackendTypes); the others are planned and refused by Validate.
const (
	BackendLocal      = "local"
	BackendAWSKMS     = "awskms"
	BackendPKCS11     = "pkcs11"
	BackendVault      = "vault"
	BackendKeyProtect = "keyprotect"
)

// Log formats.
const (
	LogJSON = "json"
	LogText = "text"
)

// Defaults used where the configuration says nothing.
const (
	DefaultCheckInterval = time.Minute
	DefaultBatchSize     = 1000
	DefaultConcurrency   = 8
	DefaultLeaseTTL      = 30 * time.Second
	DefaultListen        = "127.0.0.1:9464"
	DefaultLogLevel      = "info"
	DefaultLogFormat     = LogJSON
	// DefaultHome is the directory of the embedded default when
	// $REKEY_HOME is not set.
	DefaultHome = "rekey-data"
	// FileName is the name of the configuration file looked for in the
	// working directory and in the home directory.
	FileName = "rekey.yaml"
)

// Ranges of the worker's integer settings.
const (
	MaxBatchSize   = 100000
	MaxConcurrency = 256
	// MaxRangeWorkers bounds worker.range_workers.
	MaxRangeWorkers = 64
)

var (
	storeDrivers = []string{DriverSQLite, DriverPostgres}
	logLevels    = []string{"debug", "info", "warn", "error"}
	logFormats   = []string{LogJSON, LogText}
)

// Config is a whole rekey configuration. Parse and Default return one that
// is complete: every omitted section holds its default, and every relative
// file path is resolved against the configuration's directory.
type Config struct {
	// Version of the file format; must be 1.
	Version int
	// Store is where rekey keeps its state.
	Store StoreConfig
	// Backends are the KMS/HSM backends by name (the key of the map, which
	// keys refer to in their backend field).
	Backends map[string]BackendConfig
	// Defaults is the policy of every key that does not override it.
	Defaults rekey.Policy
	// Worker tunes the rotation worker.
	Worker WorkerConfig
	// HTTP configures the daemon's metrics, health and status server.
	HTTP HTTPConfig
	// Log configures the structured log.
	Log LogConfig
	// Keys are declared root keys, created or reconciled on start.
	Keys []KeyConfig
	// DEKSources are tables of the application's own databases whose
	// wrapped DEKs rekey rotates in place (YAML: dek_sources).
	DEKSources []SourceConfig
}

// StoreConfig says where state lives (YAML: store).
type StoreConfig struct {
	// Driver is DriverSQLite or DriverPostgres.
	Driver string
	// DSN is, for sqlite, a file path (resolved against the configuration's
	// directory), a file: URI or ":memory:"; for postgres, a postgres:// URL
	// or a key=value connection string. It may hold a password, hence
	// Secret.
	DSN Secret
}

// RedactedDSN returns the DSN with any password replaced by "xxxxx", fit to
// print (redact.DSN; a sqlite DSN is a path and comes back as it is). The
// result is stable across releases: the audit anchor names a store by it.
func (s StoreConfig) RedactedDSN() string {
	dsn := string(s.DSN)
	if s.Driver != DriverPostgres {
		return dsn
	}
	return redact.DSN(dsn)
}

// WorkerConfig tunes the rotation worker (YAML: worker).
type WorkerConfig struct {
	// CheckInterval is the time between two cycles (default 1m).
	CheckInterval time.Duration
	// BatchSize is the number of DEKs per re-wrap batch (1..100000,
	// default 1000).
	BatchSize int
	// Concurrency bounds concurrent backend calls per rotation (1..256,
	// default 8).
	Concurrency int
	// KMSRateLimit is the backend request rate in requests per second;
	// 0 means the backend's default.
	KMSRateLimit float64
	// RangeWorkers is how many ranges of a shared re-wrap one process
	// re-wraps at once (0..64); 0 means the store's choice: 2 on
	// PostgreSQL, 1 on SQLite (one writer at a time).
	RangeWorkers int
	// LeaseTTL is how long a worker's lease on a key lasts unless renewed
	// (default 30s).
	LeaseTTL time.Duration
}

// HTTPConfig configures the daemon's HTTP server (YAML: http).
type HTTPConfig struct {
	// Listen is the host:port to listen on (default 127.0.0.1:9464).
	Listen string
}

// LogConfig configures the structured log (YAML: log).
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string
	// Format is json (default) or text.
	Format string
}

// SlogLevel returns Level as a slog.Level; an unknown level is Info.
func (l LogConfig) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// KeyConfig is a declared root key (YAML: keys[i]). A nil duration means
// "use the defaults"; Config.Policy merges them.
type KeyConfig struct {
	// Name is the root key's name (rekey.ValidateKeyName).
	Name string
	// Backend names an entry of Config.Backends. Parse fills it in when it
	// is omitted and exactly one backend is configured.
	Backend string
	// Policy overrides; nil = the configuration's default. A DestroyAfter
	// pointing at 0 means never.
	RotationPeriod *time.Duration
	RotateWithin   *time.Duration
	NotifyWithin   *time.Duration
	Grace          *time.Duration
	DestroyAfter   *time.Duration
	// MaxEncryptions and RotateAt override the usage limit (see
	// rekey.Policy); nil = the default's.
	MaxEncryptions *int64
	RotateAt       *float64
}

// Policy returns the policy of k: c.Defaults with k's overrides applied.
func (c *Config) Policy(k KeyConfig) rekey.Policy {
	p := c.Defaults
	for _, o := range []struct {
		dst *time.Duration
		src *time.Duration
	}{
		{&p.RotationPeriod, k.RotationPeriod},
		{&p.RotateWithin, k.RotateWithin},
		{&p.NotifyWithin, k.NotifyWithin},
		{&p.Grace, k.Grace},
		{&p.DestroyAfter, k.DestroyAfter},
	} {
		if o.src != nil {
			*o.dst = *o.src
		}
	}
	if k.MaxEncryptions != nil {
		p.MaxEncryptions = *k.MaxEncryptions
	}
	if k.RotateAt != nil {
		p.RotateAt = *k.RotateAt
	}
	return p
}

// BackendNames returns the names of the configured backends, sorted.
func (c *Config) BackendNames() []string {
	return slices.Sorted(maps.Keys(c.Backends))
}

// DefaultBackend returns the backend a key uses when none is named: the
// only configured backend, or "" when there are several (or none).
func (c *Config) DefaultBackend() string {
	if len(c.Backends) != 1 {
		return ""
	}
	for n := range c.Backends {
		return n
	}
	return ""
}

// Default returns the embedded default configuration rooted at home: a
// SQLite store at <home>/rekey.db, one backend named "local" of type local
// with keyring <home>/keyring and master key file <home>/master.key, the
// default policy (90d/7d/14d/7d/never), and default worker, HTTP and log
// settings. It is what DefaultYAML parses to when the file is in home.
func Default(home string) *Config {
	c := base()
	c.Version = 1
	c.Store = defaultStore(home)
	c.Backends = defaultBackends(home)
	return c
}

// base returns a configuration holding every default that does not depend
// on a directory; Parse starts from it.
func base() *Config {
	return &Config{
		Defaults: rekey.DefaultPolicy(),
		Worker: WorkerConfig{
			CheckInterval: DefaultCheckInterval,
			BatchSize:     DefaultBatchSize,
			Concurrency:   DefaultConcurrency,
			LeaseTTL:      DefaultLeaseTTL,
		},
		HTTP: HTTPConfig{Listen: DefaultListen},
		Log:  LogConfig{Level: DefaultLogLevel, Format: DefaultLogFormat},
	}
}

func defaultStore(home string) StoreConfig {
	return StoreConfig{Driver: DriverSQLite, DSN: Secret(filepath.Join(home, "rekey.db"))}
}

func defaultBackends(home string) map[string]BackendConfig {
	return map[string]BackendConfig{
		"local": {Type: BackendLocal, Settings: &localkms.Settings{
			Keyring:       filepath.Join(home, "keyring"),
			MasterKeyFile: filepath.Join(home, "master.key"),
		}},
	}
}

// Secret is a configuration value that must not be printed: a PIN, a
// token, an API key, a DSN with a password. Every fmt verb, slog and JSON
// print "[redacted]" (or "" when it is empty); Value returns the text.
type Secret string

const redacted = "[redacted]"

// Value returns the secret's text.
func (s Secret) Value() string { return string(s) }

// String returns "[redacted]", or "" for an empty secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString is String, so that %#v does not print the value either.
func (s Secret) GoString() string { return s.String() }

// Format prints String for every verb.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// LogValue makes slog print String.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON encodes String.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

package config

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
)

// Validate checks every field of c and returns a *ValidationError listing
// all problems by field path, or nil. It does not change c. Parse calls it;
// call it on a Config built in code (Default's passes).
func (c *Config) Validate() error {
	ps := c.problems()
	if len(ps) == 0 {
		return nil
	}
	return &ValidationError{Problems: ps}
}

var backendNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

type checker struct{ problems []Problem }

func (ch *checker) add(path, format string, args ...any) {
	ch.problems = append(ch.problems, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (c *Config) problems() []Problem {
	ch := &checker{}
	switch c.Version {
	case 1:
	case 0:
		ch.add("version", "missing: add version: 1 at the top of the file")
	default:
		ch.add("version", "unsupported version %d: this rekey reads version 1: set version: 1, or use a newer rekey", c.Version)
	}
	c.checkStore(ch)
	c.checkBackends(ch)
	checkPolicy(ch, "defaults", c.Defaults)
	c.checkWorker(ch)
	if err := checkListen(c.HTTP.Listen); err != "" {
		ch.add("http.listen", "%s", err)
	}
	if !slices.Contains(logLevels, c.Log.Level) {
		ch.add("log.level", "%s", enumMessage("log level", c.Log.Level, logLevels))
	}
	if !slices.Contains(logFormats, c.Log.Format) {
		ch.add("log.format", "%s", enumMessage("log format", c.Log.Format, logFormats))
	}
	c.checkKeys(ch)
	c.checkSources(ch)
	return ch.problems
}

// enumMessage says that v is not one of allowed without repeating an empty
// value.
func enumMessage(what, v string, allowed []string) string {
	if v == "" {
		return "missing: set it to one of " + strings.Join(allowed, ", ")
	}
	return fmt.Sprintf("unknown %s %q: allowed: %s", what, echo(v), strings.Join(allowed, ", "))
}

func (c *Config) checkStore(ch *checker) {
	dsn := string(c.Store.DSN)
	switch c.Store.Driver {
	case DriverSQLite:
		if isPostgresURL(dsn) {
			ch.add("store.dsn", "is a PostgreSQL URL but store.driver is sqlite: set driver: postgres, or dsn to a file path such as rekey.db")
		}
	case DriverPostgres:
		if dsn != "" && !isPostgresURL(dsn) && !strings.Contains(dsn, "=") {
			ch.add("store.dsn", "not a PostgreSQL connection string: use postgres://USER:${PASSWORD_VAR}@HOST:5432/DB or the key=value form")
		}
	default:
		ch.add("store.driver", "%s", enumMessage("store driver", c.Store.Driver, storeDrivers))
	}
	if dsn == "" {
		ch.add("store.dsn", "missing: set dsn to a file path for sqlite (e.g. rekey.db) or a postgres:// URL for postgres")
	}
}

func isPostgresURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

func (c *Config) checkBackends(ch *checker) {
	if len(c.Backends) == 0 {
		ch.add("backends", "missing: configure at least one backend, e.g. local: {type: local, keyring: keyring, master_key_file: master.key}")
		return
	}
	for _, name := range c.BackendNames() {
		b := c.Backends[name]
		p := childPath("backends", name)
		if !backendNameRE.MatchString(name) {
			ch.add(p, "invalid backend name %q: use 1-63 characters of a-z, 0-9, '_', '-', starting with a letter or digit", echo(name))
		}
		checkBackendSettings(ch, p, b)
	}
}

// checkPolicy checks a complete policy (the defaults).
func checkPolicy(ch *checker, p string, pol rekey.Policy) {
	checkPositive(ch, p+".rotation_period", pol.RotationPeriod)
	checkNotNegative(ch, p+".rotate_within", pol.RotateWithin)
	checkNotNegative(ch, p+".notify_within", pol.NotifyWithin)
	checkNotNegative(ch, p+".grace", pol.Grace)
	checkNotNegative(ch, p+".destroy_after", pol.DestroyAfter)
	checkUsage(ch, p, pol.MaxEncryptions, pol.RotateAt)
	checkPolicyWindows(ch, p, pol, "")
}

// checkPolicyWindows refuses a rotate_within not shorter than the rotation
// period (the key is due again right after each rotation, so it rotates on
// every worker cycle) and a notify_within shorter than rotate_within (the
// key is due before it is reported due soon): rekey.Policy.Validate's rule,
// worded for the file. from says where inherited values come from ("" when
// the policy is complete, as the defaults are).
func checkPolicyWindows(ch *checker, p string, pol rekey.Policy, from string) {
	fd := rekey.FormatDuration
	if pol.RotationPeriod > 0 && pol.RotateWithin >= pol.RotationPeriod {
		ch.add(p+".rotate_within", "%s is not shorter than rotation_period %s%s: the key would be due again right after each rotation and rotate on every worker cycle; set rotate_within well below rotation_period (the defaults are 7d within 90d)",
			fd(pol.RotateWithin), fd(pol.RotationPeriod), from)
	}
	if pol.RotateWithin >= 0 && pol.NotifyWithin >= 0 && pol.NotifyWithin < pol.RotateWithin {
		ch.add(p+".notify_within", "%s is shorter than rotate_within %s%s: the key would be due before it is reported due soon; set notify_within to %s or more",
			fd(pol.NotifyWithin), fd(pol.RotateWithin), from, fd(pol.RotateWithin))
	}
}

func checkPositive(ch *checker, p string, d time.Duration) {
	if d <= 0 {
		ch.add(p, "%s is not positive: use e.g. 90d, 12h, 30s", rekey.FormatDuration(d))
	}
}

func checkNotNegative(ch *checker, p string, d time.Duration) {
	if d < 0 {
		ch.add(p, "%s is negative", rekey.FormatDuration(d))
	}
}

func (c *Config) checkWorker(ch *checker) {
	w := c.Worker
	checkPositive(ch, "worker.check_interval", w.CheckInterval)
	checkPositive(ch, "worker.lease_ttl", w.LeaseTTL)
	if w.BatchSize < 1 || w.BatchSize > MaxBatchSize {
		ch.add("worker.batch_size", "%d is out of range: use 1 to %d", w.BatchSize, MaxBatchSize)
	}
	if w.Concurrency < 1 || w.Concurrency > MaxConcurrency {
		ch.add("worker.concurrency", "%d is out of range: use 1 to %d", w.Concurrency, MaxConcurrency)
	}
	if w.RangeWorkers < 0 || w.RangeWorkers > MaxRangeWorkers {
		ch.add("worker.range_workers", "%d is out of range: use 1 to %d, or 0 for the store's choice (2 on PostgreSQL, 1 on SQLite)", w.RangeWorkers, MaxRangeWorkers)
	}
	if w.KMSRateLimit < 0 || math.IsNaN(w.KMSRateLimit) || math.IsInf(w.KMSRateLimit, 0) {
		ch.add("worker.kms_rate_limit", "%v is not a rate: use requests per second, or 0 for the backend's default", w.KMSRateLimit)
	}
}

// checkListen returns what is wrong with a host:port, or "".
func checkListen(addr string) string {
	if addr == "" {
		return "missing: set listen to HOST:PORT, e.g. " + DefaultListen
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not HOST:PORT: use e.g. %s", echo(addr), DefaultListen)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > math.MaxUint16 {
		return fmt.Sprintf("%q: port %q is not a number from 0 to 65535", echo(addr), echo(port))
	}
	return ""
}

func (c *Config) checkKeys(ch *checker) {
	first := map[string]int{}
	for i, k := range c.Keys {
		p := indexPath("keys", i)
		if k.Name == "" {
			ch.add(p+".name", "missing: set name, e.g. payments")
		} else if err := rekey.ValidateKeyName(k.Name); err != nil {
			ch.add(p+".name", "invalid %s", strings.TrimPrefix(err.Error(), rekey.ErrInvalidArgument.Error()+": "))
		} else if j, dup := first[k.Name]; dup {
			ch.add(p+".name", "duplicate key name %q (first declared at %s): rename or remove one of them", echo(k.Name), indexPath("keys", j))
		} else {
			first[k.Name] = i
		}
		switch _, ok := c.Backends[k.Backend]; {
		case k.Backend == "":
			ch.add(p+".backend", "missing: set backend to one of the configured backends (%s)", c.backendList())
		case !ok:
			ch.add(p+".backend", "unknown backend %q: configured backends: %s", echo(k.Backend), c.backendList())
		}
		if k.RotationPeriod != nil {
			checkPositive(ch, p+".rotation_period", *k.RotationPeriod)
		}
		for _, o := range []struct {
			name string
			d    *time.Duration
		}{{"rotate_within", k.RotateWithin}, {"notify_within", k.NotifyWithin}, {"grace", k.Grace}, {"destroy_after", k.DestroyAfter}} {
			if o.d != nil {
				checkNotNegative(ch, p+"."+o.name, *o.d)
			}
		}
		if k.MaxEncryptions != nil || k.RotateAt != nil {
			pol := c.Policy(k)
			checkUsage(ch, p, pol.MaxEncryptions, pol.RotateAt)
		}
		if k.RotationPeriod != nil || k.RotateWithin != nil || k.NotifyWithin != nil {
			// Only what the key changes: the defaults' own windows are
			// checked (and reported) once, at defaults.
			if !policyWindowsOK(c.Defaults) && (k.RotationPeriod == nil || k.RotateWithin == nil || k.NotifyWithin == nil) {
				continue
			}
			from := ""
			if k.RotationPeriod == nil || k.RotateWithin == nil || k.NotifyWithin == nil {
				from = " (with the values this key does not set taken from defaults)"
			}
			checkPolicyWindows(ch, p, c.Policy(k), from)
		}
	}
}

// policyWindowsOK reports whether checkPolicyWindows finds nothing in pol.
func policyWindowsOK(pol rekey.Policy) bool {
	ch := &checker{}
	checkPolicyWindows(ch, "", pol, "")
	return len(ch.problems) == 0
}

// backendList names the configured backends for a message.
func (c *Config) backendList() string {
	if len(c.Backends) == 0 {
		return "none"
	}
	return strings.Join(c.BackendNames(), ", ")
}

// checkUsage checks max_encryptions (1 to 2^32) and rotate_at (above 0, at
// most 1) of a policy at path p.
func checkUsage(ch *checker, p string, maxEnc int64, rotateAt float64) {
	switch {
	case maxEnc < 1:
		ch.add(p+".max_encryptions", "%d: must be at least 1 (wraps one key version may do; the default is %d, 2^30)", maxEnc, rekey.DefaultMaxEncryptions)
	case maxEnc > rekey.MaxMaxEncryptions:
		ch.add(p+".max_encryptions", "%d is above %d (2^32), the bound for AES-GCM with random nonces (NIST SP 800-38D): use %d (2^30) or less", maxEnc, rekey.MaxMaxEncryptions, rekey.DefaultMaxEncryptions)
	}
	if !(rotateAt > 0 && rotateAt <= 1) {
		ch.add(p+".rotate_at", "%g: must be a fraction above 0 and at most 1 (the key is due when its active version did rotate_at × max_encryptions wraps; the default is %g)", rotateAt, rekey.DefaultRotateAt)
	}
}

package config

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
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
		ch.add("version", "unsupported version %d: this rekey reads version 1", c.Version)
	}
	c.checkStore(ch)
	c.checkBackends(ch)
	checkPolicy(ch, "defaults", c.Defaults)
	c.checkWorker(ch)
	if err := checkListen(c.HTTP.Listen); err != "" {
		ch.add("http.listen", "%s", err)
	}
	if !isOneOf(c.Log.Level, logLevels) {
		ch.add("log.level", "%s", enumMessage("log level", c.Log.Level, logLevels))
	}
	if !isOneOf(c.Log.Format, logFormats) {
		ch.add("log.format", "%s", enumMessage("log format", c.Log.Format, logFormats))
	}
	c.checkKeys(ch)
	return ch.problems
}

// enumMessage says that v is not one of allowed without repeating an empty
// value.
func enumMessage(what, v string, allowed []string) string {
	if v == "" {
		return "missing: set it to one of " + strings.Join(allowed, ", ")
	}
	return fmt.Sprintf("unknown %s %q: allowed: %s", what, v, strings.Join(allowed, ", "))
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
			ch.add(p, "invalid backend name %q: use 1-63 characters of a-z, 0-9, '_', '-', starting with a letter or digit", name)
		}
		if !isOneOf(b.Type, backendTypes) {
			if b.Type == "" {
				ch.add(p+".type", "missing: set type to one of %s", strings.Join(backendTypes, ", "))
			} else {
				ch.add(p+".type", "unknown backend type %q: allowed: %s", b.Type, strings.Join(backendTypes, ", "))
			}
			continue
		}
		set := map[string]bool{
			BackendLocal:      b.Local != nil,
			BackendAWSKMS:     b.AWSKMS != nil,
			BackendPKCS11:     b.PKCS11 != nil,
			BackendVault:      b.Vault != nil,
			BackendKeyProtect: b.KeyProtect != nil,
		}
		if !set[b.Type] {
			ch.add(p, "type %s but no %s settings: set the fields %s", b.Type, b.Type, strings.Join(backendFields[b.Type], ", "))
			continue
		}
		for _, t := range backendTypes {
			if t != b.Type && set[t] {
				ch.add(p, "settings for type %s on a backend of type %s: a backend has exactly one type", t, b.Type)
			}
		}
		switch b.Type {
		case BackendLocal:
			checkLocal(ch, p, b.Local)
		case BackendAWSKMS:
			checkAWSKMS(ch, p, b.AWSKMS)
		case BackendPKCS11:
			checkPKCS11(ch, p, b.PKCS11)
		case BackendVault:
			checkVault(ch, p, b.Vault)
		case BackendKeyProtect:
			checkKeyProtect(ch, p, b.KeyProtect)
		}
	}
}

func checkLocal(ch *checker, p string, l *LocalConfig) {
	if l.Keyring == "" {
		ch.add(p+".keyring", "missing: set keyring to the keyring file, e.g. keyring")
	}
	if l.MasterKeyFile != "" && l.MasterKeyFile == l.Keyring {
		ch.add(p+".master_key_file", "is the keyring file: the master key needs a file of its own")
	}
}

func checkAWSKMS(ch *checker, p string, a *AWSKMSConfig) {
	if a.Region == "" {
		ch.add(p+".region", "missing: set region, e.g. eu-west-1 (or region: ${AWS_REGION})")
	}
	if a.Endpoint != "" {
		checkURL(ch, p+".endpoint", a.Endpoint)
	}
	if !isOneOf(a.Mode, awsModes) {
		ch.add(p+".mode", "%s", enumMessage("mode", a.Mode, awsModes))
	}
	switch {
	case a.AliasPrefix == "":
		ch.add(p+".alias_prefix", "missing: set alias_prefix, e.g. %s", DefaultAWSAliasPrefix)
	case !strings.HasPrefix(a.AliasPrefix, "alias/"):
		ch.add(p+".alias_prefix", "%q does not start with alias/: use e.g. %s", a.AliasPrefix, DefaultAWSAliasPrefix)
	case strings.HasPrefix(a.AliasPrefix, "alias/aws/"):
		ch.add(p+".alias_prefix", "alias/aws/ is reserved for AWS managed keys: use e.g. %s", DefaultAWSAliasPrefix)
	}
}

func checkPKCS11(ch *checker, p string, k *PKCS11Config) {
	if k.Module == "" {
		ch.add(p+".module", "missing: set module to the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
	}
	if k.TokenLabel == "" && k.Slot == nil {
		ch.add(p+".token_label", "missing: set token_label (or slot) to select the token")
	}
	if k.Slot != nil && *k.Slot < 0 {
		ch.add(p+".slot", "%d is negative: slot numbers start at 0", *k.Slot)
	}
	if k.PIN == "" {
		ch.add(p+".pin", "missing: set pin, e.g. pin: ${REKEY_PKCS11_PIN}")
	}
}

func checkVault(ch *checker, p string, v *VaultConfig) {
	if v.Address == "" {
		ch.add(p+".address", "missing: set address to the Vault URL, e.g. https://vault.example.com:8200")
	} else {
		checkURL(ch, p+".address", v.Address)
	}
	if v.Token == "" {
		ch.add(p+".token", "missing: set token, e.g. token: ${VAULT_TOKEN}")
	}
	if strings.Trim(v.Mount, "/") == "" {
		ch.add(p+".mount", "missing: set mount to the Transit mount path, e.g. %s", DefaultVaultMount)
	}
}

func checkKeyProtect(ch *checker, p string, k *KeyProtectConfig) {
	if k.Endpoint == "" && k.Region == "" {
		ch.add(p+".region", "missing: set region (e.g. us-south) or endpoint")
	}
	if k.Endpoint != "" {
		checkURL(ch, p+".endpoint", k.Endpoint)
	}
	if k.IAMEndpoint != "" {
		checkURL(ch, p+".iam_endpoint", k.IAMEndpoint)
	}
	if k.InstanceID == "" {
		ch.add(p+".instance_id", "missing: set instance_id to the Key Protect instance id")
	}
	if k.APIKey == "" {
		ch.add(p+".api_key", "missing: set api_key, e.g. api_key: ${IBM_API_KEY}")
	}
}

// checkURL reports a value that is not an http(s) URL with a host. It does
// not repeat the value: a URL may carry credentials.
func checkURL(ch *checker, p, s string) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		ch.add(p, "not an http(s) URL: use e.g. https://HOST:PORT")
	}
}

// checkPolicy checks a complete policy (the defaults).
func checkPolicy(ch *checker, p string, pol rekey.Policy) {
	checkPositive(ch, p+".rotation_period", pol.RotationPeriod)
	checkNotNegative(ch, p+".rotate_within", pol.RotateWithin)
	checkNotNegative(ch, p+".notify_within", pol.NotifyWithin)
	checkNotNegative(ch, p+".grace", pol.Grace)
	checkNotNegative(ch, p+".destroy_after", pol.DestroyAfter)
}

func checkPositive(ch *checker, p string, d time.Duration) {
	if d <= 0 {
		ch.add(p, "%s is not positive: use e.g. 90d, 12h, 30s", formatDuration(d))
	}
}

func checkNotNegative(ch *checker, p string, d time.Duration) {
	if d < 0 {
		ch.add(p, "%s is negative", formatDuration(d))
	}
}

// formatDuration prints d like rekey.FormatDuration, which does not handle
// negative values.
func formatDuration(d time.Duration) string {
	if d < 0 {
		return d.String()
	}
	return rekey.FormatDuration(d)
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
		return fmt.Sprintf("%q is not HOST:PORT: use e.g. %s", addr, DefaultListen)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > math.MaxUint16 {
		return fmt.Sprintf("%q: port %q is not a number from 0 to 65535", addr, port)
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
			ch.add(p+".name", "duplicate key name %q (first declared at %s)", k.Name, indexPath("keys", j))
		} else {
			first[k.Name] = i
		}
		switch _, ok := c.Backends[k.Backend]; {
		case k.Backend == "":
			ch.add(p+".backend", "missing: set backend to one of the configured backends (%s)", c.backendList())
		case !ok:
			ch.add(p+".backend", "unknown backend %q: configured backends: %s", k.Backend, c.backendList())
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
	}
}

// Warnings returns settings that are valid but probably not meant: a
// rotate_within not shorter than the rotation period (the key is due again
// right after each rotation, so it rotates on every worker cycle) and a
// notify_within shorter than rotate_within (a key is due before it is "due
// soon"). rekey config validate prints them; they do not fail a load.
func (c *Config) Warnings() []Problem {
	var ws []Problem
	check := func(p string, pol rekey.Policy) {
		if pol.RotationPeriod > 0 && pol.RotateWithin >= pol.RotationPeriod {
			ws = append(ws, Problem{Path: p + ".rotate_within", Message: fmt.Sprintf(
				"%s is not shorter than rotation_period %s: the key is due right after each rotation and rotates on every worker cycle",
				formatDuration(pol.RotateWithin), formatDuration(pol.RotationPeriod))})
		}
		if pol.NotifyWithin < pol.RotateWithin {
			ws = append(ws, Problem{Path: p + ".notify_within", Message: fmt.Sprintf(
				"%s is shorter than rotate_within %s: the key is due before it is reported due soon",
				formatDuration(pol.NotifyWithin), formatDuration(pol.RotateWithin))})
		}
	}
	check("defaults", c.Defaults)
	for i, k := range c.Keys {
		if k.RotationPeriod == nil && k.RotateWithin == nil && k.NotifyWithin == nil {
			continue // same as the defaults, already reported
		}
		check(indexPath("keys", i), c.Policy(k))
	}
	return ws
}

// backendList names the configured backends for a message.
func (c *Config) backendList() string {
	if len(c.Backends) == 0 {
		return "none"
	}
	return strings.Join(c.BackendNames(), ", ")
}

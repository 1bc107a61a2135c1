package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/localkms"
)

const home = "/srv/rekey"

// envOf returns a lookup over vars, for parse.
func envOf(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// mustParse parses y with baseDir home and the given environment, failing
// the test on any error.
func mustParse(t *testing.T, y string, env map[string]string) *Config {
	t.Helper()
	c, err := parse([]byte(y), home, envOf(env))
	if err != nil {
		t.Fatalf("parse:\n%s\nerror:\n%v", y, err)
	}
	return c
}

// problemsOf parses y, which must fail with a *ValidationError, and
// returns its problems.
func problemsOf(t *testing.T, y string, env map[string]string) []Problem {
	t.Helper()
	c, err := parse([]byte(y), home, envOf(env))
	if err == nil {
		t.Fatalf("parse succeeded, want an error:\n%s\nconfig: %+v", y, c)
	}
	if c != nil {
		t.Errorf("parse returned a config with its error")
	}
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("error is %T, want *ValidationError: %v", err, err)
	}
	return verr.Problems
}

// minimal is the smallest valid config; tests append sections to it.
const minimal = "version: 1\n"

func dur(d time.Duration) *time.Duration { return &d }

func TestParseErrors(t *testing.T) {
	t.Parallel()
	type want struct{ path, msg string }
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want []want // each must appear: exact path, message containing msg
		n    int    // if not 0, the exact number of problems
	}{
		{
			name: "unknown top-level field",
			yaml: minimal + "stroe: {driver: sqlite}\n",
			want: []want{{"stroe", `unknown field "stroe": allowed fields are version, store, backends, defaults, worker, http, log, keys`}},
			n:    1,
		},
		{
			name: "unknown field in a section",
			yaml: minimal + "store: {driver: sqlite, dsn: a.db, foo: 1}\n",
			want: []want{{"store.foo", `unknown field "foo": allowed fields are driver, dsn`}},
			n:    1,
		},
		{
			name: "unknown field in a backend",
			yaml: minimal + "backends:\n  local: {type: local, keyring: k, colour: blue}\n",
			want: []want{{"backends.local.colour", `unknown field "colour" for backend type local: allowed fields are type, keyring, master_key_file`}},
			n:    1,
		},
		{
			name: "unknown field in a key",
			yaml: minimal + "keys:\n  - {name: a}\n  - {name: b, period: 30d}\n",
			want: []want{{"keys[1].period", `unknown field "period": allowed fields are name, backend, rotation_period, rotate_within, notify_within, grace, destroy_after`}},
			n:    1,
		},
		{
			name: "unknown field with an odd name is quoted in the path",
			yaml: minimal + "worker: {\"batch size\": 10}\n",
			want: []want{{`worker["batch size"]`, `unknown field "batch size"`}},
			n:    1,
		},
		{
			name: "duplicate field",
			yaml: minimal + "worker:\n  batch_size: 10\n  batch_size: 20\n",
			want: []want{{"worker.batch_size", `duplicate field "batch_size" (first at line 3)`}},
			n:    1,
		},
		{
			name: "merge key",
			yaml: minimal + "x: &x {batch_size: 10}\n",
			want: []want{{"x", `unknown field "x"`}},
		},
		{
			name: "bad duration",
			yaml: minimal + "worker: {check_interval: 5x}\n",
			want: []want{{"worker.check_interval", `bad duration "5x": use Go syntax plus d for days, e.g. 90d, 12h, 30s`}},
			n:    1,
		},
		{
			name: "negative duration",
			yaml: minimal + "defaults: {grace: -1h}\n",
			want: []want{{"defaults.grace", `bad duration "-1h": must not be negative`}},
			n:    1,
		},
		{
			name: "never outside destroy_after",
			yaml: minimal + "defaults: {rotation_period: never}\n",
			want: []want{{"defaults.rotation_period", `never is only allowed for destroy_after`}},
			n:    1,
		},
		{
			name: "zero destroy_after",
			yaml: minimal + "keys: [{name: a, destroy_after: 0s}]\n",
			want: []want{{"keys[0].destroy_after", `zero would mean never`}},
			n:    1,
		},
		{
			name: "NaN days",
			yaml: minimal + "defaults: {grace: NaNd}\n",
			want: []want{{"defaults.grace", `bad duration "NaNd"`}},
			n:    1,
		},
		{
			name: "overflowing duration",
			yaml: minimal + "defaults: {grace: 36500d2562047h}\n",
			want: []want{{"defaults.grace", `bad duration`}},
			n:    1,
		},
		{
			name: "zero rotation period",
			yaml: minimal + "keys: [{name: a, rotation_period: 0s}]\n",
			want: []want{{"keys[0].rotation_period", `0s is not positive`}},
			n:    1,
		},
		{
			name: "unknown backend type",
			yaml: minimal + "backends:\n  aws: {type: aws, region: eu-west-1}\n",
			want: []want{{"backends.aws.type", `unknown backend type "aws": available types: awskms, keyprotect, local, pkcs11, vault`}},
			n:    1,
		},
		{
			name: "missing backend type",
			yaml: minimal + "backends:\n  aws: {region: eu-west-1}\n",
			want: []want{{"backends.aws.type", `missing: set type to one of awskms, keyprotect, local, pkcs11, vault`}},
			n:    1,
		},
		{
			name: "backend field of another type",
			yaml: minimal + "backends:\n  local: {type: local, keyring: k, region: eu-west-1}\n",
			want: []want{{"backends.local.region", `unknown field "region" for backend type local: allowed fields are type, keyring, master_key_file`}},
			n:    1,
		},
		{
			name: "every backend type's own problems",
			yaml: minimal + "backends:\n  aws: {type: awskms, region: r, whatever: 1}\n  hsm: {type: pkcs11}\n  v: {type: vault}\n  kp: {type: keyprotect}\n  l: {type: local}\n",
			want: []want{
				{"backends.aws.whatever", `unknown field "whatever" for backend type awskms`},
				{"backends.aws.region", `"r" is not an AWS region`},
				{"backends.hsm.module", "missing: set module"},
				{"backends.hsm.token_label", "missing: set token_label"},
				{"backends.v.address", "missing: set address"},
				{"backends.kp.instance_id", "missing: set instance_id"},
				{"backends.kp.region", "missing: set region"},
				{"backends.l.keyring", "missing: set keyring"},
			},
			n: 8,
		},
		{
			name: "bad backend values",
			yaml: minimal + `backends:
  Bad_Name: {type: local, keyring: k}
  l: {type: local, keyring: k, master_key_file: k}
  l2: {type: local, keyring: [a, b]}
  l3: {type: local, keyring: k, master_key_file: "${NOPE}"}
  l4: {type: local, keyring: k, type2: x}
`,
			want: []want{
				{"backends.Bad_Name", `invalid backend name "Bad_Name"`},
				{"backends.l.master_key_file", "is the keyring file"},
				{"backends.l2.keyring", "expected a single value, got a list"},
				{"backends.l3.master_key_file", "environment variable NOPE is not set"},
				{"backends.l4.type2", `unknown field "type2" for backend type local`},
			},
			n: 5,
		},
		{
			name: "missing DSN",
			yaml: minimal + "store: {driver: postgres}\n",
			want: []want{{"store.dsn", "missing: set dsn to a file path for sqlite"}},
			n:    1,
		},
		{
			name: "missing driver",
			yaml: minimal + "store: {dsn: a.db}\n",
			want: []want{{"store.driver", "missing: set it to one of sqlite, postgres"}},
			n:    1,
		},
		{
			name: "bad driver",
			yaml: minimal + "store: {driver: mysql, dsn: a}\n",
			want: []want{{"store.driver", `unknown store driver "mysql": allowed: sqlite, postgres`}},
			n:    1,
		},
		{
			name: "postgres URL with sqlite driver",
			yaml: minimal + "store: {driver: sqlite, dsn: \"postgres://u@h/db\"}\n",
			want: []want{{"store.dsn", "set driver: postgres"}},
			n:    1,
		},
		{
			name: "bad postgres DSN",
			yaml: minimal + "store: {driver: postgres, dsn: rekey.db}\n",
			want: []want{{"store.dsn", "not a PostgreSQL connection string"}},
			n:    1,
		},
		{
			name: "bad enums",
			yaml: minimal + "log: {level: verbose, format: xml}\n",
			want: []want{
				{"log.level", `unknown log level "verbose": allowed: debug, info, warn, error`},
				{"log.format", `unknown log format "xml": allowed: json, text`},
			},
			n: 2,
		},
		{
			name: "worker out of range",
			yaml: minimal + "worker: {batch_size: 100001, concurrency: 0, kms_rate_limit: -1, lease_ttl: 0s, range_workers: 65}\n",
			want: []want{
				{"worker.batch_size", "100001 is out of range: use 1 to 100000"},
				{"worker.concurrency", "0 is out of range: use 1 to 256"},
				{"worker.kms_rate_limit", "not a rate"},
				{"worker.lease_ttl", "0s is not positive"},
				{"worker.range_workers", "65 is out of range: use 1 to 64, or 0 for the store's choice"},
			},
			n: 5,
		},
		{
			name: "wrong types",
			yaml: minimal + "worker: {batch_size: many, kms_rate_limit: fast}\nhttp: [a]\nstore: sqlite\n",
			want: []want{
				{"worker.batch_size", `"many" is not a whole number`},
				{"worker.kms_rate_limit", `"fast" is not a number`},
				{"http", "expected a mapping of fields (listen), got a list"},
				{"store", "expected a mapping of fields (driver, dsn), got a single value"},
			},
			n: 4,
		},
		{
			name: "bad listen",
			yaml: minimal + "http: {listen: localhost}\n",
			want: []want{{"http.listen", `"localhost" is not HOST:PORT`}},
			n:    1,
		},
		{
			name: "version",
			yaml: "version: 2\n",
			want: []want{{"version", "unsupported version 2: this rekey reads version 1"}},
			n:    1,
		},
		{
			name: "missing version",
			yaml: "worker: {batch_size: 10}\n",
			want: []want{{"version", "missing: add version: 1"}},
			n:    1,
		},
		{
			name: "unset environment variable",
			yaml: minimal + "backends:\n  l: {type: local, keyring: \"${KEYRING}\"}\n",
			want: []want{{"backends.l.keyring", "environment variable KEYRING is not set"}},
			n:    1, // not also "keyring: missing"
		},
		{
			name: "several unset environment variables",
			yaml: minimal + "store: {driver: postgres, dsn: \"postgres://${PGUSER}:${PGPASS}@h/db\"}\n",
			want: []want{{"store.dsn", "environment variables PGUSER, PGPASS are not set"}},
			n:    1,
		},
		{
			name: "bare dollar",
			yaml: minimal + "http: {listen: $LISTEN}\n",
			want: []want{{"http.listen", "a $ not followed by { or $"}},
			n:    1,
		},
		{
			name: "duplicate key name",
			yaml: minimal + "keys:\n  - {name: payments}\n  - {name: orders}\n  - {name: payments}\n",
			want: []want{{"keys[2].name", `duplicate key name "payments" (first declared at keys[0])`}},
			n:    1,
		},
		{
			name: "invalid key name",
			yaml: minimal + "keys: [{name: Payments}, {backend: local}]\n",
			want: []want{
				{"keys[0].name", `invalid key name "Payments": use 1-63 characters`},
				{"keys[1].name", "missing"},
			},
			n: 2,
		},
		{
			name: "key names an unknown backend",
			yaml: minimal + "keys:\n  - {name: a, backend: local}\n  - {name: b, backend: aws}\n",
			want: []want{{"keys[1].backend", `unknown backend "aws": configured backends: local`}},
			n:    1,
		},
		{
			name: "key without backend among several",
			yaml: minimal + "backends:\n  a: {type: local, keyring: a}\n  b: {type: local, keyring: b}\nkeys: [{name: k}]\n",
			want: []want{{"keys[0].backend", "missing: set backend to one of the configured backends (a, b)"}},
			n:    1,
		},
		{
			name: "key not a mapping",
			yaml: minimal + "keys: [payments, ~]\n",
			want: []want{
				{"keys[0]", "expected a mapping of fields (name, backend,"},
				{"keys[1]", "empty"},
			},
			n: 2,
		},
		{
			name: "keys not a list",
			yaml: minimal + "keys: {name: a}\n",
			want: []want{{"keys", "expected a list of keys"}},
			n:    1,
		},
		{
			name: "empty backends",
			yaml: minimal + "backends: {}\n",
			want: []want{{"backends", "missing: configure at least one backend"}},
			n:    1,
		},
		{
			name: "backend not a mapping",
			yaml: minimal + "backends: {local: local}\n",
			want: []want{{"backends.local", "expected a backend"}},
			n:    1,
		},
		{
			name: "YAML syntax error",
			yaml: "version: 1\nstore: {driver: sqlite\n",
			want: []want{{"", "yaml: line"}},
			n:    1,
		},
		{
			name: "not a mapping",
			yaml: "- version: 1\n",
			want: []want{{"", "a config is a mapping of fields"}},
			n:    1,
		},
		{
			name: "several documents",
			yaml: "version: 1\n---\nversion: 1\n",
			want: []want{{"", "several documents"}},
			n:    1,
		},
		{
			name: "several problems reported together",
			yaml: `version: 1
store: {driver: postgres}
backends:
  aws: {type: awskms, region: eu-west-1, mode: sometimes}
  l: {type: local, keyring: k, mode: sometimes}
worker:
  check_interval: 5x
  batch_size: 0
keys:
  - {name: payments, backend: aws, bogus: 1}
  - {name: payments, backend: vault}
`,
			want: []want{
				{"store.dsn", "missing"},
				{"backends.aws.mode", `unknown mode "sometimes"`},
				{"backends.l.mode", `unknown field "mode"`},
				{"worker.check_interval", `bad duration "5x"`},
				{"worker.batch_size", "out of range"},
				{"keys[0].bogus", `unknown field "bogus"`},
				{"keys[1].name", "duplicate key name"},
				{"keys[1].backend", `unknown backend "vault"`},
			},
			n: 8,
		},
		{
			name: "rotate_within not shorter than the period",
			yaml: minimal + "defaults: {rotation_period: 1h, rotate_within: 1h, notify_within: 2h}\n",
			want: []want{{"defaults.rotate_within", "1h0m0s is not shorter than rotation_period 1h0m0s: the key would be due again right after each rotation and rotate on every worker cycle; set rotate_within well below rotation_period"}},
			n:    1,
		},
		{
			name: "notify_within shorter than rotate_within",
			yaml: minimal + "defaults: {notify_within: 3d}\n",
			want: []want{{"defaults.notify_within", "3d is shorter than rotate_within 7d: the key would be due before it is reported due soon; set notify_within to 7d or more"}},
			n:    1,
		},
		{
			name: "key windows against the defaults",
			yaml: minimal + "keys:\n  - {name: a, rotation_period: 5d}\n  - {name: b, rotate_within: 20d}\n  - {name: c, rotation_period: 1h, rotate_within: 2h, notify_within: 3h}\n  - {name: d, rotation_period: 30d}\n",
			want: []want{
				{"keys[0].rotate_within", "7d is not shorter than rotation_period 5d (with the values this key does not set taken from defaults)"},
				{"keys[1].notify_within", "14d is shorter than rotate_within 20d (with the values this key does not set taken from defaults)"},
				{"keys[2].rotate_within", "2h0m0s is not shorter than rotation_period 1h0m0s: "},
			},
			n: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ps := problemsOf(t, tt.yaml, tt.env)
			for _, w := range tt.want {
				if !hasProblem(ps, w.path, w.msg) {
					t.Errorf("no problem %s: ...%s...; got:\n%s", w.path, w.msg, listProblems(ps))
				}
			}
			if tt.n != 0 && len(ps) != tt.n {
				t.Errorf("got %d problems, want %d:\n%s", len(ps), tt.n, listProblems(ps))
			}
		})
	}
}

func hasProblem(ps []Problem, path, msg string) bool {
	for _, p := range ps {
		if p.Path == path && strings.Contains(p.Message, msg) {
			return true
		}
	}
	return false
}

func listProblems(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "  line %d: %s\n", p.Line, p)
	}
	return b.String()
}

func TestValidationErrorFormat(t *testing.T) {
	t.Parallel()
	y := "version: 1\nstore: {driver: postgres}\nworker:\n  check_interval: 5x\n"
	ps := problemsOf(t, y, nil)
	want := []Problem{
		{Path: "store.dsn", Line: 2, Message: "missing: set dsn to a file path for sqlite (e.g. rekey.db) or a postgres:// URL for postgres"},
		{Path: "worker.check_interval", Line: 4, Message: `bad duration "5x": use Go syntax plus d for days, e.g. 90d, 12h, 30s`},
	}
	if !reflect.DeepEqual(ps, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", listProblems(ps), listProblems(want))
	}
	e := &ValidationError{Problems: ps}
	wantMsg := "store.dsn: missing: set dsn to a file path for sqlite (e.g. rekey.db) or a postgres:// URL for postgres\n" +
		`worker.check_interval: bad duration "5x": use Go syntax plus d for days, e.g. 90d, 12h, 30s`
	if e.Error() != wantMsg {
		t.Errorf("Error() =\n%s\nwant\n%s", e.Error(), wantMsg)
	}
	e.File = "rekey.yaml"
	if got := strings.Split(e.Error(), "\n"); got[0] != "rekey.yaml:2: store.dsn: missing: set dsn to a file path for sqlite (e.g. rekey.db) or a postgres:// URL for postgres" ||
		!strings.HasPrefix(got[1], "rekey.yaml:4: worker.check_interval: ") {
		t.Errorf("Error() with File =\n%s", e.Error())
	}
}

func TestProblemLines(t *testing.T) {
	t.Parallel()
	y := `version: 1
backends:
  hsm:
    type: local
    master_key_file: m.key
keys:
  - name: a
    backend: nope
`
	ps := problemsOf(t, y, nil)
	lines := map[string]int{}
	for _, p := range ps {
		lines[p.Path] = p.Line
	}
	// A missing field is reported at the line of its section.
	want := map[string]int{"backends.hsm.keyring": 3, "keys[0].backend": 8}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("lines = %v, want %v\n%s", lines, want, listProblems(ps))
	}
}

func TestTooManyProblems(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("version: 1\nworker:\n")
	for i := range 150 {
		fmt.Fprintf(&b, "  f%d: 1\n", i)
	}
	ps := problemsOf(t, b.String(), nil)
	if len(ps) != maxProblems+1 || ps[maxProblems].Message != "and more problems: showing the first 100" {
		t.Errorf("got %d problems, last %q", len(ps), ps[len(ps)-1])
	}
}

func TestParseMinimalIsDefault(t *testing.T) {
	t.Parallel()
	for _, y := range []string{
		"version: 1\n",
		"version: 1\nstore:\nbackends:\nworker:\nhttp: ~\nlog:\nkeys:\n",
		"# comment\nversion: 1\nworker: {}\ndefaults: {}\n",
	} {
		got := mustParse(t, y, nil)
		if want := Default(home); !reflect.DeepEqual(got, want) {
			t.Errorf("Parse(%q) =\n%#v\nwant Default:\n%#v", y, got, want)
		}
	}
}

func TestDefault(t *testing.T) {
	t.Parallel()
	c := Default(home)
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate(): %v", err)
	}
	if c.Store.Driver != DriverSQLite || c.Store.DSN.Value() != "/srv/rekey/rekey.db" {
		t.Errorf("store = %+v", c.Store)
	}
	l := c.Backends["local"]
	if ls, ok := l.Settings.(*localkms.Settings); l.Type != BackendLocal || !ok || ls.Keyring != "/srv/rekey/keyring" || ls.MasterKeyFile != "/srv/rekey/master.key" || len(c.Backends) != 1 {
		t.Errorf("backends = %+v", c.Backends)
	}
	wantPolicy := rekey.Policy{RotationPeriod: 90 * rekey.Day, RotateWithin: 7 * rekey.Day, NotifyWithin: 14 * rekey.Day, Grace: 7 * rekey.Day, MaxEncryptions: rekey.DefaultMaxEncryptions, RotateAt: rekey.DefaultRotateAt}
	if c.Defaults != wantPolicy {
		t.Errorf("defaults = %+v", c.Defaults)
	}
	wantWorker := WorkerConfig{CheckInterval: time.Minute, BatchSize: 1000, Concurrency: 8, LeaseTTL: 30 * time.Second}
	if c.Worker != wantWorker {
		t.Errorf("worker = %+v", c.Worker)
	}
	if c.HTTP.Listen != "127.0.0.1:9464" || c.Log != (LogConfig{Level: "info", Format: "json"}) {
		t.Errorf("http = %+v, log = %+v", c.HTTP, c.Log)
	}
	if c.DefaultBackend() != "local" {
		t.Errorf("DefaultBackend = %q", c.DefaultBackend())
	}
}

func TestDefaultYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	got := mustParseDir(t, DefaultYAML(), dir)
	if want := Default(dir); !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(DefaultYAML()) =\n%#v\nwant Default:\n%#v", got, want)
	}
	// The file rekey init writes, loaded from disk.
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, DefaultYAML(), 0o600); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(dir); !reflect.DeepEqual(loaded, want) {
		t.Errorf("Load(DefaultYAML file) =\n%#v\nwant Default:\n%#v", loaded, want)
	}
	// The commented-out examples are valid once uncommented.
	var b strings.Builder
	for line := range strings.Lines(string(DefaultYAML())) {
		switch {
		case strings.HasPrefix(line, "  # ") && !strings.HasPrefix(line, "  #   #"):
			line = "  " + line[4:]
		case strings.HasPrefix(line, "#  "):
			line = line[1:]
		case strings.HasPrefix(line, "keys: []"):
			line = "keys:\n"
		}
		b.WriteString(line)
	}
	c, err := parse([]byte(b.String()), dir, envOf(nil))
	if err != nil {
		t.Fatalf("uncommented default:\n%s\n%v", b.String(), err)
	}
	if len(c.Backends) != 2 || len(c.Keys) != 1 || c.Keys[0].Backend != "local" {
		t.Errorf("uncommented default: backends %v, keys %+v", c.BackendNames(), c.Keys)
	}
}

func mustParseDir(t *testing.T, data []byte, dir string) *Config {
	t.Helper()
	c, err := parse(data, dir, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseFull(t *testing.T) {
	t.Parallel()
	y := `version: 1
store: {driver: postgres, dsn: "postgres://rekey:${PGPASS}@db:5432/rekey?sslmode=disable"}
backends:
  local: {type: local, keyring: ./data/keyring}
  aws:   {type: local, keyring: "${RING}", master_key_file: /etc/rekey/mk}
  hsm:   {type: local, keyring: /var/lib/hsm.ring}
defaults: {rotation_period: 30d, rotate_within: 2d, notify_within: 5d, grace: 1d12h, destroy_after: 365d}
worker: {check_interval: 2s, batch_size: 500, concurrency: 4, kms_rate_limit: 12.5, lease_ttl: 10s, range_workers: 3}
http: {listen: ":0"}
log: {level: debug, format: text}
keys:
  - {name: payments, backend: local, rotation_period: 2s, rotate_within: 1s}
  - {name: orders, backend: aws, destroy_after: never}
  - {name: ledger, backend: hsm, grace: 0s, notify_within: 3d}
`
	env := map[string]string{"PGPASS": "pg-secret", "RING": "rings/aws"}
	c := mustParse(t, y, env)
	want := &Config{
		Version: 1,
		Store:   StoreConfig{Driver: DriverPostgres, DSN: "postgres://rekey:pg-secret@db:5432/rekey?sslmode=disable"},
		Backends: map[string]BackendConfig{
			"local": {Type: BackendLocal, Settings: &localkms.Settings{Keyring: "/srv/rekey/data/keyring"}},
			"aws":   {Type: BackendLocal, Settings: &localkms.Settings{Keyring: "/srv/rekey/rings/aws", MasterKeyFile: "/etc/rekey/mk"}},
			"hsm":   {Type: BackendLocal, Settings: &localkms.Settings{Keyring: "/var/lib/hsm.ring"}},
		},
		Defaults: rekey.Policy{RotationPeriod: 30 * rekey.Day, RotateWithin: 2 * rekey.Day, NotifyWithin: 5 * rekey.Day, Grace: 36 * time.Hour, DestroyAfter: 365 * rekey.Day, MaxEncryptions: rekey.DefaultMaxEncryptions, RotateAt: rekey.DefaultRotateAt},
		Worker:   WorkerConfig{CheckInterval: 2 * time.Second, BatchSize: 500, Concurrency: 4, KMSRateLimit: 12.5, LeaseTTL: 10 * time.Second, RangeWorkers: 3},
		HTTP:     HTTPConfig{Listen: ":0"},
		Log:      LogConfig{Level: "debug", Format: "text"},
		Keys: []KeyConfig{
			{Name: "payments", Backend: "local", RotationPeriod: dur(2 * time.Second), RotateWithin: dur(time.Second)},
			{Name: "orders", Backend: "aws", DestroyAfter: dur(0)},
			{Name: "ledger", Backend: "hsm", Grace: dur(0), NotifyWithin: dur(3 * rekey.Day)},
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got\n%#v\nwant\n%#v", c, want)
	}
	if c.DefaultBackend() != "" {
		t.Errorf("DefaultBackend with several backends = %q", c.DefaultBackend())
	}
	if got := c.BackendNames(); !reflect.DeepEqual(got, []string{"aws", "hsm", "local"}) {
		t.Errorf("BackendNames = %v", got)
	}
	if c.Log.SlogLevel() != slog.LevelDebug {
		t.Errorf("SlogLevel = %v", c.Log.SlogLevel())
	}
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	c := Default(home)
	c.Defaults.DestroyAfter = 400 * rekey.Day
	tests := []struct {
		name string
		key  KeyConfig
		want rekey.Policy
	}{
		{"no overrides", KeyConfig{Name: "a"}, c.Defaults},
		{"all overrides", KeyConfig{Name: "a", RotationPeriod: dur(time.Hour), RotateWithin: dur(time.Minute), NotifyWithin: dur(2 * time.Minute), Grace: dur(0), DestroyAfter: dur(0),
			MaxEncryptions: ptr(int64(1000)), RotateAt: ptr(0.5)},
			rekey.Policy{RotationPeriod: time.Hour, RotateWithin: time.Minute, NotifyWithin: 2 * time.Minute, MaxEncryptions: 1000, RotateAt: 0.5}},
		{"some overrides", KeyConfig{Name: "a", RotationPeriod: dur(30 * rekey.Day)},
			rekey.Policy{RotationPeriod: 30 * rekey.Day, RotateWithin: 7 * rekey.Day, NotifyWithin: 14 * rekey.Day, Grace: 7 * rekey.Day, DestroyAfter: 400 * rekey.Day, MaxEncryptions: rekey.DefaultMaxEncryptions, RotateAt: rekey.DefaultRotateAt}},
	}
	for _, tt := range tests {
		if got := c.Policy(tt.key); got != tt.want {
			t.Errorf("%s: Policy = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestKeyDefaultsToOnlyBackend(t *testing.T) {
	t.Parallel()
	c := mustParse(t, minimal+"backends: {kms: {type: local, keyring: k}}\nkeys: [{name: a}]\n", nil)
	if c.Keys[0].Backend != "kms" {
		t.Errorf("key backend = %q, want kms", c.Keys[0].Backend)
	}
	c = mustParse(t, minimal+"keys: [{name: a}]\n", nil)
	if c.Keys[0].Backend != "local" {
		t.Errorf("key backend with default backends = %q, want local", c.Keys[0].Backend)
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Parallel()
	env := map[string]string{"BATCH": "250", "EVERY": "90s", "HOST": "0.0.0.0", "EMPTY": "", "PIN": "p$n${X}"}
	y := minimal + `worker: {batch_size: "${BATCH}", check_interval: "${EVERY}"}
http: {listen: "${HOST}:9${EMPTY}464"}
backends:
  l: {type: local, keyring: "a$$b", master_key_file: "${PIN}"}
`
	c := mustParse(t, y, env)
	if c.Worker.BatchSize != 250 || c.Worker.CheckInterval != 90*time.Second {
		t.Errorf("worker = %+v", c.Worker)
	}
	if c.HTTP.Listen != "0.0.0.0:9464" {
		t.Errorf("listen = %q", c.HTTP.Listen)
	}
	l := c.Backends["l"].Settings.(*localkms.Settings)
	if l.Keyring != "/srv/rekey/a$b" || l.MasterKeyFile != "/srv/rekey/p$n${X}" { // a value is not expanded twice
		t.Errorf("local settings = %+v", l)
	}
	// Field names are not expanded.
	problemsOf(t, minimal+"${X}: 1\n", map[string]string{"X": "version"})
}

func TestExpand(t *testing.T) {
	t.Parallel()
	env := envOf(map[string]string{"A": "alpha", "B_2": "beta", "E": ""})
	tests := []struct {
		in, want, err string
	}{
		{"plain", "plain", ""},
		{"${A}", "alpha", ""},
		{"x${A}y${B_2}z", "xalphaybetaz", ""},
		{"${E}", "", ""},
		{"$$", "$", ""},
		{"$${A}", "${A}", ""},
		{"$$$${A}", "$${A}", ""},
		{"$$${A}", "$alpha", ""},
		{"${MISSING}", "", "environment variable MISSING is not set"},
		{"${M1}${M2}${M1}", "", "environment variables M1, M2 are not set"},
		{"$A", "", "a $ not followed by { or $"},
		{"cost: 5$", "", "a $ not followed by { or $"},
		{"${A", "", "unterminated ${"},
		{"${}", "", "bad variable reference"},
		{"${1A}", "", "bad variable reference"},
		{"${A-B}", "", "bad variable reference"},
	}
	for _, tt := range tests {
		got, err := expand(tt.in, env)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("expand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("expand(%q) error = %v, want %q", tt.in, err, tt.err)
		}
	}
}

func TestRelativePaths(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		get        func(*Config) string
		want       string
	}{
		{"sqlite path", "store: {driver: sqlite, dsn: state/rekey.db}", dsnOf, "/srv/rekey/state/rekey.db"},
		{"sqlite dot path", "store: {driver: sqlite, dsn: ./rekey.db}", dsnOf, "/srv/rekey/rekey.db"},
		{"sqlite parent path", "store: {driver: sqlite, dsn: ../db/rekey.db}", dsnOf, "/srv/db/rekey.db"},
		{"sqlite absolute", "store: {driver: sqlite, dsn: /var/lib/rekey.db}", dsnOf, "/var/lib/rekey.db"},
		{"sqlite options", "store: {driver: sqlite, dsn: \"rekey.db?_busy_timeout=5000\"}", dsnOf, "/srv/rekey/rekey.db?_busy_timeout=5000"},
		{"sqlite file URI", "store: {driver: sqlite, dsn: \"file:rekey.db?mode=rwc\"}", dsnOf, "file:/srv/rekey/rekey.db?mode=rwc"},
		{"sqlite absolute file URI", "store: {driver: sqlite, dsn: \"file:/x/rekey.db\"}", dsnOf, "file:/x/rekey.db"},
		{"sqlite memory", "store: {driver: sqlite, dsn: \":memory:\"}", dsnOf, ":memory:"},
		{"sqlite memory URI", "store: {driver: sqlite, dsn: \"file::memory:?cache=shared\"}", dsnOf, "file::memory:?cache=shared"},
		{"postgres untouched", "store: {driver: postgres, dsn: \"host=db user=rekey\"}", dsnOf, "host=db user=rekey"},
		{"keyring", "backends: {l: {type: local, keyring: keys/ring}}", func(c *Config) string { return localOf(c, "l").Keyring }, "/srv/rekey/keys/ring"},
		{"master key", "backends: {l: {type: local, keyring: k, master_key_file: ../secret/master.key}}", func(c *Config) string { return localOf(c, "l").MasterKeyFile }, "/srv/secret/master.key"},
		{"absolute master key", "backends: {l: {type: local, keyring: k, master_key_file: /etc/rekey/mk}}", func(c *Config) string { return localOf(c, "l").MasterKeyFile }, "/etc/rekey/mk"},
		{"keyring from env", "backends: {l: {type: local, keyring: \"${DIR}/ring\"}}", func(c *Config) string { return localOf(c, "l").Keyring }, "/srv/rekey/sub/ring"},
	}
	for _, tt := range tests {
		c := mustParse(t, minimal+tt.yaml+"\n", map[string]string{"DIR": "sub"})
		if got := tt.get(c); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
	// An empty baseDir leaves relative paths relative.
	c, err := parse([]byte(minimal+"store: {driver: sqlite, dsn: x.db}\n"), "", envOf(nil))
	if err != nil || c.Store.DSN != "x.db" || localOf(c, "local").Keyring != "keyring" {
		t.Errorf("empty baseDir: %v, %+v", err, c)
	}
}

func dsnOf(c *Config) string { return c.Store.DSN.Value() }

// localOf returns the local settings of backend name in c, or empty ones.
func localOf(c *Config, name string) localkms.Settings {
	if s, ok := c.Backends[name].Settings.(*localkms.Settings); ok {
		return *s
	}
	return localkms.Settings{}
}

func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	const s = "TOPSECRET"
	env := map[string]string{"S": s}
	bad := []string{
		// Each has a problem in or near a secret field.
		minimal + "store: {driver: postgres, dsn: \"" + s + "$\"}\n",
		minimal + "store: {driver: postgres, dsn: \"" + s + "\"}\n",
		minimal + "store: {driver: sqlite, dsn: \"postgres://u:" + s + "@h/d\"}\n",
		minimal + "backends: {h: {type: pkcs11, module: m, token_label: t, pin: \"" + s + "$x\"}}\n",
		minimal + "backends: {h: {type: pkcs11, module: m, token_label: t, pin: \"${" + s + "\"}}\n",
		minimal + "backends: {h: {type: pkcs11, module: m, token_label: t, pin: [" + s + "]}}\n",
		minimal + "backends: {h: {type: local, keyring: k, pin: \"" + s + "\"}}\n",
		minimal + "backends: {v: {type: vault, address: \"https://u:" + s + "@v\", token: \"" + s + "$\", mount: m}}\n",
		minimal + "backends: {v: {type: vault, address: \"x" + s + "\", token: t}}\n",
		minimal + "backends: {k: {type: keyprotect, region: r, instance_id: i, api_key: {k: " + s + "}}}\n",
		minimal + "backends: {k: {type: keyprotect, endpoint: \"" + s + "\", instance_id: i, api_key: \"${S}\"}}\n",
		minimal + "store: \"postgres://u:" + s + "@h/d\"\n",
	}
	for _, y := range bad {
		_, err := parse([]byte(y), home, envOf(env))
		if err == nil {
			t.Errorf("no error for\n%s", y)
			continue
		}
		if strings.Contains(err.Error(), s) {
			t.Errorf("error repeats a secret:\n%s\n->\n%v", y, err)
		}
	}

	c := mustParse(t, minimal+`store: {driver: postgres, dsn: "postgres://u:${S}@h/d"}
backends:
  l: {type: local, keyring: k}
`, env)
	var buf strings.Builder
	fmt.Fprintf(&buf, "%v %+v %#v %s %q %x", c, c, c, c.Store.DSN, c.Store.DSN, c.Store.DSN)
	for _, b := range c.Backends {
		fmt.Fprintf(&buf, "%+v %#v", b, b)
	}
	js, _ := json.Marshal(c)
	buf.Write(js)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "dsn", c.Store.DSN, "store", c.Store)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "dsn", c.Store.DSN, "store", c.Store)
	if strings.Contains(buf.String(), s) {
		t.Errorf("printing the config shows a secret:\n%s", buf.String())
	}
	if c.Store.DSN.Value() != "postgres://u:"+s+"@h/d" || c.Store.RedactedDSN() != "postgres://u:xxxxx@h/d" {
		t.Errorf("Value = %q, RedactedDSN = %q", c.Store.DSN.Value(), c.Store.RedactedDSN())
	}
	if Secret("").String() != "" || Secret("x").String() != "[redacted]" {
		t.Errorf("Secret.String")
	}
}

func TestRedactedDSN(t *testing.T) {
	t.Parallel()
	tests := []struct{ driver, dsn, want string }{
		{DriverSQLite, "/x/rekey.db", "/x/rekey.db"},
		{DriverPostgres, "postgres://rekey:pw@db:5432/rekey?sslmode=disable", "postgres://rekey:xxxxx@db:5432/rekey?sslmode=disable"},
		{DriverPostgres, "postgres://db/rekey", "postgres://db/rekey"},
		{DriverPostgres, "host=db user=rekey password=pw dbname=rekey", "host=db user=rekey password=xxxxx dbname=rekey"},
		{DriverPostgres, "host=db password='p w\\'x' dbname=rekey", "host=db password=xxxxx dbname=rekey"},
	}
	for _, tt := range tests {
		if got := (StoreConfig{Driver: tt.driver, DSN: Secret(tt.dsn)}).RedactedDSN(); got != tt.want {
			t.Errorf("RedactedDSN(%q) = %q, want %q", tt.dsn, got, tt.want)
		}
	}
}

func TestValidateBuiltConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*Config)
		path   string
		msg    string
	}{
		{"no backends", func(c *Config) { c.Backends = nil }, "backends", "missing"},
		{"type without settings", func(c *Config) { c.Backends["local"] = BackendConfig{Type: BackendLocal} }, "backends.local", "type local but no local settings"},
		{"settings of another type", func(c *Config) {
			c.Backends["local"] = BackendConfig{Type: BackendLocal, Settings: otherSettings{}}
		}, "backends.local", "settings of type config.otherSettings on a backend of type local: use *localkms.Settings"},
		{"typed nil settings", func(c *Config) {
			c.Backends["local"] = BackendConfig{Type: BackendLocal, Settings: (*localkms.Settings)(nil)}
		}, "backends.local", "type local but no local settings: set the fields keyring, master_key_file"},
		{"invalid settings", func(c *Config) {
			c.Backends["local"] = BackendConfig{Type: BackendLocal, Settings: &localkms.Settings{MasterKeyFile: "m"}}
		}, "backends.local.keyring", "missing: set keyring"},
		{"missing type", func(c *Config) { c.Backends["x"] = BackendConfig{} }, "backends.x.type", "missing"},
		{"rotate_within as long as the period", func(c *Config) { c.Defaults.RotateWithin = c.Defaults.RotationPeriod }, "defaults.rotate_within", "90d is not shorter than rotation_period 90d"},
		{"key notify_within below rotate_within", func(c *Config) {
			c.Keys = []KeyConfig{{Name: "a", Backend: "local", RotateWithin: dur(time.Hour), NotifyWithin: dur(time.Minute)}}
		}, "keys[0].notify_within", "1m0s is shorter than rotate_within 1h0m0s"},
		{"negative policy", func(c *Config) { c.Defaults.Grace = -time.Hour }, "defaults.grace", "-1h0m0s is negative"},
		{"negative key override", func(c *Config) {
			c.Keys = []KeyConfig{{Name: "a", Backend: "local", DestroyAfter: dur(-time.Second)}}
		}, "keys[0].destroy_after", "negative"},
		{"NaN rate", func(c *Config) { c.Worker.KMSRateLimit = math.NaN() }, "worker.kms_rate_limit", "not a rate"},
		{"empty listen", func(c *Config) { c.HTTP.Listen = "" }, "http.listen", "missing"},
		{"bad port", func(c *Config) { c.HTTP.Listen = "127.0.0.1:http" }, "http.listen", "not a number from 0 to 65535"},
		{"no version", func(c *Config) { c.Version = 0 }, "version", "missing"},
	}
	for _, tt := range tests {
		c := Default(home)
		tt.change(c)
		err := c.Validate()
		var verr *ValidationError
		if !errors.As(err, &verr) || !hasProblem(verr.Problems, tt.path, tt.msg) {
			t.Errorf("%s: Validate() = %v, want %s: ...%s...", tt.name, err, tt.path, tt.msg)
		}
	}
}

// otherSettings are settings of no available backend type.
type otherSettings struct{}

func (otherSettings) Validate() error { return nil }

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "conf", "rekey.yaml")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("version: 1\nstore: {driver: sqlite, dsn: ../state.db}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Store.DSN.Value(), filepath.Join(dir, "state.db"); got != want {
		t.Errorf("dsn = %q, want %q", got, want)
	}
	if got, want := localOf(c, "local").Keyring, filepath.Join(dir, "conf", "keyring"); got != want {
		t.Errorf("keyring = %q, want %q", got, want)
	}

	if err := os.WriteFile(path, []byte("version: 1\nworker: {batch_size: 0}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	var verr *ValidationError
	if !errors.As(err, &verr) || verr.File != path || err.Error() != path+":2: worker.batch_size: 0 is out of range: use 1 to 100000" {
		t.Errorf("Load(bad) = %v", err)
	}

	missing := filepath.Join(dir, "nope.yaml")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v", err)
	}
}

// Resolve tests change the working directory: not parallel.
func TestResolve(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	env := func(vars map[string]string) func(string) string {
		return func(k string) string { return vars[k] }
	}
	check := func(name, flag string, vars map[string]string, wantPath, wantHome string, wantFile bool) {
		t.Helper()
		p, h, f := Resolve(flag, env(vars))
		if p != wantPath || h != wantHome || f != wantFile {
			t.Errorf("%s: Resolve = (%q, %q, %v), want (%q, %q, %v)", name, p, h, f, wantPath, wantHome, wantFile)
		}
	}
	all := map[string]string{"REKEY_CONFIG": "/etc/rekey/rekey.yaml", "REKEY_HOME": "/var/lib/rekey"}
	check("flag wins", "conf/my.yaml", all, "conf/my.yaml", "conf", true)
	check("then REKEY_CONFIG", "", all, "/etc/rekey/rekey.yaml", "/etc/rekey", true)
	check("then embedded default in REKEY_HOME", "", map[string]string{"REKEY_HOME": "/var/lib/rekey"}, "", "/var/lib/rekey", false)
	check("default home", "", nil, "", "rekey-data", false)

	if err := os.MkdirAll("rekey-data", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("rekey-data/rekey.yaml", DefaultYAML(), 0o600); err != nil {
		t.Fatal(err)
	}
	check("home's rekey.yaml", "", nil, "rekey-data/rekey.yaml", "rekey-data", true)

	if err := os.WriteFile("rekey.yaml", []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	check("./rekey.yaml before home", "", map[string]string{"REKEY_HOME": "rekey-data"}, "rekey.yaml", ".", true)
	check("flag before ./rekey.yaml", "x.yaml", nil, "x.yaml", ".", true)

	// nil env reads the process environment.
	t.Setenv("REKEY_CONFIG", "/from/env.yaml")
	if p, _, _ := Resolve("", nil); p != "/from/env.yaml" {
		t.Errorf("Resolve with nil env = %q", p)
	}
}

func TestParentPath(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"":                              "",
		"version":                       "",
		"store.dsn":                     "store",
		"keys[3].name":                  "keys[3]",
		"keys[3]":                       "keys",
		`backends["a.b"].type`:          `backends["a.b"]`,
		`backends["a.b"]`:               "backends",
		`backends["x[\"y"]`:             "backends",
		`worker["\\"]`:                  "worker",
		childPath("backends", `a"]["b`): "backends",
	}
	for in, want := range tests {
		if got := parentPath(in); got != want {
			t.Errorf("parentPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAliasesAreBounded(t *testing.T) {
	t.Parallel()
	// A large mapping aliased many times: the walk stops early instead of
	// reporting millions of problems.
	var b strings.Builder
	b.WriteString("version: 1\nbackends:\n  big: &big\n")
	for i := range 3000 {
		fmt.Fprintf(&b, "    f%d: 1\n", i)
	}
	b.WriteString("keys:\n")
	for range 3000 {
		b.WriteString("  - *big\n")
	}
	if ps := problemsOf(t, b.String(), nil); len(ps) > maxProblems+1 {
		t.Errorf("%d problems", len(ps))
	}
	// Scalars may be shared through anchors.
	c := mustParse(t, minimal+"defaults: {rotate_within: &w 2d, grace: *w}\nkeys: [{name: a, grace: *w}]\n", nil)
	if c.Defaults.Grace != 2*rekey.Day || *c.Keys[0].Grace != 2*rekey.Day {
		t.Errorf("aliases: %+v %+v", c.Defaults, c.Keys[0])
	}
}

// rateSettings are settings with a rate of their own.
type rateSettings struct {
	rps      float64
	explicit bool
}

func (rateSettings) Validate() error              { return nil }
func (r rateSettings) RateLimit() (float64, bool) { return r.rps, r.explicit }

func TestEffectiveRateLimit(t *testing.T) {
	for _, tc := range []struct {
		settings BackendSettings
		worker   float64
		want     float64
	}{
		{&localkms.Settings{}, 0, 0},
		{&localkms.Settings{}, 50, 50},
		{rateSettings{rps: 1000}, 0, 1000},                // the backend's default
		{rateSettings{rps: 1000}, 50, 50},                 // worker.kms_rate_limit beats a default
		{rateSettings{rps: 200, explicit: true}, 50, 200}, // an explicit rate_limit beats both
	} {
		if got := EffectiveRateLimit(BackendConfig{Settings: tc.settings}, tc.worker); got != tc.want {
			t.Errorf("EffectiveRateLimit(%+v, %v) = %v, want %v", tc.settings, tc.worker, got, tc.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestUsageFields: max_encryptions and rotate_at parse in defaults and per
// key, and bad values are refused naming the field.
func TestUsageFields(t *testing.T) {
	t.Parallel()
	base := "version: 1\nstore: {driver: sqlite, dsn: /tmp/x.db}\nbackends:\n  local: {type: local, keyring: /tmp/k, master_key_file: /tmp/m}\n"
	c, err := Parse([]byte(base+"defaults: {max_encryptions: 5000, rotate_at: 0.5}\nkeys:\n  - {name: a, max_encryptions: 1000}\n  - {name: b, rotate_at: 0.9}\n"), "/tmp")
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Policy(c.Keys[0]); p.MaxEncryptions != 1000 || p.RotateAt != 0.5 {
		t.Errorf("key a policy = %+v, want max 1000 (its own), rotate_at 0.5 (defaults)", p)
	}
	if p := c.Policy(c.Keys[1]); p.MaxEncryptions != 5000 || p.RotateAt != 0.9 {
		t.Errorf("key b policy = %+v, want max 5000 (defaults), rotate_at 0.9 (its own)", p)
	}
	for _, bad := range []struct{ yaml, field string }{
		{"defaults: {max_encryptions: 0}\n", "defaults.max_encryptions"},
		{"defaults: {rotate_at: 0}\n", "defaults.rotate_at"},
		{"defaults: {rotate_at: 1.5}\n", "defaults.rotate_at"},
		{"defaults: {max_encryptions: 8589934592}\n", "defaults.max_encryptions"},
		{"keys:\n  - {name: a, max_encryptions: -3}\n", "keys[0].max_encryptions"},
		{"keys:\n  - {name: a, rotate_at: -0.1}\n", "keys[0].rotate_at"},
	} {
		_, err := Parse([]byte(base+bad.yaml), "/tmp")
		if err == nil || !strings.Contains(err.Error(), bad.field) {
			t.Errorf("%q: error %v, want one naming %s", bad.yaml, err, bad.field)
		}
	}
}

package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/rekeyhq/rekey"
)

// readError says why the configuration file at path cannot be read, and
// what to do; it wraps err (errors.Is(err, fs.ErrNotExist) still holds).
func readError(path string, err error) error {
	var why string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		why = "it does not exist: check --config and $REKEY_CONFIG (without either, rekey uses ./rekey.yaml or the embedded default in $REKEY_HOME)"
	case errors.Is(err, fs.ErrPermission):
		why = "permission denied: make it readable by the user running rekey (as its owner: chmod 600 " + path + ")"
	default:
		if st, serr := os.Stat(path); serr == nil && st.IsDir() {
			why = "it is a directory: give the YAML file in it (rekey.yaml)"
		} else {
			why = "check the file and the disk"
		}
	}
	return fmt.Errorf("config file %s cannot be read: %s: %w", path, why, err)
}

// Load reads the configuration file at path and parses it with Parse,
// resolving relative paths against the file's directory (made absolute).
// A file that cannot be read gives an error naming it; a configuration
// with problems gives a *ValidationError whose File is path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, readError(path, err)
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	c, err := Parse(data, dir)
	if verr, ok := errors.AsType[*ValidationError](err); ok {
		verr.File = path
	}
	return c, err
}

// Parse reads a YAML configuration, fills in the defaults and validates it.
//
// Omitted sections and fields take their defaults; an omitted store is
// SQLite at <baseDir>/rekey.db and omitted backends are one local backend
// named "local" with <baseDir>/keyring and <baseDir>/master.key, so that
// "version: 1" alone is Default(baseDir). A key that names no backend uses
// the only configured one. Relative file paths (a sqlite dsn, keyring,
// master_key_file, a pkcs11 module with a directory part) are resolved
// against baseDir; an empty baseDir leaves them relative to the working
// directory.
//
// In every scalar value, ${VAR} is replaced by the environment variable VAR
// and $$ by $; an unset variable, or a $ followed by anything else, is a
// problem. Expansion happens before a value is interpreted, so numbers and
// durations may come from the environment too.
//
// Every error is a *ValidationError holding all problems found, each with
// its field path and line: YAML syntax, unknown or duplicate fields, wrong
// types, bad durations or enum values, unset variables, missing required
// fields, backend fields that do not belong to the backend's type,
// duplicate key names, keys naming an unknown backend. No message repeats
// the value of a secret.
func Parse(data []byte, baseDir string) (*Config, error) {
	return parse(data, baseDir, os.LookupEnv)
}

func parse(data []byte, baseDir string, lookup func(string) (string, bool)) (*Config, error) {
	root, prob := decodeYAML(data)
	if prob != nil {
		return nil, &ValidationError{Problems: []Problem{*prob}}
	}
	d := &decoder{
		baseDir: baseDir,
		lookup:  lookup,
		lines:   map[string]int{},
		bad:     map[string]bool{},
		budget:  maxNodes,
	}
	cfg := base()
	if root != nil && root.Kind != yaml.MappingNode {
		return nil, &ValidationError{Problems: []Problem{{Line: root.Line,
			Message: fmt.Sprintf("a config is a mapping of fields (%s), not %s", strings.Join(topFields, ", "), kindName(root))}}}
	}
	if root != nil {
		d.config(root, cfg)
	}
	if !d.seen["store"] {
		cfg.Store = defaultStore(baseDir)
	}
	if !d.seen["backends"] {
		cfg.Backends = defaultBackends(baseDir)
	}
	if def := cfg.DefaultBackend(); def != "" {
		for i := range cfg.Keys {
			if cfg.Keys[i].Backend == "" && !d.bad[indexPath("keys", i)+".backend"] {
				cfg.Keys[i].Backend = def
			}
		}
	}
	problems := d.problems
	for _, p := range cfg.problems() {
		if d.reported(p.Path) {
			continue
		}
		p.Line = d.lineOf(p.Path)
		problems = append(problems, p)
	}
	if len(problems) == 0 {
		return cfg, nil
	}
	// Document order; problems without a line (those of an empty
	// document) last.
	slices.SortStableFunc(problems, func(a, b Problem) int {
		switch {
		case a.Line == b.Line:
			return 0
		case a.Line == 0:
			return 1
		case b.Line == 0:
			return -1
		}
		return cmp.Compare(a.Line, b.Line)
	})
	if len(problems) > maxProblems {
		problems = append(problems[:maxProblems:maxProblems], Problem{Message: fmt.Sprintf("and more problems: showing the first %d", maxProblems)})
	}
	return nil, &ValidationError{Problems: problems}
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+):`)

// decodeYAML parses data into the root node of its single document: nil
// for an empty document. A syntax error comes back as a Problem.
func decodeYAML(data []byte) (root *yaml.Node, prob *Problem) {
	defer func() {
		// yaml.v3 reports syntax errors as errors; anything it panics with
		// is a bug in it, but a config file must not crash the daemon.
		if r := recover(); r != nil {
			root, prob = nil, &Problem{Message: fmt.Sprintf("yaml: cannot parse the document: %v", r)}
		}
	}()
	syntax := func(err error) *Problem {
		p := &Problem{Message: err.Error()}
		if m := yamlLineRE.FindStringSubmatch(p.Message); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			p.Message += ": fix the YAML syntax at that line, then check the file with rekey config validate"
		} else {
			p.Message += ": the file is not valid YAML text: fix or restore it, then check it with rekey config validate"
		}
		return p
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return nil, nil
	case err != nil:
		return nil, syntax(err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntax(err)
	case len(extra.Content) > 0 && !isNull(extra.Content[0]):
		return nil, &Problem{Line: extra.Line, Message: "yaml: several documents (---): a config file holds one"}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, nil
	}
	root = doc.Content[0]
	if root.Kind == yaml.AliasNode {
		root = root.Alias
	}
	if isNull(root) {
		return nil, nil
	}
	return root, nil
}

// maxNodes bounds the nodes one Parse visits. Aliases can make a small
// document visit the same large node many times.
const maxNodes = 1 << 18

// decoder walks the YAML tree into a Config, recording problems with their
// path and line.
type decoder struct {
	baseDir  string
	lookup   func(string) (string, bool)
	problems []Problem
	lines    map[string]int  // field path → line, for Validate's problems
	bad      map[string]bool // paths that already have a problem
	seen     map[string]bool // top-level sections present and not null
	budget   int
}

func (d *decoder) addf(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	if line == 0 {
		line = d.lineOf(path)
	}
	d.problems = append(d.problems, Problem{Path: path, Line: line, Message: fmt.Sprintf(format, args...)})
	d.bad[path] = true
	d.stopIfTooMany()
}

// stopIfTooMany ends the walk once there are more problems than are worth
// printing: deref returns nil from then on.
func (d *decoder) stopIfTooMany() {
	if len(d.problems) > maxProblems {
		d.budget = -1
	}
}

// notef records a problem without marking path as bad: the problem is
// beside the fields of path, which Validate still checks.
func (d *decoder) notef(n *yaml.Node, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{Path: path, Line: n.Line, Message: fmt.Sprintf(format, args...)})
	d.stopIfTooMany()
}

// reported reports whether path or one of its ancestors already has a
// problem, so that Validate does not report the consequence (a missing
// value) of a problem found while decoding (a bad value).
func (d *decoder) reported(path string) bool {
	for p := path; ; p = parentPath(p) {
		if d.bad[p] {
			return true
		}
		if p == "" {
			return false
		}
	}
}

// lineOf returns the line of path, or of its nearest ancestor that has one.
func (d *decoder) lineOf(path string) int {
	for p := path; ; p = parentPath(p) {
		if l, ok := d.lines[p]; ok {
			return l
		}
		if p == "" {
			return 0
		}
	}
}

// deref follows aliases and charges the node to the budget; nil once the
// budget is spent.
func (d *decoder) deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 32; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return nil
	}
	d.budget--
	if d.budget == 0 {
		d.problems = append(d.problems, Problem{Line: n.Line, Message: "the document is too large or uses too many aliases"})
		d.bad[""] = true
	}
	if d.budget <= 0 {
		return nil
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

func kindName(n *yaml.Node) string {
	switch {
	case n == nil || isNull(n):
		return "empty"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.ScalarNode:
		return "a single value"
	}
	return "an unexpected YAML node"
}

// fieldSet is what a mapping may hold.
type fieldSet struct {
	allowed []string
	// unknown, if set, words the problem for a field not in allowed.
	unknown func(name string) string
}

// fields walks the mapping n at path: it reports a non-mapping, fields
// that are not plain strings, merge keys, duplicate and unknown fields,
// and calls set for each allowed field with its value node (which may be
// null: set treats that as "not set").
func (d *decoder) fields(n *yaml.Node, path string, fs fieldSet, set func(name string, v *yaml.Node, p string)) {
	if n.Kind != yaml.MappingNode {
		d.addf(n, path, "expected a mapping of fields (%s), got %s", strings.Join(fs.allowed, ", "), kindName(n))
		return
	}
	if _, ok := d.lines[path]; !ok {
		d.lines[path] = n.Line
	}
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.deref(n.Content[i]), d.deref(n.Content[i+1])
		if k == nil || v == nil {
			return
		}
		if k.Kind != yaml.ScalarNode {
			d.notef(k, path, "field names must be plain words, got %s", kindName(k))
			continue
		}
		name := k.Value
		p := childPath(path, name)
		if k.ShortTag() == "!!merge" {
			d.addf(k, p, "merge keys (<<) are not supported: write the fields out")
			continue
		}
		if line, dup := first[name]; dup {
			d.addf(k, p, "duplicate field %q (first at line %d)", echo(name), line)
			continue
		}
		first[name] = k.Line
		if !slices.Contains(fs.allowed, name) {
			msg := fmt.Sprintf("unknown field %q: allowed fields are %s", echo(name), strings.Join(fs.allowed, ", "))
			if fs.unknown != nil {
				msg = fs.unknown(name)
			}
			d.addf(k, p, "%s", msg)
			continue
		}
		d.lines[p] = k.Line
		set(name, v, p)
	}
}

// scalar returns the expanded text of a scalar; ok is false when n is null
// (not set) or has a problem (reported).
func (d *decoder) scalar(n *yaml.Node, p string) (string, bool) {
	if isNull(n) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode {
		d.addf(n, p, "expected a single value, got %s", kindName(n))
		return "", false
	}
	s, err := expand(n.Value, d.lookup)
	if err != nil {
		d.addf(n, p, "%s", err)
		return "", false
	}
	return s, true
}

func (d *decoder) str(n *yaml.Node, p string, dst *string) {
	if s, ok := d.scalar(n, p); ok {
		*dst = s
	}
}

func (d *decoder) secret(n *yaml.Node, p string, dst *Secret) {
	if s, ok := d.scalar(n, p); ok {
		*dst = Secret(s)
	}
}

// integer reads a whole number; it reports whether it set *dst.
func (d *decoder) integer(n *yaml.Node, p string, dst *int) bool {
	s, ok := d.scalar(n, p)
	if !ok {
		return false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32)
	if errors.Is(err, strconv.ErrRange) {
		d.addf(n, p, "%q is too large: use a whole number between %d and %d, within the field's range", echo(s), math.MinInt32, math.MaxInt32)
		return false
	}
	if err != nil {
		d.addf(n, p, "%q is not a whole number: use digits only, e.g. 10", echo(s))
		return false
	}
	*dst = int(v)
	return true
}

func (d *decoder) number(n *yaml.Node, p string, dst *float64) {
	s, ok := d.scalar(n, p)
	if !ok {
		return
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		d.addf(n, p, "%q is not a number", echo(s))
		return
	}
	*dst = v
}

// durationOf parses a duration field. never is allowed for destroy_after,
// where an explicit zero is refused: it would read as never.
func (d *decoder) durationOf(n *yaml.Node, p string, allowNever bool) (time.Duration, bool) {
	s, ok := d.scalar(n, p)
	if !ok {
		return 0, false
	}
	v, msg := parseDuration(s, allowNever)
	if msg != "" {
		d.addf(n, p, "%s", msg)
		return 0, false
	}
	return v, true
}

func (d *decoder) duration(n *yaml.Node, p string, dst *time.Duration, allowNever bool) {
	if v, ok := d.durationOf(n, p, allowNever); ok {
		*dst = v
	}
}

func (d *decoder) durationPtr(n *yaml.Node, p string, dst **time.Duration, allowNever bool) {
	if v, ok := d.durationOf(n, p, allowNever); ok {
		*dst = &v
	}
}

// parseDuration wraps rekey.ParseDuration with messages for a field path.
func parseDuration(s string, allowNever bool) (time.Duration, string) {
	t := strings.TrimSpace(s)
	const syntax = "use Go syntax plus d for days, e.g. 90d, 12h, 30s"
	switch {
	case t == "never" && !allowNever:
		return 0, fmt.Sprintf("bad duration %q: never is only allowed for destroy_after", echo(s))
	case strings.HasPrefix(t, "-"):
		return 0, fmt.Sprintf("bad duration %q: must not be negative: give a positive duration, e.g. 7d", echo(s))
	case strings.Contains(strings.ToLower(t), "nan"):
		// rekey.ParseDuration lets a NaN day count through.
		return 0, fmt.Sprintf("bad duration %q: %s", echo(s), syntax)
	}
	v, err := rekey.ParseDuration(t, allowNever)
	if err != nil || v < 0 { // v < 0: overflow
		return 0, fmt.Sprintf("bad duration %q: %s", echo(s), syntax)
	}
	if allowNever && v == 0 && t != "never" {
		return 0, fmt.Sprintf("bad duration %q: zero would mean never: write never, or a positive duration", echo(s))
	}
	return v, ""
}

var topFields = []string{"version", "store", "backends", "defaults", "worker", "http", "log", "keys", "dek_sources"}

func (d *decoder) config(root *yaml.Node, c *Config) {
	d.seen = map[string]bool{}
	d.fields(root, "", fieldSet{allowed: topFields}, func(name string, v *yaml.Node, p string) {
		if isNull(v) {
			return // an empty section is an omitted one
		}
		d.seen[name] = true
		switch name {
		case "version":
			d.integer(v, p, &c.Version)
		case "store":
			d.store(v, p, &c.Store)
		case "backends":
			d.backends(v, p, c)
		case "defaults":
			d.defaults(v, p, &c.Defaults)
		case "worker":
			d.worker(v, p, &c.Worker)
		case "http":
			d.fields(v, p, fieldSet{allowed: []string{"listen"}}, func(_ string, v *yaml.Node, p string) {
				d.str(v, p, &c.HTTP.Listen)
			})
		case "log":
			d.fields(v, p, fieldSet{allowed: []string{"level", "format"}}, func(name string, v *yaml.Node, p string) {
				switch name {
				case "level":
					d.str(v, p, &c.Log.Level)
				case "format":
					d.str(v, p, &c.Log.Format)
				}
			})
		case "keys":
			d.keys(v, p, c)
		case "dek_sources":
			d.sources(v, p, c)
		}
	})
}

func (d *decoder) store(n *yaml.Node, path string, s *StoreConfig) {
	var dsnNode *yaml.Node
	d.fields(n, path, fieldSet{allowed: []string{"driver", "dsn"}}, func(name string, v *yaml.Node, p string) {
		switch name {
		case "driver":
			d.str(v, p, &s.Driver)
		case "dsn":
			d.secret(v, p, &s.DSN)
			dsnNode = v
		}
	})
	if dsnNode != nil && s.Driver == DriverSQLite {
		s.DSN = Secret(resolveSQLiteDSN(d.baseDir, string(s.DSN)))
	}
}

func (d *decoder) backends(n *yaml.Node, path string, c *Config) {
	c.Backends = map[string]BackendConfig{}
	if n.Kind != yaml.MappingNode {
		d.addf(n, path, "expected a mapping of backend names to backends, got %s", kindName(n))
		return
	}
	d.lines[path] = n.Line
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.deref(n.Content[i]), d.deref(n.Content[i+1])
		if k == nil || v == nil {
			return
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
			d.notef(k, path, "backend names must be plain words, got %s", kindName(k))
			continue
		}
		name := k.Value
		p := childPath(path, name)
		if line, dup := first[name]; dup {
			d.addf(k, p, "duplicate backend %q (first at line %d)", echo(name), line)
			continue
		}
		first[name] = k.Line
		d.lines[p] = k.Line
		c.Backends[name] = d.backend(v, p)
	}
}

var policyFields = []string{"rotation_period", "rotate_within", "notify_within", "grace", "destroy_after", "max_encryptions", "rotate_at"}

func (d *decoder) defaults(n *yaml.Node, path string, pol *rekey.Policy) {
	d.fields(n, path, fieldSet{allowed: policyFields}, func(name string, v *yaml.Node, p string) {
		switch name {
		case "rotation_period":
			d.duration(v, p, &pol.RotationPeriod, false)
		case "rotate_within":
			d.duration(v, p, &pol.RotateWithin, false)
		case "notify_within":
			d.duration(v, p, &pol.NotifyWithin, false)
		case "grace":
			d.duration(v, p, &pol.Grace, false)
		case "destroy_after":
			d.duration(v, p, &pol.DestroyAfter, true)
		case "max_encryptions":
			var n int
			if d.integer(v, p, &n) {
				pol.MaxEncryptions = int64(n)
			}
		case "rotate_at":
			d.number(v, p, &pol.RotateAt)
		}
	})
}

var workerFields = []string{"check_interval", "batch_size", "concurrency", "kms_rate_limit", "lease_ttl", "range_workers"}

func (d *decoder) worker(n *yaml.Node, path string, w *WorkerConfig) {
	d.fields(n, path, fieldSet{allowed: workerFields}, func(name string, v *yaml.Node, p string) {
		switch name {
		case "check_interval":
			d.duration(v, p, &w.CheckInterval, false)
		case "batch_size":
			d.integer(v, p, &w.BatchSize)
		case "concurrency":
			d.integer(v, p, &w.Concurrency)
		case "kms_rate_limit":
			d.number(v, p, &w.KMSRateLimit)
		case "lease_ttl":
			d.duration(v, p, &w.LeaseTTL, false)
		case "range_workers":
			d.integer(v, p, &w.RangeWorkers)
		}
	})
}

var keyFields = append([]string{"name", "backend"}, policyFields...)

func (d *decoder) keys(n *yaml.Node, path string, c *Config) {
	if n.Kind != yaml.SequenceNode {
		d.addf(n, path, "expected a list of keys, e.g. - {name: payments, backend: local}, got %s", kindName(n))
		return
	}
	d.lines[path] = n.Line
	for i, item := range n.Content {
		item = d.deref(item)
		if item == nil {
			return
		}
		p := indexPath(path, i)
		var k KeyConfig
		d.lines[p] = item.Line
		if isNull(item) {
			d.addf(item, p, "empty: expected a key, e.g. {name: payments, backend: local}")
		} else {
			d.fields(item, p, fieldSet{allowed: keyFields}, func(name string, v *yaml.Node, p string) {
				switch name {
				case "name":
					d.str(v, p, &k.Name)
				case "backend":
					d.str(v, p, &k.Backend)
				case "rotation_period":
					d.durationPtr(v, p, &k.RotationPeriod, false)
				case "rotate_within":
					d.durationPtr(v, p, &k.RotateWithin, false)
				case "notify_within":
					d.durationPtr(v, p, &k.NotifyWithin, false)
				case "grace":
					d.durationPtr(v, p, &k.Grace, false)
				case "destroy_after":
					d.durationPtr(v, p, &k.DestroyAfter, true)
				case "max_encryptions":
					var n int
					if d.integer(v, p, &n) {
						n64 := int64(n)
						k.MaxEncryptions = &n64
					}
				case "rotate_at":
					var f float64
					d.number(v, p, &f)
					k.RotateAt = &f
				}
			})
		}
		c.Keys = append(c.Keys, k) // even when bad: indexes stay aligned with paths
	}
	if len(c.Keys) == 0 {
		c.Keys = nil
	}
}

// resolvePath makes a relative file path relative to baseDir.
func resolvePath(baseDir, p string) string {
	if p == "" || baseDir == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(baseDir, p)
}

// resolveSQLiteDSN resolves the file of a SQLite DSN: a plain path, a path
// with ?options, or a file: URI without an authority. In-memory databases
// and anything else are left alone.
func resolveSQLiteDSN(baseDir, dsn string) string {
	if dsn == "" || strings.HasPrefix(dsn, ":memory:") || strings.HasPrefix(dsn, "file::memory:") || strings.Contains(dsn, "://") {
		return dsn
	}
	prefix, rest := "", dsn
	if r, ok := strings.CutPrefix(dsn, "file:"); ok {
		if strings.HasPrefix(r, "//") {
			return dsn
		}
		prefix, rest = "file:", r
	}
	file, query, hasQuery := strings.Cut(rest, "?")
	if file == "" {
		return dsn
	}
	out := prefix + resolvePath(baseDir, file)
	if hasQuery {
		out += "?" + query
	}
	return out
}

// plainName matches a map key written as .name in a path; anything else is
// written ["name"].
var plainName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func childPath(parent, name string) string {
	if !plainName.MatchString(name) {
		return parent + "[" + strconv.Quote(name) + "]"
	}
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func indexPath(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

// parentPath strips the last segment of a path: "a.b[2]" → "a.b" → "a" →
// "". A quoted segment may hold '.' or '[': scan from the end honouring it.
func parentPath(p string) string {
	if strings.HasSuffix(p, `"]`) {
		// ["..."]: find the opening [" that matches, skipping escaped quotes.
		for i := len(p) - 3; i >= 1; i-- {
			if p[i] == '"' && p[i-1] == '[' && !escaped(p, i) {
				return p[:i-1]
			}
		}
		return ""
	}
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// escaped reports whether the byte at i is preceded by an odd number of
// backslashes.
func escaped(s string, i int) bool {
	n := 0
	for j := i - 1; j >= 0 && s[j] == '\\'; j-- {
		n++
	}
	return n%2 == 1
}

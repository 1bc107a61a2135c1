package config

import (
	"regexp"
	"strings"

	"github.com/rekeyhq/rekey"
	"go.yaml.in/yaml/v3"
)

// DEK source drivers (dek_sources[].driver).
const (
	SourceSQLite   = "sqlite"
	SourcePostgres = "postgres"
	SourceMySQL    = "mysql" // MySQL or MariaDB
)

var sourceDrivers = []string{SourceSQLite, SourcePostgres, SourceMySQL}

// SourceConfig declares a DEK source (YAML: dek_sources[i]): a table of the
// application's own database that holds wrapped DEKs, which rekey counts,
// re-wraps in place and gates retirement on. rekey updates only WrappedColumn
// and VersionColumn of its rows.
type SourceConfig struct {
	// Name identifies the source in logs, status and the CLI.
	Name string
	// Driver is SourceSQLite, SourcePostgres or SourceMySQL.
	Driver string
	// DSN is the application database's connection string (a file path for
	// sqlite, resolved against the configuration's directory). It may hold
	// a password, hence Secret: it is never printed.
	DSN Secret
	// Table is the table, optionally schema-qualified (schema.table).
	Table string
	// IDColumn is a unique, ordered key of the table (integer or text):
	// rekey pages through the table by it.
	IDColumn string
	// WrappedColumn holds the wrapped DEK bytes (bytea / BLOB).
	WrappedColumn string
	// VersionColumn holds the root-key version the DEK is wrapped under.
	VersionColumn string
	// Key is the rekey key every row is under; exactly one of Key and
	// KeyColumn is set.
	Key string
	// KeyColumn names a column holding each row's rekey key name.
	KeyColumn string
	// Where is an optional SQL boolean expression restricting the rows;
	// it is trusted configuration, inserted into rekey's queries as it is.
	Where string
	// Format is what the wrapped column holds: SourceFormatRekey (empty
	// too: what rekey's GenerateDataKey returns) or SourceFormatAWSNative
	// (a CiphertextBlob the application made with the AWS SDK).
	Format string
	// EncryptionContext is the encryption context of an aws-native
	// source's ciphertexts (nil: none); only with SourceFormatAWSNative.
	EncryptionContext map[string]string
}

// RedactedDSN returns the DSN with any password replaced, fit to print.
func (s SourceConfig) RedactedDSN() string {
	return StoreConfig{Driver: s.Driver, DSN: s.DSN}.RedactedDSN()
}

var sourceFields = []string{"name", "driver", "dsn", "table", "id_column", "wrapped_column", "version_column", "key", "key_column", "where", "format", "encryption_context"}

// sourceNameRE is the shape of a source name (it appears in metric labels
// and in the ids of failed rows: source/id).
var sourceNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// identRE is one SQL identifier rekey accepts in a source: letters, digits,
// _ and $, not starting with a digit. Quoting makes any name safe, but a
// config naming a column "x; drop table" is a mistake worth reporting.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

func (d *decoder) sources(n *yaml.Node, path string, c *Config) {
	if n.Kind != yaml.SequenceNode {
		d.addf(n, path, "expected a list of DEK sources, e.g. - {name: orders, driver: postgres, dsn: ..., table: order_keys, ...}, got %s", kindName(n))
		return
	}
	d.lines[path] = n.Line
	for i, item := range n.Content {
		item = d.deref(item)
		if item == nil {
			return
		}
		p := indexPath(path, i)
		var s SourceConfig
		var dsnSet bool
		d.lines[p] = item.Line
		if isNull(item) {
			d.addf(item, p, "empty: expected a DEK source with fields %s", strings.Join(sourceFields, ", "))
		} else {
			d.fields(item, p, fieldSet{allowed: sourceFields}, func(name string, v *yaml.Node, p string) {
				switch name {
				case "name":
					d.str(v, p, &s.Name)
				case "driver":
					d.str(v, p, &s.Driver)
				case "dsn":
					d.secret(v, p, &s.DSN)
					dsnSet = true
				case "table":
					d.str(v, p, &s.Table)
				case "id_column":
					d.str(v, p, &s.IDColumn)
				case "wrapped_column":
					d.str(v, p, &s.WrappedColumn)
				case "version_column":
					d.str(v, p, &s.VersionColumn)
				case "key":
					d.str(v, p, &s.Key)
				case "key_column":
					d.str(v, p, &s.KeyColumn)
				case "where":
					d.str(v, p, &s.Where)
				case "format":
					d.str(v, p, &s.Format)
				case "encryption_context":
					s.EncryptionContext = d.stringMap(v, p)
				}
			})
		}
		if dsnSet && s.Driver == SourceSQLite {
			s.DSN = Secret(resolveSQLiteDSN(d.baseDir, string(s.DSN)))
		}
		c.DEKSources = append(c.DEKSources, s) // even when bad: indexes stay aligned with paths
	}
	if len(c.DEKSources) == 0 {
		c.DEKSources = nil
	}
}

// checkSources validates dek_sources offline: names, drivers, identifiers
// and the key / key_column choice. Whether the table and columns exist is
// the online check (source.Check).
func (c *Config) checkSources(ch *checker) {
	first := map[string]int{}
	for i, s := range c.DEKSources {
		p := indexPath("dek_sources", i)
		switch {
		case s.Name == "":
			ch.add(p+".name", "missing: set name, e.g. orders")
		case !sourceNameRE.MatchString(s.Name):
			ch.add(p+".name", "invalid source name %q: use 1-63 lowercase letters, digits, _ or -, starting with a letter or digit", echo(s.Name))
		default:
			if j, dup := first[s.Name]; dup {
				ch.add(p+".name", "duplicate source name %q (first declared at %s): rename or remove one of them", echo(s.Name), indexPath("dek_sources", j))
			} else {
				first[s.Name] = i
			}
		}
		dsn := string(s.DSN)
		switch s.Driver {
		case SourceSQLite:
			if isPostgresURL(dsn) {
				ch.add(p+".dsn", "is a PostgreSQL URL but driver is sqlite: set driver: postgres, or dsn to the application's database file")
			}
		case SourcePostgres:
			if dsn != "" && !isPostgresURL(dsn) && !strings.Contains(dsn, "=") {
				ch.add(p+".dsn", "not a PostgreSQL connection string: use postgres://USER:${PASSWORD_VAR}@HOST:5432/DB or the key=value form")
			}
		case SourceMySQL:
			if isPostgresURL(dsn) || strings.Contains(dsn, "://") {
				ch.add(p+".dsn", "not a MySQL DSN: use USER:${PASSWORD_VAR}@tcp(HOST:3306)/DB (the go-sql-driver/mysql form, no scheme)")
			}
		default:
			ch.add(p+".driver", "%s", enumMessage("source driver", s.Driver, sourceDrivers))
		}
		if dsn == "" {
			ch.add(p+".dsn", "missing: set dsn to the application database (use ${VAR} for a password)")
		}
		if s.Table == "" {
			ch.add(p+".table", "missing: set table to the table holding the wrapped DEKs, e.g. order_keys or public.order_keys")
		} else if parts := strings.Split(s.Table, "."); len(parts) > 2 || !allIdents(parts) {
			ch.add(p+".table", "invalid table %q: use NAME or SCHEMA.NAME, each of letters, digits, _ or $, not starting with a digit", echo(s.Table))
		}
		cols := map[string]string{}
		for _, f := range []struct{ field, v string }{
			{"id_column", s.IDColumn}, {"wrapped_column", s.WrappedColumn}, {"version_column", s.VersionColumn}, {"key_column", s.KeyColumn},
		} {
			switch {
			case f.v == "" && f.field != "key_column":
				ch.add(p+"."+f.field, "missing: set %s to a column of %s", f.field, orTable(s.Table))
			case f.v == "":
			case !identRE.MatchString(f.v):
				ch.add(p+"."+f.field, "invalid column name %q: use letters, digits, _ or $, not starting with a digit", echo(f.v))
			default:
				if other, dup := cols[strings.ToLower(f.v)]; dup {
					ch.add(p+"."+f.field, "column %q is also %s: each role needs its own column", echo(f.v), other)
				} else {
					cols[strings.ToLower(f.v)] = f.field
				}
			}
		}
		switch {
		case s.Key == "" && s.KeyColumn == "":
			ch.add(p+".key", "missing: set key to the rekey key of every row, or key_column to a column naming each row's key")
		case s.Key != "" && s.KeyColumn != "":
			ch.add(p+".key", "both key and key_column are set: keep one of them")
		case s.Key != "":
			if err := rekey.ValidateKeyName(s.Key); err != nil {
				ch.add(p+".key", "invalid %s", strings.TrimPrefix(err.Error(), rekey.ErrInvalidArgument.Error()+": "))
			}
		}
		if strings.Contains(s.Where, ";") {
			ch.add(p+".where", "must be one SQL condition, without ';' (e.g. deleted_at IS NULL)")
		}
		c.checkSourceFormat(ch, p, s)
	}
}

func allIdents(parts []string) bool {
	for _, p := range parts {
		if !identRE.MatchString(p) {
			return false
		}
	}
	return true
}

func orTable(t string) string {
	if t == "" {
		return "the table"
	}
	return t
}

// Source returns the DEK source called name, or false.
func (c *Config) Source(name string) (SourceConfig, bool) {
	for _, s := range c.DEKSources {
		if s.Name == name {
			return s, true
		}
	}
	return SourceConfig{}, false
}

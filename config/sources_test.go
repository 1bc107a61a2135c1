package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestSourcesParse(t *testing.T) {
	t.Parallel()
	y := minimal + `dek_sources:
  - name: orders
    driver: postgres
    dsn: postgres://rekey:${APP_DB_PASSWORD}@db/app
    table: public.order_keys
    id_column: id
    wrapped_column: wrapped_dek
    version_column: key_version
    key: payments
    where: "deleted_at IS NULL"
  - name: local-app
    driver: sqlite
    dsn: app.db
    table: deks
    id_column: id
    wrapped_column: w
    version_column: v
    key_column: key_name
`
	c := mustParse(t, y, map[string]string{"APP_DB_PASSWORD": "s3cret"})
	if len(c.DEKSources) != 2 {
		t.Fatalf("got %d sources, want 2", len(c.DEKSources))
	}
	o := c.DEKSources[0]
	if o.DSN.Value() != "postgres://rekey:s3cret@db/app" || o.Table != "public.order_keys" || o.Key != "payments" || o.Where != "deleted_at IS NULL" {
		t.Errorf("orders parsed as %+v", o)
	}
	if strings.Contains(fmt.Sprintf("%v %+v", o, o), "s3cret") || strings.Contains(o.RedactedDSN(), "s3cret") {
		t.Errorf("the DSN's password is printed")
	}
	if got := c.DEKSources[1].DSN.Value(); got != home+"/app.db" {
		t.Errorf("sqlite dsn resolved to %q, want %q", got, home+"/app.db")
	}
	if s, ok := c.Source("local-app"); !ok || s.KeyColumn != "key_name" {
		t.Errorf("Source(local-app) = %+v, %v", s, ok)
	}
}

func TestSourcesProblems(t *testing.T) {
	t.Parallel()
	full := `  -
    name: orders
    driver: sqlite
    dsn: app.db
    table: deks
    id_column: id
    wrapped_column: w
    version_column: v
    key: payments
`
	for _, tc := range []struct {
		name, edit string
		env        map[string]string
		path, want string
	}{
		{"no name", "    name: orders\n", nil, "dek_sources[0].name", "missing"},
		{"bad driver", "    driver: sqlite\n", nil, "dek_sources[0].driver", "missing"},
		{"mysql", "    driver: sqlite\n    driver: oracle\n", nil, "dek_sources[0].driver", `unknown source driver "oracle"`},
		{"no table", "    table: deks\n", nil, "dek_sources[0].table", "missing"},
		{"bad table", "    table: deks\n    table: a.b.c\n", nil, "dek_sources[0].table", "invalid table"},
		{"injected column", "    id_column: id\n    id_column: \"id; drop table x\"\n", nil, "dek_sources[0].id_column", "invalid column name"},
		{"same column twice", "    version_column: v\n    version_column: w\n", nil, "dek_sources[0].version_column", "also wrapped_column"},
		{"no key", "    key: payments\n", nil, "dek_sources[0].key", "missing"},
		{"both keys", "    key: payments\n    key: payments\n    key_column: k\n", nil, "dek_sources[0].key", "both"},
		{"unknown field", "    key: payments\n    key: payments\n    password: x\n", nil, "dek_sources[0].password", "unknown field"},
		{"unset env", "    dsn: app.db\n    dsn: ${NOPE}\n", nil, "dek_sources[0].dsn", "NOPE is not set"},
		{"semicolon", "    key: payments\n    key: payments\n    where: \"1=1; delete from deks\"\n", nil, "dek_sources[0].where", "without ';'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// edit: the first line is removed from full, the rest appended.
			lines := strings.SplitN(tc.edit, "\n", 2)
			src := strings.Replace(full, lines[0]+"\n", "", 1) + lines[1]
			ps := problemsOf(t, minimal+"dek_sources:\n"+src, tc.env)
			for _, p := range ps {
				if p.Path == tc.path && strings.Contains(p.Message, tc.want) {
					return
				}
			}
			t.Errorf("no problem at %s containing %q; got %+v", tc.path, tc.want, ps)
		})
	}
	ps := problemsOf(t, minimal+"dek_sources:\n"+full+strings.Replace(full, "dsn: app.db", "dsn: postgres://u:pw@h/db", 1), nil)
	var dup, pgurl bool
	for _, p := range ps {
		dup = dup || (p.Path == "dek_sources[1].name" && strings.Contains(p.Message, "duplicate"))
		pgurl = pgurl || p.Path == "dek_sources[1].dsn"
		if strings.Contains(p.Message, "pw") {
			t.Errorf("a problem repeats the DSN's password: %s", p.Message)
		}
	}
	if !dup || !pgurl {
		t.Errorf("want a duplicate name and a postgres URL under sqlite; got %+v", ps)
	}
}

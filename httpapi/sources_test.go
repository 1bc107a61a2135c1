package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey/status"
)

// sourceFixture is two DEK sources: orders (every row under payments) and
// tenants (a key column), each failing while its switch is set; the counts
// per key follow the same switches.
type sourceFixture struct {
	orders, tenants faultSwitch
}

func (f *sourceFixture) config(c *Config) {
	c.Sources = []Source{
		{Name: "orders", Key: "payments", Probe: func(context.Context) error { return f.orders.get() }},
		{Name: "tenants", Probe: func(context.Context) error { return f.tenants.get() }},
	}
	c.SourceCounts = func(_ context.Context, key string) []status.SourceCount {
		var out []status.SourceCount
		if key == "payments" {
			sc := status.SourceCount{Source: "orders", Versions: map[int]int64{1: 3, 2: 1200}}
			if err := f.orders.get(); err != nil {
				sc = status.SourceCount{Source: "orders", Error: err.Error()}
			}
			out = append(out, sc)
		}
		sc := status.SourceCount{Source: "tenants", Versions: map[int]int64{1: 7}}
		if err := f.tenants.get(); err != nil {
			sc = status.SourceCount{Source: "tenants", Error: err.Error()}
		}
		return append(out, sc)
	}
}

func TestReadyzNamesDownSources(t *testing.T) {
	t.Parallel()
	var f sourceFixture
	b := setup(t, f.config)
	if r := b.get(t, "/readyz"); r.code != http.StatusOK || !strings.Contains(r.body, "ok source:orders\nok source:tenants\n") {
		t.Fatalf("healthy /readyz = %d %q; want 200 listing both sources", r.code, r.body)
	}
	f.orders.set(errors.New("source orders (table public.order_keys): select: connection refused"))
	r := b.get(t, "/readyz")
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, "FAIL source:orders: ") ||
		!strings.Contains(r.body, "connection refused") || !strings.Contains(r.body, "key payments: its rotations fail") {
		t.Errorf("/readyz with orders down = %d:\n%s\nwant 503 naming source orders, its error and its key", r.code, r.body)
	}
	if strings.Contains(r.body, "FAIL source:tenants") || strings.Contains(r.body, "FAIL store") {
		t.Errorf("/readyz names a healthy component:\n%s", r.body)
	}
	f.orders.set(nil)
	f.tenants.set(errors.New("source tenants (table tenant_keys): select: no such table: tenant_keys"))
	r = b.get(t, "/readyz?format=json")
	var rep readyReport
	if err := json.Unmarshal([]byte(r.body), &rep); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
	var got *checkResult
	for i, c := range rep.Checks {
		if c.Component == "source:tenants" {
			got = &rep.Checks[i]
		}
	}
	if rep.Ready || got == nil || got.OK || !strings.Contains(got.Error, "no such table") || !strings.Contains(got.Error, "no old version of any key retires") {
		t.Errorf("JSON report with tenants down = %+v", rep)
	}
	f.tenants.set(nil)
	if r := b.get(t, "/readyz"); r.code != http.StatusOK {
		t.Errorf("/readyz after recovery = %d %q", r.code, r.body)
	}
}

func TestStatusShowsSourceCounts(t *testing.T) {
	t.Parallel()
	var f sourceFixture
	b := setup(t, f.config)
	seed(t, b)
	f.tenants.set(errors.New(`source tenants: select: password=hunter2 <b>no such table</b>`))

	// /api/v1/status: the counts per key, source and version, additive.
	var st status.Status
	if err := json.Unmarshal([]byte(b.get(t, "/api/v1/status").body), &st); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, k := range st.Keys {
		for _, sc := range k.Sources {
			switch {
			case k.Name == "payments" && sc.Source == "orders":
				seen++
				if sc.Versions[1] != 3 || sc.Versions[2] != 1200 || sc.Error != "" {
					t.Errorf("payments/orders = %+v", sc)
				}
			case sc.Source == "tenants":
				seen++
				if sc.Error == "" {
					t.Errorf("%s/tenants has no error: %+v", k.Name, sc)
				}
			}
		}
	}
	if seen != 1+len(st.Keys) {
		t.Errorf("status API: %d source counts seen, want %d", seen, 1+len(st.Keys))
	}

	// The page: a table per key, the error escaped and redacted, a badge.
	body := b.get(t, "/").body
	for _, want := range []string{
		"<h3>DEK sources</h3>", `<td class="mono">orders</td>`, `v2 <span class="num">1,200</span> · v1 <span class="num">3</span>`,
		"1 DEK source unreadable", "&lt;b&gt;no such table&lt;/b&gt;",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "hunter2") {
		t.Errorf("page shows a password from a source error")
	}
}

func TestNewValidatesSources(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{Store: setup(t).store, Sources: []Source{{Name: "orders"}}}); err == nil || !strings.Contains(err.Error(), "Sources[0]") {
		t.Errorf("New with a source without Probe = %v; want the field named", err)
	}
}

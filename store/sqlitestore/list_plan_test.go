package sqlitestore

import (
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
)

// TestListPlans: ListDEKs walks the table's primary key from the cursor
// when the key holds most DEKs, and the (key, id) index when it does not
// (mostlyOf, from the counters); both lists are the key's DEKs in id order.
func TestListPlans(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	for _, name := range []string{"big", "small"} {
		k := rekey.Key{Name: name, Backend: "local", BackendRef: name, ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
		if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
			t.Fatal(err)
		}
	}
	var big, small []rekey.DEK
	for i := range 40 {
		d := newBatch(1)[0]
		if i%4 == 3 {
			d.Key = "small"
			small = append(small, d)
		} else {
			d.Key = "big"
			big = append(big, d)
		}
		if err := s.InsertDEKs(ctx, []rekey.DEK{d}); err != nil {
			t.Fatal(err)
		}
	}
	plan := func(key string) string {
		t.Helper()
		byID, err := s.mostlyOf(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		q, args := listDEKsSQL(rekey.DEKQuery{Key: key, NotVersion: 2, After: "0"}, 10, byID)
		rows, err := s.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var steps []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			steps = append(steps, detail)
		}
		return strings.Join(steps, "; ")
	}
	if got := plan("big"); !strings.Contains(got, "USING PRIMARY KEY (id>?)") || strings.Contains(got, "deks_key_id") || strings.Contains(got, "TEMP B-TREE") {
		t.Errorf("plan for the key with 30 of 40 DEKs: %q, want the primary key from the cursor, no index, no sort", got)
	}
	if got := plan("small"); !strings.Contains(got, "USING INDEX deks_key_id (key=? AND id>?)") || strings.Contains(got, "TEMP B-TREE") {
		t.Errorf("plan for the key with 10 of 40 DEKs: %q, want the (key, id) index, no sort", got)
	}
	for _, c := range []struct {
		key  string
		want []rekey.DEK
	}{{"big", big}, {"small", small}} {
		got, err := s.ListDEKs(ctx, rekey.DEKQuery{Key: c.key, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(c.want) {
			t.Fatalf("ListDEKs(%s) = %d DEKs, want %d", c.key, len(got), len(c.want))
		}
		for i := range got {
			if got[i].ID != c.want[i].ID || got[i].Key != c.key {
				t.Fatalf("ListDEKs(%s)[%d] = %s of %s, want %s (id order, the key's own)", c.key, i, got[i].ID, got[i].Key, c.want[i].ID)
			}
		}
	}
}

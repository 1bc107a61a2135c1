package pgstore

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
)

// TestGuessedSpan: the guessed statement takes its rows from the span
// between the batch's first and last ids, and the span holds rows of the
// key that are not in the batch (every other DEK here). All the batch's
// swaps win in the guessed statement itself (no fallback), and the rows
// of the span outside the batch keep their bytes and version. The test
// fails if the span's bounds leave a swap out (swapGuessed then reports a
// miss) or if the statement touches a row it was not given.
func TestGuessedSpan(t *testing.T) {
	for _, c := range []struct {
		name  string
		sql   string
		extra []any
	}{{"swapSQL", swapSQL.guessed, nil}, {"rangeSwapSQL", rangeSwapSQL.guessed, []any{"", ""}}} {
		t.Run(c.name, func(t *testing.T) {
			s := openTemp(t)
			ctx := t.Context()
			_, deks := swapFixture(t, s, 400)
			slices.SortFunc(deks, func(a, b rekey.DEK) int { return strings.Compare(a.ID, b.ID) })
			var swaps []rekey.DEKSwap
			for i := 1; i < len(deks)-1; i += 2 {
				d := deks[i]
				swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: fmt.Appendf(nil, "new-%d", i), NewVersion: 2, OldVersion: 1})
			}
			now := rekey.NormalizeTime(time.Now())
			tx, err := s.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			all, err := swapGuessed(ctx, tx, c.sql, swaps, "k", now, c.extra)
			if err != nil {
				t.Fatal(err)
			}
			if !all {
				t.Fatal("the guessed statement missed swaps of its span")
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			for i, d := range deks {
				got, err := s.GetDEK(ctx, d.ID)
				if err != nil {
					t.Fatal(err)
				}
				want, version := d.Wrapped, 1
				if i%2 == 1 && i < len(deks)-1 {
					want, version = fmt.Appendf(nil, "new-%d", i), 2
				}
				if !bytes.Equal(got.Wrapped, want) || got.Version != version {
					t.Errorf("dek %d: version %d wrapped %q, want version %d %q", i, got.Version, got.Wrapped, version, want)
				}
			}
		})
	}
}

// TestGuessedPlan: with the settings sent around it (guessedAround), the
// guessed statement reads its span once and joins it to the batch by hash
// (or merge), never by a nested loop. The batch here is 1000 DEKs created
// after the last ANALYZE, in a gap between two ids of the statistics:
// PostgreSQL expects one row in the span, where a nested loop would scan
// the batch's arrays again for every row of it. Left to itself it still
// picks the hash join here, on a small margin of cost (so the test does not
// catch enable_nestloop left on); it fails if the statement leaves a
// nested loop the only plan, or the setting is not put back.
func TestGuessedPlan(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	swapFixture(t, s, 0)
	insert := func(format string, n int) []rekey.DEK {
		deks := make([]rekey.DEK, n)
		for i := range deks {
			deks[i] = rekey.DEK{ID: fmt.Sprintf(format, i), Key: "k", Version: 1, Wrapped: fmt.Appendf(nil, "w%d", i)}
		}
		if err := s.InsertDEKs(ctx, deks); err != nil {
			t.Fatal(err)
		}
		return deks
	}
	insert("a%06d", 2000)
	if _, err := s.pool.Exec(ctx, `ANALYZE deks`); err != nil {
		t.Fatal(err)
	}
	deks := insert("a000500x%05d", 1000)
	swaps := make([]rekey.DEKSwap, 0, len(deks))
	for _, d := range deks {
		swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: []byte("x"), NewVersion: 2, OldVersion: 1})
	}
	now := rekey.NormalizeTime(time.Now())
	for _, c := range []struct {
		name  string
		sql   string
		extra []any
	}{{"swapSQL", swapSQL.guessed, nil}, {"rangeSwapSQL", rangeSwapSQL.guessed, []any{"", ""}}} {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		olds := make([]int32, len(swaps))
		for i := range olds {
			olds[i] = 1
		}
		args := append(swapArgs(swaps, "k", now, c.extra), olds, swaps[0].ID, swaps[len(swaps)-1].ID)
		var plan []string
		for i, q := range guessedAround {
			if i != guessedAt {
				if _, err := tx.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
				continue
			}
			rows, err := tx.Query(ctx, `EXPLAIN `+c.sql, args...)
			if plan, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				t.Fatal(err)
			}
		}
		text := strings.Join(plan, "\n")
		if strings.Contains(text, "Nested Loop") || !strings.Contains(text, " Join") {
			t.Errorf("%s: the guessed statement's plan is not a hash or merge join:\n%s", c.name, text)
		}
		var nestloop string
		if err := tx.QueryRow(ctx, `SHOW enable_nestloop`).Scan(&nestloop); err != nil {
			t.Fatal(err)
		}
		if nestloop != "on" {
			t.Errorf("%s: enable_nestloop is %s after the guessed statement, want it back on", c.name, nestloop)
		}
		_ = tx.Rollback(ctx)
	}
}

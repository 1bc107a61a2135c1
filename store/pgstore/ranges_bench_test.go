package pgstore

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// BenchmarkDEKBounds compares the two ways to compute DEKBounds over
// 100,000 DEKs of one key (plus 10,000 on notVersion): boundsSQL (a
// recursive keyset walk in one statement, what the store uses),
// boundsWindowSQL (row_number) and boundsWalkSQL (one OFFSET query per
// bound from Go). Both must give the same bounds (the benchmark fails
// otherwise). Run against the test server:
//
//	eval "$(scripts/pg start)"
//	go test -run '^$' -bench DEKBounds -benchtime 10x ./store/pgstore/
//
// The figures are quoted at boundsSQL.
func BenchmarkDEKBounds(b *testing.B) {
	const total, skipped = 100000, 10000
	s := openTemp(b)
	ctx := context.Background()
	now := rekey.NormalizeTime(time.Now())
	k := rekey.Key{Name: "k", Backend: "local", BackendRef: "k", ActiveVersion: 1, Policy: rekey.DefaultPolicy(), ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		b.Fatal(err)
	}
	insertBenchDEKs(b, s, "k", 1, "a", total)
	if _, err := s.pool.Exec(ctx, `INSERT INTO key_versions (key, version, state) VALUES ('k', 2, 'created')`); err != nil {
		b.Fatal(err)
	}
	// DEKs already on version 2, interleaved with the others by id.
	if _, err := s.pool.Exec(ctx, `INSERT INTO deks (id, key, version, wrapped) SELECT 'dek-' || lpad(g::text, 7, '0') || 'b', 'k', 2, '\x00'::bytea FROM generate_series(0, $1 - 1) g`, skipped); err != nil {
		b.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE deks`); err != nil {
		b.Fatal(err)
	}
	for _, every := range []int{10000, 1000} {
		want, err := s.DEKBounds(ctx, "k", 2, every)
		if err != nil || len(want) != total/every {
			b.Fatalf("DEKBounds(every %d) = %d bounds, %v; want %d", every, len(want), err, total/every)
		}
		ways := []struct {
			name string
			fn   func(context.Context, string, int, int) ([]string, error)
		}{{"recursive", s.DEKBounds}, {"window", s.dekBoundsWindow}, {"walk", s.dekBoundsWalk}}
		for _, way := range ways {
			b.Run(fmt.Sprintf("%s/every=%d", way.name, every), func(b *testing.B) {
				for b.Loop() {
					got, err := way.fn(ctx, "k", 2, every)
					if err != nil || !slices.Equal(got, want) {
						b.Fatalf("%s: %d bounds, %v; want the %d of DEKBounds", way.name, len(got), err, len(want))
					}
				}
			})
		}
	}
}

// insertBenchDEKs inserts n DEKs of key on version, ids dek-NNNNNNN+suffix,
// in batches of 5,000.
func insertBenchDEKs(b *testing.B, s *Store, key string, version int, suffix string, n int) {
	b.Helper()
	const batch = 5000
	for i := 0; i < n; i += batch {
		deks := make([]rekey.DEK, min(batch, n-i))
		for j := range deks {
			deks[j] = rekey.DEK{ID: fmt.Sprintf("dek-%07d%s", i+j, suffix), Key: key, Version: version, Wrapped: []byte("wrapped")}
		}
		if err := s.InsertDEKs(context.Background(), deks); err != nil {
			b.Fatal(err)
		}
	}
}

package sqlitestore

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/rekeyhq/rekey"
)

// BenchmarkDEKBounds compares the ways to compute DEKBounds over 100,000
// DEKs of one key (plus 10,000 on notVersion): boundsSQL (a recursive
// keyset walk in one statement, what the store uses; the key holds most
// DEKs, so it walks the table's primary key), the same through the
// (key, id) index (what a key with less than half the DEKs gets),
// boundsWindowSQL (row_number) and boundsWalkSQL (one OFFSET query per
// bound from Go, through the index). All must give the same bounds (the
// benchmark fails otherwise).
//
//	go test -run '^$' -bench DEKBounds -benchtime 10x -count 3 ./store/sqlitestore/
//
// Measured on a quiet machine, 2026-12-02 (ms per call, every 10,000 and
// every 1,000 alike): recursive 4.8-5.1, recursive through the index
// 23-24, window 55-58, walk from Go 23-24. Earlier, through the index
// only, on 2 cores shared with other work (load average about 15):
// recursive 54-122, window 145-400, walk 20-102.
//
// The window query numbers every row and is the slowest. The walk from Go
// and the recursive query do the same reads; in process (no round trip)
// the walk was as fast or faster in this noise, but it reads each bound
// in its own snapshot, so a DEK inserted meanwhile shifts the later
// bounds: the store uses the recursive query, one statement and one
// snapshot, as pgstore does (where it also saves the round trips). The
// index costs a search of the table per DEK (for its version); the
// primary key walk reads the rows in place.
func BenchmarkDEKBounds(b *testing.B) {
	const total, skipped = 100000, 10000
	s := openTemp(b)
	ctx := context.Background()
	k := rekey.Key{Name: "k", Backend: "local", BackendRef: "k", ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		b.Fatal(err)
	}
	const batch = 5000
	for i := 0; i < total; i += batch {
		deks := make([]rekey.DEK, batch)
		for j := range deks {
			deks[j] = rekey.DEK{ID: fmt.Sprintf("dek-%07da", i+j), Key: "k", Version: 1, Wrapped: []byte("wrapped")}
		}
		if err := s.InsertDEKs(ctx, deks); err != nil {
			b.Fatal(err)
		}
	}
	// DEKs already on version 2, interleaved with the others by id.
	if _, err := s.w.ExecContext(ctx, `WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < ?)
		INSERT INTO deks (id, key, version, wrapped) SELECT printf('dek-%07db', n), 'k', 2, x'00' FROM g`, skipped); err != nil {
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
		}{{"recursive", s.DEKBounds}, {"recursive-index", s.dekBoundsIndex}, {"window", s.dekBoundsWindow}, {"walk", s.dekBoundsWalk}}
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

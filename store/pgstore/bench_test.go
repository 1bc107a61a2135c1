package pgstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
)

// The ways to write a compare-and-swap batch that BenchmarkSwap
// compares. swapRounds (unnest) is the one the store uses; the others are
// here only to be measured against it.

// swapPlain is the store's statement before migration 0005: the same
// unnest UPDATE without the row lock that reads the old version and
// without the counters of dek_counts.
func swapPlain(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, key string, now time.Time) ([]string, error) {
	ids := make([]string, len(swaps))
	olds, news := make([][]byte, len(swaps)), make([][]byte, len(swaps))
	versions := make([]int32, len(swaps))
	for i, sw := range swaps {
		ids[i], olds[i], news[i], versions[i] = sw.ID, sw.OldWrapped, sw.NewWrapped, int32(sw.NewVersion)
	}
	r, err := tx.Query(ctx, `UPDATE deks d SET wrapped = s.new_wrapped, version = s.new_version, updated_at = $5
		FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int[]) AS s(id, old_wrapped, new_wrapped, new_version)
		WHERE d.id = s.id AND d.key = $6 AND d.wrapped = s.old_wrapped RETURNING d.id`, ids, olds, news, versions, now, key)
	won, err := collect(r, err, func(sc scanner) (string, error) {
		var id string
		return id, sc.Scan(&id)
	})
	if err != nil {
		return nil, err
	}
	if len(won) != len(swaps) {
		return nil, fmt.Errorf("%d of %d swaps lost", len(swaps)-len(won), len(swaps))
	}
	return nil, nil
}

// swapPipelined sends one UPDATE per swap, all in one pgx.Batch (one
// round trip, pipelined), and returns the ids that lost.
func swapPipelined(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, key string, now time.Time) ([]string, error) {
	b := &pgx.Batch{}
	for _, sw := range swaps {
		b.Queue(`UPDATE deks SET wrapped = $1, version = $2, updated_at = $3 WHERE id = $4 AND key = $5 AND wrapped = $6`,
			sw.NewWrapped, sw.NewVersion, now, sw.ID, key, sw.OldWrapped)
	}
	res := tx.SendBatch(ctx, b)
	var lost []string
	for _, sw := range swaps {
		tag, err := res.Exec()
		if err != nil {
			_ = res.Close()
			return nil, err
		}
		if tag.RowsAffected() == 0 {
			lost = append(lost, sw.ID)
		}
	}
	return lost, res.Close()
}

// swapCopy copies the batch into a temporary table and swaps with one
// UPDATE … FROM it.
func swapCopy(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, key string, now time.Time) ([]string, error) {
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS swap_in (id text, old_wrapped bytea, new_wrapped bytea, new_version int) ON COMMIT DELETE ROWS`); err != nil {
		return nil, err
	}
	rows := make([][]any, len(swaps))
	for i, sw := range swaps {
		rows[i] = []any{sw.ID, sw.OldWrapped, sw.NewWrapped, int32(sw.NewVersion)}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"swap_in"}, []string{"id", "old_wrapped", "new_wrapped", "new_version"}, pgx.CopyFromRows(rows)); err != nil {
		return nil, err
	}
	r, err := tx.Query(ctx, `UPDATE deks d SET wrapped = s.new_wrapped, version = s.new_version, updated_at = $1
		FROM swap_in s WHERE d.id = s.id AND d.key = $2 AND d.wrapped = s.old_wrapped RETURNING d.id`, now, key)
	won, err := collect(r, err, func(sc scanner) (string, error) {
		var id string
		return id, sc.Scan(&id)
	})
	if err != nil {
		return nil, err
	}
	applied := map[string]bool{}
	for _, id := range won {
		applied[id] = true
	}
	var lost []string
	for _, sw := range swaps {
		if !applied[sw.ID] {
			lost = append(lost, sw.ID)
		}
	}
	return lost, nil
}

// BenchmarkSwap measures the CAS swap of 1000-row batches, one
// transaction each, over 20,000 DEKs of one key, moving them between
// versions 1 and 2: the store's statements with and without the old
// versions' hints (guessed, fast), and the other ways measured against
// them. Every swap
// must win (the benchmark fails otherwise). Run against the test server:
//
//	eval "$(scripts/pg start)"
//	go test -run '^$' -bench Swap -benchtime 40x ./store/pgstore/
//
// The figures are quoted at swapSQL.
func BenchmarkSwap(b *testing.B) {
	const total, batch = 20000, 1000
	ways := []struct {
		name string
		fn   func(context.Context, pgx.Tx, []rekey.DEKSwap, string, time.Time) ([]string, error)
	}{
		{"guessed", func(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, key string, now time.Time) ([]string, error) {
			return swapRounds(ctx, tx, swapSQL, swaps, key, now)
		}},
		{"fast", func(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, key string, now time.Time) ([]string, error) {
			for i := range swaps {
				swaps[i].OldVersion = 0 // no hints: the fast statement
			}
			return swapRounds(ctx, tx, swapSQL, swaps, key, now)
		}},
		{"locked", func(ctx context.Context, tx pgx.Tx, swaps []rekey.DEKSwap, key string, now time.Time) ([]string, error) {
			q := swapSQL
			q.fast = q.locked // every swap through the locked statement
			for i := range swaps {
				swaps[i].OldVersion = 0
			}
			return swapRounds(ctx, tx, q, swaps, key, now)
		}},
		{"plain", swapPlain},
		{"pipelined", swapPipelined},
		{"copy", swapCopy},
	}
	for _, way := range ways {
		b.Run(way.name, func(b *testing.B) {
			s := openTemp(b)
			ctx := context.Background()
			now := rekey.NormalizeTime(time.Now())
			k := rekey.Key{Name: "k", Backend: "local", BackendRef: "k", ActiveVersion: 1, Policy: rekey.DefaultPolicy(), ExpiresAt: now.Add(time.Hour)}
			if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
				b.Fatal(err)
			}
			wrapped := make([][]byte, total)
			ids := make([]string, total)
			for i := 0; i < total; i += batch {
				deks := make([]rekey.DEK, batch)
				for j := range deks {
					ids[i+j] = fmt.Sprintf("dek-%06d", i+j)
					wrapped[i+j] = fmt.Appendf(make([]byte, 0, 60), "%060d", i+j)
					deks[j] = rekey.DEK{ID: ids[i+j], Key: "k", Version: 1, Wrapped: wrapped[i+j]}
				}
				if err := s.InsertDEKs(ctx, deks); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			rows := 0
			for n := 0; b.Loop(); n++ {
				first := (n * batch) % total
				swaps := make([]rekey.DEKSwap, batch)
				for j := range swaps {
					i := first + j
					next := fmt.Appendf(make([]byte, 0, 60), "%052d-%07d", i, n)
					// Versions 1 and 2 in turn: the counters move.
					to := 1 + (n/(total/batch)+1)%2
					swaps[j] = rekey.DEKSwap{ID: ids[i], OldWrapped: wrapped[i], NewWrapped: next, NewVersion: to, OldVersion: 3 - to}
					wrapped[i] = next
				}
				tx, err := s.pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				lost, err := way.fn(ctx, tx, swaps, "k", now)
				if err != nil {
					b.Fatal(err)
				}
				if len(lost) != 0 {
					b.Fatalf("%d swaps lost", len(lost))
				}
				if err := tx.Commit(ctx); err != nil {
					b.Fatal(err)
				}
				rows += batch
			}
			b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

package sqlitestore

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

const benchBatch = 1000

// benchStore opens a store with key "bench" (versions 1 active and 2
// created), a lease on it and its rotation, in state version_created.
func benchStore(b *testing.B) (*Store, rekey.Lease, rekey.Rotation) {
	b.Helper()
	s := openTemp(b)
	ctx := b.Context()
	k := rekey.Key{Name: "bench", Backend: "local", BackendRef: "bench", ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		b.Fatal(err)
	}
	l, err := s.AcquireLease(ctx, "bench", "bench", time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	r := rekey.Rotation{ID: rekey.NewID(), Key: "bench", FromVersion: 1, Reason: rekey.ReasonManual}
	if err := s.CreateRotation(ctx, r, l); err != nil {
		b.Fatal(err)
	}
	u := rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed, NewVersion: &rekey.KeyVersion{Version: 2}}
	u.Rotation.State = rekey.RotationVersionCreated
	if err := s.AdvanceRotation(ctx, u, l); err != nil {
		b.Fatal(err)
	}
	return s, l, u.Rotation
}

func newBatch(n int) []rekey.DEK {
	deks := make([]rekey.DEK, n)
	now := time.Now()
	for i := range deks {
		w := make([]byte, 60) // the size of a wrapped 32-byte DEK
		_, _ = rand.Read(w)
		deks[i] = rekey.DEK{ID: rekey.NewID(), Key: "bench", Version: 1, Wrapped: w, CreatedAt: now, UpdatedAt: now}
	}
	return deks
}

// BenchmarkInsertDEKs inserts batches of 1000 DEKs, one transaction each.
func BenchmarkInsertDEKs(b *testing.B) {
	s, _, _ := benchStore(b)
	ctx := b.Context()
	rows := 0
	for b.Loop() {
		b.StopTimer()
		batch := newBatch(benchBatch)
		b.StartTimer()
		if err := s.InsertDEKs(ctx, batch); err != nil {
			b.Fatal(err)
		}
		rows += len(batch)
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkSwapDEKs compare-and-swaps batches of 1000 DEKs (new wrapped
// bytes and version), one transaction each, over a table of 100,000.
func BenchmarkSwapDEKs(b *testing.B) {
	s, l, _ := benchStore(b)
	benchSwaps(b, s, func(swaps []rekey.DEKSwap) ([]string, error) { return s.SwapDEKs(b.Context(), swaps, l) })
}

// BenchmarkCommitBatch is BenchmarkSwapDEKs with the rotation's checkpoint
// (cursor, counts, one audit event) in the same transaction, as the engine
// writes a batch.
func BenchmarkCommitBatch(b *testing.B) {
	s, l, r := benchStore(b)
	ctx := b.Context()
	u := rekey.RotationUpdate{Rotation: r, FromState: r.State}
	u.Rotation.State = rekey.RotationRewrapping
	if err := s.AdvanceRotation(ctx, u, l); err != nil {
		b.Fatal(err)
	}
	r = u.Rotation
	benchSwaps(b, s, func(swaps []rekey.DEKSwap) ([]string, error) {
		cp := rekey.RotationUpdate{Rotation: r, FromState: r.State,
			Events: []rekey.AuditEvent{{Type: rekey.AuditRewrapProgress, Key: "bench", Actor: "bench"}}}
		cp.Rotation.Cursor = swaps[len(swaps)-1].ID
		lost, err := s.CommitBatch(ctx, swaps, l, cp)
		r.Done += int64(len(swaps) - len(lost))
		return lost, err
	})
}

// benchSwaps fills the table with 100,000 DEKs and times write on batches
// of 1000 swaps that all apply, flipping DEKs between versions 1 and 2.
func benchSwaps(b *testing.B, s *Store, write func(swaps []rekey.DEKSwap) ([]string, error)) {
	b.Helper()
	ctx := b.Context()
	const total = 100 * benchBatch
	var deks []rekey.DEK
	for range total / benchBatch {
		batch := newBatch(benchBatch)
		if err := s.InsertDEKs(ctx, batch); err != nil {
			b.Fatal(err)
		}
		deks = append(deks, batch...)
	}
	swaps := make([]rekey.DEKSwap, benchBatch)
	rows, next := 0, 0
	for b.Loop() {
		b.StopTimer()
		for i := range swaps {
			d := &deks[(next+i)%total]
			w := make([]byte, 60)
			_, _ = rand.Read(w)
			v := 3 - d.Version // 1 <-> 2
			swaps[i] = rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: w, NewVersion: v}
			d.Wrapped, d.Version = w, v
		}
		next += benchBatch
		b.StartTimer()
		lost, err := write(swaps)
		if err != nil || len(lost) != 0 {
			b.Fatalf("write = %d lost, %v", len(lost), err)
		}
		rows += len(swaps)
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkListBrief pages through 100,000 DEKs of one key with ListDEKs
// (Brief, 1000 a page, keyset on the id), as a re-wrap reads them.
func BenchmarkListBrief(b *testing.B) {
	s, _, _ := benchStore(b)
	ctx := b.Context()
	const total = 100 * benchBatch
	for range total / benchBatch {
		if err := s.InsertDEKs(ctx, newBatch(benchBatch)); err != nil {
			b.Fatal(err)
		}
	}
	rows, after := 0, ""
	for b.Loop() {
		deks, err := s.ListDEKs(ctx, rekey.DEKQuery{Key: "bench", After: after, Limit: benchBatch, Brief: true})
		if err != nil {
			b.Fatal(err)
		}
		rows += len(deks)
		if len(deks) < benchBatch {
			after = "" // the end: from the start again
		} else {
			after = deks[len(deks)-1].ID
		}
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}

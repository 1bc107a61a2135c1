package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/rekeyhq/rekey"
)

// modelDEK is what the model keeps of a DEK.
type modelDEK struct {
	version int
	wrapped []byte
}

// testPropertyDEKModel runs random sequences of InsertDEKs, SwapDEKs,
// ListDEKs and CountDEKs against the store and against a map, and compares.
// Each run uses a key of its own, so runs share the store.
func testPropertyDEKModel(t *testing.T, f *fixture) {
	run := 0
	rapid.Check(t, func(rt *rapid.T) {
		run++
		key := fmt.Sprintf("prop-%d", run)
		k, v := f.newKey(key)
		if err := f.s.CreateKey(f.ctx, k, v); err != nil {
			rt.Fatalf("CreateKey: %v", err)
		}
		l, err := f.s.AcquireLease(f.ctx, key, "prop", time.Hour, f.t0)
		if err != nil {
			rt.Fatalf("AcquireLease: %v", err)
		}
		r := rekey.Rotation{ID: rekey.NewID(), Key: key, FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonScheduled, StartedAt: f.t0}
		if err := f.s.CreateRotation(f.ctx, r, l); err != nil {
			rt.Fatalf("CreateRotation: %v", err)
		}
		u := rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed, NewVersion: &rekey.KeyVersion{Key: key, Version: 2, CreatedAt: f.t0}}
		u.Rotation.State = rekey.RotationVersionCreated
		if err := f.s.AdvanceRotation(f.ctx, u, l); err != nil {
			rt.Fatalf("AdvanceRotation: %v", err)
		}

		model := map[string]modelDEK{}
		var known []string // every id inserted, in insertion order
		pickID := func(rt *rapid.T, label string) string {
			if len(known) == 0 || rapid.IntRange(0, 9).Draw(rt, label+"-unknown") == 0 {
				return rekey.NewID()
			}
			return rapid.SampledFrom(known).Draw(rt, label)
		}

		rt.Repeat(map[string]func(*rapid.T){
			"insert": func(rt *rapid.T) {
				n := rapid.IntRange(1, 6).Draw(rt, "n")
				batch := make([]rekey.DEK, n)
				for i := range batch {
					batch[i] = rekey.DEK{ID: rekey.NewID(), Key: key, Version: 1, Wrapped: randomBytes(8), CreatedAt: f.t0}
				}
				dup := len(known) > 0 && rapid.IntRange(0, 4).Draw(rt, "dup") == 0
				if dup {
					batch[rapid.IntRange(0, n-1).Draw(rt, "dup-at")].ID = rapid.SampledFrom(known).Draw(rt, "dup-id")
				}
				err := f.s.InsertDEKs(f.ctx, batch)
				if dup {
					if !errors.Is(err, rekey.ErrConflict) {
						rt.Fatalf("InsertDEKs with a duplicate id: %v, want ErrConflict", err)
					}
					return
				}
				if err != nil {
					rt.Fatalf("InsertDEKs: %v", err)
				}
				for _, d := range batch {
					model[d.ID] = modelDEK{version: 1, wrapped: d.Wrapped}
					known = append(known, d.ID)
				}
			},
			"swap": func(rt *rapid.T) {
				n := rapid.IntRange(0, 6).Draw(rt, "n")
				swaps := make([]rekey.DEKSwap, n)
				for i := range swaps {
					id := pickID(rt, "id")
					old := []byte("stale")
					if m, ok := model[id]; ok && rapid.IntRange(0, 3).Draw(rt, "stale") > 0 {
						old = m.wrapped
					}
					swaps[i] = rekey.DEKSwap{ID: id, OldWrapped: old, NewWrapped: randomBytes(8), NewVersion: rapid.IntRange(1, 2).Draw(rt, "version")}
				}
				// The model applies swaps in order: a second swap of one id
				// in a batch sees the first one's result.
				var wantLost []string
				for _, sw := range swaps {
					m, ok := model[sw.ID]
					if !ok || !bytes.Equal(m.wrapped, sw.OldWrapped) {
						wantLost = append(wantLost, sw.ID)
						continue
					}
					model[sw.ID] = modelDEK{version: sw.NewVersion, wrapped: sw.NewWrapped}
				}
				lost, err := f.s.SwapDEKs(f.ctx, swaps, l)
				if err != nil {
					rt.Fatalf("SwapDEKs: %v", err)
				}
				if !slices.Equal(lost, wantLost) {
					rt.Fatalf("SwapDEKs lost %v, want %v", lost, wantLost)
				}
			},
			"list": func(rt *rapid.T) {
				q := rekey.DEKQuery{
					Key:        key,
					Version:    rapid.IntRange(0, 2).Draw(rt, "version"),
					NotVersion: rapid.IntRange(0, 2).Draw(rt, "not-version"),
					Limit:      rapid.IntRange(0, 8).Draw(rt, "limit"),
				}
				if rapid.Bool().Draw(rt, "after") {
					q.After = pickID(rt, "after-id")
				}
				var want []string
				for _, id := range slices.Sorted(maps.Keys(model)) {
					m := model[id]
					if id <= q.After || q.Version > 0 && m.version != q.Version || q.NotVersion > 0 && m.version == q.NotVersion {
						continue
					}
					want = append(want, id)
				}
				if q.Limit > 0 && len(want) > q.Limit {
					want = want[:q.Limit]
				}
				got, err := f.s.ListDEKs(f.ctx, q)
				if err != nil {
					rt.Fatalf("ListDEKs: %v", err)
				}
				if !slices.Equal(ids(got), want) {
					rt.Fatalf("ListDEKs(%+v) = %v, want %v", q, ids(got), want)
				}
				for _, d := range got {
					if m := model[d.ID]; d.Version != m.version || !bytes.Equal(d.Wrapped, m.wrapped) || d.Key != key {
						rt.Fatalf("dek %s = v%d %x, want v%d %x", d.ID, d.Version, d.Wrapped, m.version, m.wrapped)
					}
				}
			},
			"count": func(rt *rapid.T) {
				want := map[int]int64{}
				for _, m := range model {
					want[m.version]++
				}
				got, err := f.s.CountDEKs(f.ctx, key)
				if err != nil {
					rt.Fatalf("CountDEKs: %v", err)
				}
				if !maps.Equal(got, want) {
					rt.Fatalf("CountDEKs = %v, want %v", got, want)
				}
			},
		})
	})
}

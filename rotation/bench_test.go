package rotation_test

import (
	"testing"
	"time"

	"github.com/rekeyhq/rekey/rotation"
)

// BenchmarkRewrap measures a whole rotation of a key with 10,000 DEKs
// (claim, new version, streamed re-wrap in batches of 1000 with 8 backend
// calls in flight, commit, final sweep) and reports DEKs re-wrapped per
// second.
//
//	go test -run '^$' -bench BenchmarkRewrap -benchtime 5x ./rotation
func BenchmarkRewrap(b *testing.B) {
	const deks = 10_000
	run := func(b *testing.B, e *env) {
		e.createKey(b, "bench", testPolicy())
		for range deks / 1000 {
			e.addDEKs(b, "bench", 1000)
		}
		eng := e.engine(b, func(c *rotation.Config) {
			c.BatchSize = rotation.DefaultBatchSize
			c.Concurrency = rotation.DefaultConcurrency
			c.Logger = nil
		})
		b.ResetTimer()
		start := time.Now()
		for b.Loop() {
			r, err := eng.Rotate(e.ctx, "bench", "", "")
			if err != nil {
				b.Fatal(err)
			}
			if r.Done != deks {
				b.Fatalf("re-wrapped %d DEKs, want %d", r.Done, deks)
			}
		}
		b.ReportMetric(float64(deks*b.N)/time.Since(start).Seconds(), "DEKs/s")
	}
	b.Run("memstore+memkms", func(b *testing.B) { run(b, setup(b)) })
	b.Run("sqlitestore+localkms", func(b *testing.B) { run(b, openSQLite(b, b.TempDir(), newClock().Now())) })
}

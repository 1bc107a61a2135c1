package localkms

import (
	"bytes"
	"testing"

	"github.com/rekeyhq/rekey"
)

func benchClient(b *testing.B) (*Client, string) {
	b.Helper()
	c := setup(b).open(b)
	ref := mustCreate(b, c, "bench")
	if _, err := c.RotateKey(b.Context(), ref); err != nil {
		b.Fatal(err)
	}
	return c, ref
}

// BenchmarkWrap measures wrapping a 32-byte DEK, including the amortized
// counter reservation (one keyring write per CounterBlock wraps).
func BenchmarkWrap(b *testing.B) {
	c, ref := benchClient(b)
	d := bytes.Repeat([]byte{1}, 32)
	for b.Loop() {
		if _, err := c.Wrap(b.Context(), ref, 2, d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	c, ref := benchClient(b)
	w := mustWrap(b, c, ref, 2, bytes.Repeat([]byte{1}, 32))
	for b.Loop() {
		if _, err := c.Unwrap(b.Context(), ref, 2, w); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewrap measures one re-wrap from version 1 to 2, what a rotation
// does per DEK.
func BenchmarkRewrap(b *testing.B) {
	c, ref := benchClient(b)
	w := mustWrap(b, c, ref, 1, bytes.Repeat([]byte{1}, 32))
	for b.Loop() {
		if _, err := c.Rewrap(b.Context(), ref, 1, w, 2); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewrapBatch measures the re-wrap of a batch of 1000 DEKs from
// version 1 to 2, as the engine calls it; ns/op is per batch.
func BenchmarkRewrapBatch(b *testing.B) {
	c, ref := benchClient(b)
	items := make([]rekey.RewrapItem, 1000)
	for i := range items {
		items[i] = rekey.RewrapItem{Version: 1, Wrapped: mustWrap(b, c, ref, 1, bytes.Repeat([]byte{byte(i)}, 32))}
	}
	for b.Loop() {
		res, err := c.RewrapBatch(b.Context(), ref, 2, items)
		if err != nil || len(res) != len(items) || res[0].Err != nil {
			b.Fatalf("RewrapBatch = %d results, %v", len(res), err)
		}
	}
	b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "DEKs/s")
}

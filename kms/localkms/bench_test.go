package localkms

import (
	"bytes"
	"testing"
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

package rekey_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

// benchMsg is the message size of the Seal/Open benchmarks: 1 MiB.
const benchMsg = 1 << 20

func benchKeyring(b *testing.B) *rekey.Keyring {
	b.Helper()
	kr := rekey.NewKeyring(memstore.New(), map[string]rekey.KMS{"mem": memkms.New()})
	if _, err := kr.CreateKey(b.Context(), "bench", "mem", rekey.DefaultPolicy()); err != nil {
		b.Fatal(err)
	}
	return kr
}

// rawGCM seals msg in one AES-256-GCM call with a random nonce: the
// ceiling rekey's envelope is measured against.
type rawGCM struct {
	aead  cipher.AEAD
	nonce []byte
}

func newRawGCM(b *testing.B) *rawGCM {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	blk, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		b.Fatal(err)
	}
	return &rawGCM{aead: g, nonce: make([]byte, g.NonceSize())}
}

func (r *rawGCM) seal(dst, msg []byte) []byte {
	_, _ = rand.Read(r.nonce)
	return r.aead.Seal(dst[:0], r.nonce, msg, nil)
}

func (r *rawGCM) open(dst, ct []byte) ([]byte, error) {
	return r.aead.Open(dst[:0], r.nonce, ct, nil)
}

// BenchmarkSealOpen measures 1 MiB messages (MB/s, b.SetBytes) through
// Keyring.Seal and Keyring.Open (a new DEK per message: a store row and a
// backend wrap, here the in-memory fakes), through SealEnvelope and
// OpenEnvelope with a DEK already open, and through one raw AES-256-GCM
// call, in the same run. The "ratio" sub-benchmark runs in each iteration
// a Keyring seal+open and a raw seal+open that both allocate their results
// (as any API returning new bytes must), then Keyring.AppendSeal and
// AppendOpen and a raw seal+open into buffers kept across calls, and
// reports the four MB/s, keyring/raw and append/raw_reuse (the target is
// at least 0.8).
//
//	go test -run '^$' -bench BenchmarkSealOpen -benchtime 2s .
func BenchmarkSealOpen(b *testing.B) {
	msg := make([]byte, benchMsg)
	_, _ = rand.Read(msg)
	aad := []byte("bench")

	b.Run("keyring/seal", func(b *testing.B) {
		kr := benchKeyring(b)
		b.SetBytes(benchMsg)
		for b.Loop() {
			if _, err := kr.Seal(b.Context(), "bench", msg, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("keyring/open", func(b *testing.B) {
		kr := benchKeyring(b)
		sealed, err := kr.Seal(b.Context(), "bench", msg, aad)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(benchMsg)
		for b.Loop() {
			if _, err := kr.Open(b.Context(), sealed, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("envelope/seal", func(b *testing.B) {
		dek := make([]byte, 32)
		_, _ = rand.Read(dek)
		b.SetBytes(benchMsg)
		for b.Loop() {
			if _, err := rekey.SealEnvelope(rekey.NewID(), dek, msg, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("envelope/open", func(b *testing.B) {
		dek := make([]byte, 32)
		_, _ = rand.Read(dek)
		sealed, err := rekey.SealEnvelope(rekey.NewID(), dek, msg, aad)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(benchMsg)
		for b.Loop() {
			if _, err := rekey.OpenEnvelope(sealed, dek, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-aes-gcm/seal", func(b *testing.B) {
		r := newRawGCM(b)
		dst := make([]byte, 0, benchMsg+64)
		b.SetBytes(benchMsg)
		for b.Loop() {
			dst = r.seal(dst, msg)
		}
	})
	b.Run("raw-aes-gcm/open", func(b *testing.B) {
		r := newRawGCM(b)
		ct := r.seal(nil, msg)
		dst := make([]byte, 0, benchMsg)
		b.SetBytes(benchMsg)
		for b.Loop() {
			var err error
			if dst, err = r.open(dst, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-aes-gcm-alloc/seal", func(b *testing.B) {
		r := newRawGCM(b)
		b.SetBytes(benchMsg)
		for b.Loop() {
			_ = r.seal(nil, msg)
		}
	})
	b.Run("raw-aes-gcm-alloc/open", func(b *testing.B) {
		r := newRawGCM(b)
		ct := r.seal(nil, msg)
		b.SetBytes(benchMsg)
		for b.Loop() {
			if _, err := r.open(nil, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ratio", func(b *testing.B) {
		kr := benchKeyring(b)
		r := newRawGCM(b)
		sealBuf, openBuf := make([]byte, 0, benchMsg+64), make([]byte, 0, benchMsg)
		ksealBuf := make([]byte, 0, benchMsg+rekey.SealedOverhead(benchMsg, rekey.IDLen))
		kopenBuf := make([]byte, 0, cap(ksealBuf))
		var keyringTime, rawTime, appendTime, reuseTime time.Duration
		b.SetBytes(2 * benchMsg) // seal + open
		for b.Loop() {
			// Keyring.Seal and Open, and raw AES-GCM the same way: a new
			// buffer for each result, as an API that returns one must.
			t0 := time.Now()
			sealed, err := kr.Seal(b.Context(), "bench", msg, aad)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := kr.Open(b.Context(), sealed, aad); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			ct := r.seal(nil, msg)
			if _, err := r.open(nil, ct); err != nil {
				b.Fatal(err)
			}
			// Keyring.AppendSeal and AppendOpen, and raw AES-GCM, into
			// buffers kept across calls.
			t2 := time.Now()
			sealed, err = kr.AppendSeal(b.Context(), ksealBuf, "bench", msg, aad)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := kr.AppendOpen(b.Context(), kopenBuf, sealed, aad); err != nil {
				b.Fatal(err)
			}
			t3 := time.Now()
			ct = r.seal(sealBuf, msg)
			if _, err := r.open(openBuf, ct); err != nil {
				b.Fatal(err)
			}
			keyringTime += t1.Sub(t0)
			rawTime += t2.Sub(t1)
			appendTime += t3.Sub(t2)
			reuseTime += time.Since(t3)
		}
		mb := float64(2*benchMsg*b.N) / 1e6
		b.ReportMetric(mb/keyringTime.Seconds(), "keyring_MB/s")
		b.ReportMetric(mb/rawTime.Seconds(), "raw_MB/s")
		b.ReportMetric(mb/appendTime.Seconds(), "keyring_append_MB/s")
		b.ReportMetric(mb/reuseTime.Seconds(), "raw_reuse_MB/s")
		b.ReportMetric(rawTime.Seconds()/keyringTime.Seconds(), "keyring/raw")
		b.ReportMetric(reuseTime.Seconds()/appendTime.Seconds(), "append/raw_reuse")
	})
}

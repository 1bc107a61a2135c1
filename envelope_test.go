package rekey

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

func testDEK(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, DEKSize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// openStreamed opens sealed through ReadEnvelopeHeader and the stream
// reader, as OpenStream does.
func openStreamed(sealed, dek, aad []byte) ([]byte, error) {
	src := bytes.NewReader(sealed)
	h, err := ReadEnvelopeHeader(src)
	if err != nil {
		return nil, err
	}
	r, err := NewEnvelopeReader(src, h, dek, aad)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

func TestEnvelopeRoundTrip(t *testing.T) {
	t.Parallel()
	dek := testDEK(t)
	id := NewID()
	chunk := 1 << defaultChunkShift
	for _, size := range []int{0, 1, 15, 16, 17, chunk - 1, chunk, chunk + 1, 2 * chunk, 3*chunk + 7} {
		plain := make([]byte, size)
		rand.Read(plain)
		for _, aad := range [][]byte{nil, []byte("tenant=42")} {
			sealed, err := SealEnvelope(id, dek, plain, aad)
			if err != nil {
				t.Fatalf("size %d: seal: %v", size, err)
			}
			got, err := OpenEnvelope(sealed, dek, aad)
			if err != nil {
				t.Fatalf("size %d: open: %v", size, err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("size %d: round trip differs", size)
			}
			h, err := ReadEnvelopeHeader(bytes.NewReader(sealed))
			if err != nil || h.DEKID != id {
				t.Fatalf("size %d: header id %q, err %v", size, h.DEKID, err)
			}
			// The whole-buffer and the stream paths write and read the
			// same format: each opens what the other sealed.
			if got, err := openStreamed(sealed, dek, aad); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("size %d: the stream reader on SealEnvelope's bytes: %v (equal %v)", size, err, bytes.Equal(got, plain))
			}
			var streamed bytes.Buffer
			w, err := NewEnvelopeWriter(&streamed, id, dek, aad)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(plain); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if streamed.Len() != len(sealed) {
				t.Fatalf("size %d: the stream writer wrote %d bytes, SealEnvelope %d", size, streamed.Len(), len(sealed))
			}
			if got, err := OpenEnvelope(streamed.Bytes(), dek, aad); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("size %d: OpenEnvelope on the stream writer's bytes: %v (equal %v)", size, err, bytes.Equal(got, plain))
			}
		}
	}
}

func TestEnvelopeSealsDiffer(t *testing.T) {
	t.Parallel()
	dek := testDEK(t)
	id := NewID()
	a, _ := SealEnvelope(id, dek, []byte("same"), nil)
	b, _ := SealEnvelope(id, dek, []byte("same"), nil)
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same data are equal")
	}
}

// TestEnvelopeTamper checks that every kind of change to a sealed envelope is
// refused with ErrInvalidCiphertext: each byte flipped, each truncation,
// appended data, a swapped segment, a dropped segment, another DEK, other
// associated data.
func TestEnvelopeTamper(t *testing.T) {
	t.Parallel()
	dek := testDEK(t)
	id := NewID()
	chunk := 1 << defaultChunkShift
	plain := make([]byte, 2*chunk+100)
	rand.Read(plain)
	sealed, err := SealEnvelope(id, dek, plain, []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	mustFail := func(name string, data, key, aad []byte) {
		t.Helper()
		_, err := OpenEnvelope(data, key, aad)
		if !errors.Is(err, ErrInvalidCiphertext) {
			t.Errorf("%s: err = %v, want ErrInvalidCiphertext", name, err)
		}
		_, serr := openStreamed(data, key, aad)
		if !errors.Is(serr, ErrInvalidCiphertext) {
			t.Errorf("%s: the stream reader: err = %v, want ErrInvalidCiphertext", name, serr)
		}
		if err != nil && serr != nil && err.Error() != serr.Error() {
			t.Errorf("%s: OpenEnvelope says %q, the stream reader %q", name, err, serr)
		}
	}
	hdr := 7 + len(id) + envelopeSaltLen
	seg := chunk + envelopeTagLen
	// Flip one bit in a sample of positions across header and every segment.
	for _, pos := range []int{0, 4, 5, 6, 7, hdr - 1, hdr, hdr + 1, hdr + seg - 1, hdr + seg, hdr + 2*seg, len(sealed) - 1} {
		c := bytes.Clone(sealed)
		c[pos] ^= 0x01
		if _, err := OpenEnvelope(c, dek, []byte("ad")); err == nil {
			t.Errorf("bit flip at %d: opened", pos)
		}
		if _, err := openStreamed(c, dek, []byte("ad")); err == nil {
			t.Errorf("bit flip at %d: the stream reader opened it", pos)
		}
	}
	for _, n := range []int{0, 3, hdr - 1, hdr, hdr + 10, hdr + seg, hdr + seg + 1, hdr + 2*seg, len(sealed) - 1} {
		mustFail("truncated", sealed[:n], dek, []byte("ad"))
	}
	mustFail("appended", append(bytes.Clone(sealed), 0), dek, []byte("ad"))
	swapped := bytes.Clone(sealed[:hdr])
	swapped = append(swapped, sealed[hdr+seg:hdr+2*seg]...)
	swapped = append(swapped, sealed[hdr:hdr+seg]...)
	swapped = append(swapped, sealed[hdr+2*seg:]...)
	mustFail("swapped segments", swapped, dek, []byte("ad"))
	dropped := append(bytes.Clone(sealed[:hdr+seg]), sealed[hdr+2*seg:]...)
	mustFail("dropped segment", dropped, dek, []byte("ad"))
	mustFail("other dek", sealed, testDEK(t), []byte("ad"))
	mustFail("other aad", sealed, dek, []byte("ae"))
	mustFail("no aad", sealed, dek, nil)
	// A stream cut exactly at a segment boundary must not pass for a whole
	// one: the last segment is marked in its nonce.
	mustFail("cut at boundary", sealed[:hdr+2*seg], dek, []byte("ad"))
}

// TestEnvelopeStreamMemory seals and opens through the streaming API with
// small reads and writes, to exercise chunk boundaries from both sides.
func TestEnvelopeStreamSmallIO(t *testing.T) {
	t.Parallel()
	dek := testDEK(t)
	id := NewID()
	plain := make([]byte, 3*(1<<defaultChunkShift)+5)
	rand.Read(plain)
	var sealed bytes.Buffer
	w, err := NewEnvelopeWriter(&sealed, id, dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(plain); i += 1000 {
		if _, err := w.Write(plain[i:min(i+1000, len(plain))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	src := bytes.NewReader(sealed.Bytes())
	h, err := ReadEnvelopeHeader(src)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewEnvelopeReader(iotestOneByte{src}, h, dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 777)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), plain) {
		t.Fatal("stream round trip differs")
	}
}

type iotestOneByte struct{ r io.Reader }

func (o iotestOneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestEnvelopeBadArguments(t *testing.T) {
	t.Parallel()
	if _, err := SealEnvelope("not-an-id", testDEK(t), nil, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad id: %v", err)
	}
	if _, err := SealEnvelope(NewID(), []byte("short"), nil, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("short dek: %v", err)
	}
}

// FuzzEnvelope opens arbitrary bytes: it must never panic, and anything that
// is not the genuine envelope must fail with ErrInvalidCiphertext.
func FuzzEnvelope(f *testing.F) {
	dek := make([]byte, DEKSize)
	id := "01JDXA4N2Z3Y4X5W6V7T8S9R0Q"
	for _, p := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("y"), 70000)} {
		s, err := SealEnvelope(id, dek, p, nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s)
		f.Add(s[:len(s)/2])
	}
	f.Add([]byte("RKYE"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := OpenEnvelope(data, dek, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalidCiphertext) {
				t.Fatalf("error not typed: %v", err)
			}
			return
		}
		// It opened: it must be a genuine seal; re-sealing its plaintext and
		// opening gives the same bytes.
		if again, err := SealEnvelope(id, dek, got, nil); err != nil {
			t.Fatal(err)
		} else if back, err := OpenEnvelope(again, dek, nil); err != nil || !bytes.Equal(back, got) {
			t.Fatalf("re-seal round trip failed: %v", err)
		}
	})
}

func BenchmarkSealStream(b *testing.B) {
	dek := testDEK(b)
	id := NewID()
	data := make([]byte, 8<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := SealStreamWith(io.Discard, bytes.NewReader(data), id, dek, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// AppendSealEnvelope and AppendOpenEnvelope append to dst as
// cipher.AEAD does: into its spare capacity when there is enough (no new
// buffer), after what dst holds; a buffer overlapping the input is
// refused; a failed open leaves no plaintext in dst's capacity.
func TestEnvelopeAppend(t *testing.T) {
	t.Parallel()
	dek := testDEK(t)
	id := NewID()
	plain := make([]byte, 3<<defaultChunkShift+5)
	rand.Read(plain)
	prefix := []byte("prefix:")

	dst := append(make([]byte, 0, len(prefix)+len(plain)+SealedOverhead(len(plain), len(id))), prefix...)
	sealed, err := AppendSealEnvelope(dst, id, dek, plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	if &sealed[0] != &dst[0] || !bytes.HasPrefix(sealed, prefix) {
		t.Fatal("AppendSealEnvelope with enough capacity did not append in dst's buffer")
	}
	if len(sealed)-len(prefix) != len(plain)+SealedOverhead(len(plain), len(id)) {
		t.Fatalf("envelope of %d bytes, SealedOverhead says %d", len(sealed)-len(prefix), len(plain)+SealedOverhead(len(plain), len(id)))
	}
	env := sealed[len(prefix):]
	if got, err := OpenEnvelope(env, dek, nil); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("OpenEnvelope of an appended envelope: %v", err)
	}

	out := append(make([]byte, 0, len(prefix)+len(env)), prefix...)
	got, err := AppendOpenEnvelope(out, env, dek, nil)
	if err != nil || &got[0] != &out[0] || !bytes.Equal(got[len(prefix):], plain) || !bytes.HasPrefix(got, prefix) {
		t.Fatalf("AppendOpenEnvelope: %v (in dst's buffer: %v)", err, err == nil && &got[0] == &out[0])
	}
	// Short capacity: a new buffer, same bytes.
	if got, err := AppendOpenEnvelope(prefix[:len(prefix):len(prefix)], env, dek, nil); err != nil || !bytes.Equal(got[len(prefix):], plain) {
		t.Fatalf("AppendOpenEnvelope into a full slice: %v", err)
	}

	// A failed open clears the capacity it wrote into.
	bad := bytes.Clone(env)
	bad[len(bad)-1] ^= 1
	out = make([]byte, 0, len(bad))
	if _, err := AppendOpenEnvelope(out, bad, dek, nil); !errors.Is(err, ErrInvalidCiphertext) {
		t.Fatalf("AppendOpenEnvelope of a damaged envelope: %v", err)
	}
	if !bytes.Equal(out[:cap(out)], make([]byte, cap(out))) {
		t.Fatal("a failed AppendOpenEnvelope left plaintext in dst's spare capacity")
	}

	// Overlap with the input is refused.
	buf := make([]byte, 2*len(plain)+SealedOverhead(len(plain), len(id)))
	in := buf[len(buf)-len(plain):]
	copy(in, plain)
	if _, err := AppendSealEnvelope(buf[:0], id, dek, in, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("AppendSealEnvelope into a buffer holding the plaintext: %v, want ErrInvalidArgument", err)
	}
	buf = make([]byte, 2*len(env))
	copy(buf[len(env):], env)
	if _, err := AppendOpenEnvelope(buf[:0], buf[len(env):], dek, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("AppendOpenEnvelope into a buffer holding the envelope: %v, want ErrInvalidArgument", err)
	}
}

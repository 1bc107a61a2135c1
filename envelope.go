package rekey

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unsafe"
)

// The sealed-data envelope (format 1):
//
//	magic "RKYE" | format 0x01 | chunk-size exponent | id length | DEK id | 32-byte salt
//	then segments: AES-256-GCM(subkey, nonce, chunk, aad) of chunkSize bytes each,
//	the last one shorter (possibly empty) and marked as last in its nonce.
//
// The subkey is HKDF-SHA256(DEK, salt, "rekey/envelope/v1"), fresh for every
// envelope, so a DEK can seal any number of envelopes without nonce reuse.
// The nonce is the 8-byte big-endian segment counter, one "last segment"
// byte, and three zero bytes (the STREAM construction): segments cannot be
// reordered, dropped, or the stream truncated or extended without detection.
// Every segment's associated data is SHA-256 of the header and the caller's
// associated data, so the header (and the DEK id in it) is authenticated.
const (
	envelopeMagic     = "RKYE"
	envelopeFormat    = 1
	envelopeSaltLen   = 32
	envelopeTagLen    = 16
	envelopeNonceLen  = 12
	defaultChunkShift = 16 // 64 KiB
	minChunkShift     = 10
	maxChunkShift     = 22 // 4 MiB: bounds the memory a hostile header can make us allocate
	maxEnvelopeIDLen  = 64
	envelopeInfo      = "rekey/envelope/v1"
)

// EnvelopeHeader is the clear part of a sealed envelope.
type EnvelopeHeader struct {
	DEKID      string
	ChunkShift uint8
	Salt       [envelopeSaltLen]byte
	raw        []byte
}

// ReadEnvelopeHeader reads and checks the header of a sealed envelope from r,
// leaving r at the first segment. It returns ErrInvalidCiphertext when the
// bytes are not an envelope rekey can read.
func ReadEnvelopeHeader(r io.Reader) (EnvelopeHeader, error) {
	var fixed [7]byte
	if n, err := io.ReadFull(r, fixed[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return EnvelopeHeader{}, fmt.Errorf("%w: the envelope is empty (0 bytes): %s", ErrInvalidCiphertext, fixNotEnvelope)
		}
		return EnvelopeHeader{}, headerError(shortRead(err))
	}
	if string(fixed[:4]) != envelopeMagic {
		return EnvelopeHeader{}, fmt.Errorf("%w: not a rekey envelope (bad magic): %s", ErrInvalidCiphertext, fixNotEnvelope)
	}
	if fixed[4] != envelopeFormat {
		return EnvelopeHeader{}, fmt.Errorf("%w: envelope format %d is not supported (this rekey reads format %d): use a newer rekey to decrypt it", ErrInvalidCiphertext, fixed[4], envelopeFormat)
	}
	shift, idLen := fixed[5], int(fixed[6])
	if shift < minChunkShift || shift > maxChunkShift {
		return EnvelopeHeader{}, headerError(fmt.Errorf("%w: chunk size 2^%d out of range", errHeaderDamaged, shift))
	}
	if idLen == 0 || idLen > maxEnvelopeIDLen {
		return EnvelopeHeader{}, headerError(fmt.Errorf("%w: DEK id length %d out of range", errHeaderDamaged, idLen))
	}
	rest := make([]byte, idLen+envelopeSaltLen)
	if _, err := io.ReadFull(r, rest); err != nil {
		return EnvelopeHeader{}, headerError(shortRead(err))
	}
	h := EnvelopeHeader{DEKID: string(rest[:idLen]), ChunkShift: shift}
	if !ValidID(h.DEKID) {
		return EnvelopeHeader{}, headerError(fmt.Errorf("%w: malformed DEK id", errHeaderDamaged))
	}
	copy(h.Salt[:], rest[idLen:])
	h.raw = append(fixed[:], rest...)
	return h, nil
}

// fixNotEnvelope is the advice for input that is not an envelope at all.
const fixNotEnvelope = "check that the input is a file sealed by rekey encrypt"

// fixDamaged is the advice for an envelope whose bytes were changed or cut.
const fixDamaged = "the file is damaged: restore it from a backup"

// headerError reports a damaged envelope header: what is wrong, then what to
// do. An I/O error other than a short read is reported as it is.
func headerError(err error) error {
	if err != errTruncated && !errors.Is(err, errHeaderDamaged) {
		return fmt.Errorf("%w: envelope header: %v", ErrInvalidCiphertext, err)
	}
	return fmt.Errorf("%w: envelope header: %v: %s", ErrInvalidCiphertext, err, fixDamaged)
}

// errHeaderDamaged marks a header field with a value rekey never writes.
var errHeaderDamaged = errors.New("corrupt")

// errTruncated is what shortRead makes of an early end of the input.
var errTruncated = errors.New("truncated")

func shortRead(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errTruncated
	}
	return err
}

func (h EnvelopeHeader) encode() []byte {
	b := make([]byte, 0, 7+len(h.DEKID)+envelopeSaltLen)
	b = append(b, envelopeMagic...)
	b = append(b, envelopeFormat, h.ChunkShift, byte(len(h.DEKID)))
	b = append(b, h.DEKID...)
	b = append(b, h.Salt[:]...)
	return b
}

// segmentCipher derives the per-envelope AEAD and the associated data every
// segment carries.
func segmentCipher(dek []byte, h EnvelopeHeader, raw, aad []byte) (cipher.AEAD, []byte, error) {
	if len(dek) != 32 {
		return nil, nil, Invalidf("a DEK must be 32 bytes")
	}
	sub, err := hkdf.Key(sha256.New, dek, h.Salt[:], envelopeInfo, 32)
	if err != nil {
		return nil, nil, err
	}
	defer zero(sub)
	block, err := aes.NewCipher(sub)
	if err != nil {
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, err
	}
	d := sha256.New()
	d.Write(raw)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(aad)))
	d.Write(n[:])
	d.Write(aad)
	return aead, d.Sum(nil), nil
}

func segmentNonce(nonce *[envelopeNonceLen]byte, counter uint64, last bool) {
	binary.BigEndian.PutUint64(nonce[:8], counter)
	nonce[8] = 0
	if last {
		nonce[8] = 1
	}
}

// envelopeWriter seals what is written to it, one chunk at a time.
type envelopeWriter struct {
	dst     io.Writer
	aead    cipher.AEAD
	ad      []byte
	buf     []byte // plaintext of the current chunk
	out     []byte
	counter uint64
	nonce   [envelopeNonceLen]byte
	closed  bool
	err     error
}

// NewEnvelopeWriter writes an envelope header naming dekID to dst and returns
// a writer that seals everything written to it under dek. Close must be
// called to write the final segment; without it the envelope is truncated
// and will not open. Memory use is two chunks (64 KiB each), whatever the
// size of the data.
func NewEnvelopeWriter(dst io.Writer, dekID string, dek, aad []byte) (io.WriteCloser, error) {
	if !ValidID(dekID) {
		return nil, Invalidf("malformed DEK id")
	}
	h := EnvelopeHeader{DEKID: dekID, ChunkShift: defaultChunkShift}
	if _, err := rand.Read(h.Salt[:]); err != nil {
		return nil, err
	}
	raw := h.encode()
	aead, ad, err := segmentCipher(dek, h, raw, aad)
	if err != nil {
		return nil, err
	}
	if _, err := dst.Write(raw); err != nil {
		return nil, err
	}
	size := 1 << h.ChunkShift
	return &envelopeWriter{dst: dst, aead: aead, ad: ad, buf: make([]byte, 0, size), out: make([]byte, 0, size+envelopeTagLen)}, nil
}

func (w *envelopeWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errors.New("rekey: write to closed envelope")
	}
	n := 0
	for len(p) > 0 {
		// A full chunk is sealed only when more data follows, so that the
		// last segment is known to be last when it is sealed.
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(false); err != nil {
				return n, err
			}
		}
		c := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+c]
		p = p[c:]
		n += c
	}
	return n, nil
}

func (w *envelopeWriter) flush(last bool) error {
	segmentNonce(&w.nonce, w.counter, last)
	w.out = w.aead.Seal(w.out[:0], w.nonce[:], w.buf, w.ad)
	zero(w.buf)
	w.buf = w.buf[:0]
	w.counter++
	if _, err := w.dst.Write(w.out); err != nil {
		w.err = err
		return err
	}
	return nil
}

func (w *envelopeWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	w.closed = true
	return w.flush(true)
}

// envelopeReader opens segments as they are read.
type envelopeReader struct {
	src     io.Reader
	aead    cipher.AEAD
	ad      []byte
	seg     []byte // ciphertext of the next segment, plus one byte of lookahead
	look    byte   // the lookahead byte read past the previous segment
	hasLook bool
	plain   []byte // opened plaintext not yet returned (inside seg)
	counter uint64
	nonce   [envelopeNonceLen]byte
	done    bool
	err     error
}

// NewEnvelopeReader returns a reader of the plaintext of the envelope whose
// header h was read from src with ReadEnvelopeHeader. Each segment is
// authenticated before any of it is returned; a modified, reordered,
// truncated or extended stream gives an error wrapping ErrInvalidCiphertext
// (by then earlier segments may have been returned: write to a temporary
// file and keep it only when the read ends in io.EOF).
func NewEnvelopeReader(src io.Reader, h EnvelopeHeader, dek, aad []byte) (io.Reader, error) {
	aead, ad, err := segmentCipher(dek, h, h.raw, aad)
	if err != nil {
		return nil, err
	}
	size := 1<<h.ChunkShift + envelopeTagLen
	return &envelopeReader{src: src, aead: aead, ad: ad, seg: make([]byte, size+1)}, nil
}

func (r *envelopeReader) Read(p []byte) (int, error) {
	for len(r.plain) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.err = r.next()
	}
	n := copy(p, r.plain)
	r.plain = r.plain[n:]
	return n, nil
}

// next opens one segment. A segment is the last one when fewer than a full
// segment plus one byte remain in the stream.
func (r *envelopeReader) next() error {
	have := 0
	if r.hasLook {
		r.seg[0] = r.look
		have = 1
	}
	n, err := io.ReadFull(r.src, r.seg[have:])
	have += n
	last := false
	switch {
	case err == nil:
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		last = true
	default:
		return err
	}
	segLen := have
	if !last {
		segLen = len(r.seg) - 1
	}
	if segLen < envelopeTagLen {
		return errEnvelopeTruncated()
	}
	segmentNonce(&r.nonce, r.counter, last)
	plain, oerr := r.aead.Open(r.seg[:0:segLen], r.nonce[:], r.seg[:segLen], r.ad)
	if oerr != nil {
		return errSegment(r.counter)
	}
	r.counter++
	r.plain = plain
	r.done = last
	r.hasLook = !last
	if !last {
		r.look = r.seg[segLen]
	}
	return nil
}

// SealEnvelope seals plaintext under dek in one envelope naming dekID. It
// writes the same bytes as NewEnvelopeWriter (one segment per chunk, the
// last flagged), sealing each chunk straight from plaintext into the one
// buffer it returns: no copy of the plaintext, one allocation.
func SealEnvelope(dekID string, dek, plaintext, aad []byte) ([]byte, error) {
	return AppendSealEnvelope(nil, dekID, dek, plaintext, aad)
}

// AppendSealEnvelope is SealEnvelope appending the envelope to dst, as
// cipher.AEAD.Seal does: with dst's spare capacity large enough (the
// plaintext plus SealedOverhead) it allocates nothing, so a caller sealing
// many messages can reuse one buffer. The spare capacity of dst must not
// overlap plaintext (ErrInvalidArgument).
func AppendSealEnvelope(dst []byte, dekID string, dek, plaintext, aad []byte) ([]byte, error) {
	if !ValidID(dekID) {
		return nil, Invalidf("malformed DEK id")
	}
	n, err := sealDst(dst, len(dekID), plaintext)
	if err != nil {
		return nil, err
	}
	h := EnvelopeHeader{DEKID: dekID, ChunkShift: defaultChunkShift}
	size := 1 << h.ChunkShift
	// A full chunk is its own segment; the last segment may be short or
	// empty (an empty plaintext is one empty segment).
	segs := max(1, (len(plaintext)+size-1)/size)
	if _, err := rand.Read(h.Salt[:]); err != nil {
		return nil, err
	}
	raw := h.encode()
	aead, ad, err := segmentCipher(dek, h, raw, aad)
	if err != nil {
		return nil, err
	}
	out := grow(dst, n)
	out = append(out, raw...)
	var nonce [envelopeNonceLen]byte
	for i := range segs {
		chunk := plaintext[i*size : min((i+1)*size, len(plaintext))]
		segmentNonce(&nonce, uint64(i), i == segs-1)
		out = aead.Seal(out, nonce[:], chunk, ad)
	}
	return out, nil
}

// grow is slices.Grow for bytes that are all about to be written: a new
// buffer comes from make, which the runtime need not zero when its memory
// is fresh from the OS, where slices.Grow always zeroes what it adds (a
// fifth of a 1 MiB Seal's time in a CPU profile).
func grow(dst []byte, n int) []byte {
	if cap(dst)-len(dst) >= n {
		return dst
	}
	out := make([]byte, len(dst), len(dst)+n)
	copy(out, dst)
	return out
}

// sealDst returns the size of the envelope of plaintext under a DEK id of
// idLen characters, or ErrInvalidArgument when it would be appended into
// spare capacity of dst that overlaps plaintext.
func sealDst(dst []byte, idLen int, plaintext []byte) (int, error) {
	n := len(plaintext) + SealedOverhead(len(plaintext), idLen)
	if cap(dst)-len(dst) >= n && overlaps(dst[len(dst):cap(dst)], plaintext) {
		return 0, Invalidf("the buffer to append the envelope to overlaps the plaintext: give a separate buffer")
	}
	return n, nil
}

// SealedOverhead returns how many bytes an envelope of a plaintext of n
// bytes under a DEK id of idLen characters adds to it: the header and one
// tag per 64 KiB chunk.
func SealedOverhead(n, idLen int) int {
	size := 1 << defaultChunkShift
	return 7 + idLen + envelopeSaltLen + max(1, (n+size-1)/size)*envelopeTagLen
}

// OpenEnvelope opens a whole envelope sealed under dek. It returns
// ErrInvalidCiphertext for anything that does not authenticate.
func OpenEnvelope(sealed, dek, aad []byte) ([]byte, error) {
	return AppendOpenEnvelope(nil, sealed, dek, aad)
}

// AppendOpenEnvelope is OpenEnvelope appending the plaintext to dst, as
// cipher.AEAD.Open does: with len(sealed) bytes of spare capacity in dst
// it allocates nothing. The spare capacity of dst must not overlap sealed
// (ErrInvalidArgument).
func AppendOpenEnvelope(dst, sealed, dek, aad []byte) ([]byte, error) {
	src := bytes.NewReader(sealed)
	h, err := ReadEnvelopeHeader(src)
	if err != nil {
		return nil, err
	}
	return openEnvelopeBody(dst, sealed[len(sealed)-src.Len():], h, dek, aad)
}

// openEnvelopeBody opens the segments of an envelope whose header h was
// read from the bytes before body, each straight from body into dst's
// spare capacity (grown once if short), with the rules and errors of the
// envelopeReader. On an error it clears what it had opened.
func openEnvelopeBody(dst, body []byte, h EnvelopeHeader, dek, aad []byte) ([]byte, error) {
	if cap(dst)-len(dst) >= len(body) && overlaps(dst[len(dst):cap(dst)], body) {
		return nil, Invalidf("the buffer to append the plaintext to overlaps the envelope: give a separate buffer")
	}
	aead, ad, err := segmentCipher(dek, h, h.raw, aad)
	if err != nil {
		return nil, err
	}
	full := 1<<h.ChunkShift + envelopeTagLen
	out := grow(dst, len(body)) // the plaintext is shorter
	start := len(out)
	fail := func(err error) ([]byte, error) {
		clear(out[start:cap(out)])
		return nil, err
	}
	var nonce [envelopeNonceLen]byte
	for counter := uint64(0); ; counter++ {
		// A segment is the last one when no more than a full segment is
		// left (the reader's rule: fewer than a full segment plus one).
		last := len(body) <= full
		seg := body
		if !last {
			seg, body = body[:full], body[full:]
		}
		if len(seg) < envelopeTagLen {
			return fail(errEnvelopeTruncated())
		}
		segmentNonce(&nonce, counter, last)
		opened, err := aead.Open(out, nonce[:], seg, ad)
		if err != nil {
			return fail(errSegment(counter)) // Open may have written into out's capacity
		}
		out = opened
		if last {
			return out, nil
		}
	}
}

// overlaps reports whether a and b share memory.
func overlaps(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0, b0 := uintptr(unsafe.Pointer(unsafe.SliceData(a))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return a0 < b0+uintptr(len(b)) && b0 < a0+uintptr(len(a))
}

// errEnvelopeTruncated is the error of an envelope cut inside a segment's
// tag.
func errEnvelopeTruncated() error {
	return fmt.Errorf("%w: envelope truncated: %s", ErrInvalidCiphertext, fixDamaged)
}

// errSegment is the error of segment counter that does not authenticate.
func errSegment(counter uint64) error {
	return fmt.Errorf("%w: envelope segment %d does not authenticate: the file is damaged or was sealed with other associated data: restore it from a backup, or give the --aad it was sealed with", ErrInvalidCiphertext, counter)
}

// zero overwrites b. Go may have copied the bytes elsewhere (the garbage
// collector moves nothing, but appends and conversions copy), so this is
// best effort, as in every Go program.
func zero(b []byte) {
	clear(b)
}

package rekey

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"
)

// DEKSize is the size of every DEK rekey makes: 32 bytes, for AES-256.
const DEKSize = 32

// Keyring is the application's way in: it creates root keys, creates and
// opens DEKs, and seals and opens data, in the same store the rotation
// worker rotates. It is safe for concurrent use.
type Keyring struct {
	store    Store
	backends map[string]KMS
	now      func() time.Time
	actor    string
	places   placeCache
}

// KeyringOption configures a Keyring.
type KeyringOption func(*Keyring)

// WithClock makes the Keyring read the time from now (tests).
func WithClock(now func() time.Time) KeyringOption { return func(k *Keyring) { k.now = now } }

// WithActor names who acts, in audit events the Keyring writes.
func WithActor(actor string) KeyringOption { return func(k *Keyring) { k.actor = actor } }

// NewKeyring returns a Keyring over store with the named backends (the names
// that Key.Backend refers to).
func NewKeyring(store Store, backends map[string]KMS, opts ...KeyringOption) *Keyring {
	k := &Keyring{store: store, backends: backends, now: time.Now, actor: "library"}
	for _, o := range opts {
		o(k)
	}
	return k
}

func (kr *Keyring) backend(name string) (KMS, error) {
	b, ok := kr.backends[name]
	if !ok {
		return nil, Invalidf("backend %q is not configured (add it under backends: in the config)", name)
	}
	return b, nil
}

// CreateKey creates a root key called name in backend with policy p: the
// backend creates version 1, and the store records the key with version 1
// active until now + p.RotationPeriod. It returns ErrKeyExists when the
// store already has the name, ErrInvalidArgument for a bad name, policy or
// backend.
func (kr *Keyring) CreateKey(ctx context.Context, name, backend string, p Policy) (Key, error) {
	if err := ValidateKeyName(name); err != nil {
		return Key{}, err
	}
	if err := p.Validate(); err != nil {
		return Key{}, fmt.Errorf("key %s: %w", name, err)
	}
	b, err := kr.backend(backend)
	if err != nil {
		return Key{}, err
	}
	if _, err := kr.store.GetKey(ctx, name); err == nil {
		return Key{}, fmt.Errorf("key %s: %w", name, ErrKeyExists)
	} else if !errors.Is(err, ErrKeyNotFound) {
		return Key{}, err
	}
	ref, err := b.CreateKey(ctx, name)
	if err != nil {
		if errors.Is(err, ErrKeyExists) {
			return Key{}, fmt.Errorf("key %s: backend %q already holds a key by that name but the store does not (an interrupted create, or another store uses this backend): choose another name: %w", name, backend, err)
		}
		return Key{}, fmt.Errorf("key %s: backend %s: %w", name, backend, err)
	}
	now := NormalizeTime(kr.now())
	k := Key{Name: name, Backend: backend, BackendRef: ref, ActiveVersion: 1,
		ExpiresAt: now.Add(p.RotationPeriod), Policy: p, CreatedAt: now, UpdatedAt: now}
	v := KeyVersion{Key: name, Version: 1, State: VersionActive, CreatedAt: now, ActivatedAt: now, Backend: backend, BackendRef: ref, BackendVersion: 1}
	ev := AuditEvent{Time: now, Type: AuditKeyCreated, Key: name, ToVersion: 1, Status: "success", Actor: kr.actor,
		Reason: fmt.Sprintf("backend=%s rotation_period=%s", backend, FormatDuration(p.RotationPeriod))}
	if err := kr.store.CreateKey(ctx, k, v, ev); err != nil {
		return Key{}, fmt.Errorf("key %s: %w", name, err)
	}
	return k, nil
}

// NewDEK makes a random 32-byte DEK, stores it wrapped under key's active
// version, and returns its id and the plaintext. The caller should zero the
// plaintext when done. It returns ErrKeyNotFound for an unknown key.
func (kr *Keyring) NewDEK(ctx context.Context, key, label string) (string, []byte, error) {
	ids, plains, err := kr.newDEKs(ctx, key, label, 1, true)
	if err != nil {
		return "", nil, err
	}
	return ids[0], plains[0], nil
}

// MaxDEKBatch is how many DEKs NewDEKs stores per transaction.
const MaxDEKBatch = 1000

// NewDEKs makes n DEKs under key, storing them in batches of MaxDEKBatch,
// and returns how many it stored (all of them unless err != nil; batches
// stored before an error stay stored). The plaintexts are zeroed and
// dropped: this is for bulk provisioning.
func (kr *Keyring) NewDEKs(ctx context.Context, key, label string, n int) (int, error) {
	if n <= 0 {
		return 0, Invalidf("count must be at least 1")
	}
	done := 0
	for done < n {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		m := min(MaxDEKBatch, n-done)
		if _, _, err := kr.newDEKs(ctx, key, label, m, false); err != nil {
			return done, err
		}
		done += m
	}
	return done, nil
}

// newDEKs wraps n fresh DEKs under the key's active version and inserts them
// in one transaction. When a rotation commits in between, the store refuses
// the insert (ErrVersionNotActive) and the batch is wrapped again under the
// new active version, so no DEK is ever stored under a version on its way
// out. A wrap the backend refuses because the version was retired meanwhile
// (a commit with no grace) is retried the same way.
func (kr *Keyring) newDEKs(ctx context.Context, key, label string, n int, keep bool) ([]string, [][]byte, error) {
	plains := make([][]byte, n)
	for i := range plains {
		plains[i] = make([]byte, DEKSize)
		if _, err := rand.Read(plains[i]); err != nil {
			return nil, nil, err
		}
	}
	clearAll := func() {
		for _, p := range plains {
			zero(p)
		}
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = NewID()
	}
attempts:
	for attempt := 0; ; attempt++ {
		k, err := kr.store.GetKey(ctx, key)
		if err != nil {
			clearAll()
			if errors.Is(err, ErrKeyNotFound) {
				return nil, nil, fmt.Errorf("key %s: %w: create it first (rekey key create %s) or use one that rekey key list shows", key, err, key)
			}
			return nil, nil, fmt.Errorf("key %s: %w", key, err)
		}
		b, p, err := kr.placement(ctx, k, k.ActiveVersion)
		if err != nil {
			clearAll()
			return nil, nil, err
		}
		now := NormalizeTime(kr.now())
		deks := make([]DEK, n)
		for i := range deks {
			w, err := b.Wrap(ctx, p.Ref, p.Version, plains[i])
			if err != nil && errors.Is(err, ErrVersionDisabled) && attempt < 5 {
				// A rotation committed and retired this version at the
				// backend (grace 0) between our read and the wrap: wrap
				// again under the new active version.
				if k2, gerr := kr.store.GetKey(ctx, key); gerr == nil && k2.ActiveVersion != k.ActiveVersion {
					continue attempts
				}
			}
			if err != nil {
				clearAll()
				return nil, nil, fmt.Errorf("wrap new dek under key %s version %d: %w", key, k.ActiveVersion, err)
			}
			deks[i] = DEK{ID: ids[i], Key: key, Version: k.ActiveVersion, Wrapped: w, Label: label, CreatedAt: now, UpdatedAt: now}
		}
		err = kr.store.InsertDEKs(ctx, deks)
		if errors.Is(err, ErrVersionNotActive) && attempt < 5 {
			continue
		}
		if err != nil {
			clearAll()
			return nil, nil, fmt.Errorf("store new deks of key %s: %w", key, err)
		}
		if !keep {
			clearAll()
			return ids, nil, nil
		}
		return ids, plains, nil
	}
}

// OpenDEK returns the plaintext of the DEK with that id. It refuses a DEK
// whose version is compromised, retired or destroyed (ErrVersionDisabled).
// Every error names the DEK id and wraps the cause: ErrDEKNotFound,
// ErrInvalidCiphertext (the stored wrapped bytes are corrupt), ... The
// caller should zero the plaintext when done.
func (kr *Keyring) OpenDEK(ctx context.Context, id string) ([]byte, error) {
	plain, _, err := kr.openDEK(ctx, id)
	return plain, err
}

func (kr *Keyring) openDEK(ctx context.Context, id string) ([]byte, DEK, error) {
	return kr.openDEKOf(ctx, id, "")
}

// openDEKOf is openDEK; a non-empty key refuses a DEK of another root key
// with ErrWrongKey.
func (kr *Keyring) openDEKOf(ctx context.Context, id, key string) ([]byte, DEK, error) {
	fail := func(err error) ([]byte, DEK, error) { return nil, DEK{}, &DEKError{ID: id, Op: "open", Err: err} }
	d, err := kr.store.GetDEK(ctx, id)
	if err != nil {
		return fail(err)
	}
	if key != "" && d.Key != key {
		return fail(fmt.Errorf("%w: the envelope was sealed under key %s, not %s", ErrWrongKey, d.Key, key))
	}
	k, err := kr.store.GetKey(ctx, d.Key)
	if err != nil {
		return fail(err)
	}
	if d.Version != k.ActiveVersion {
		// Only a DEK not on the active version can be on a version that is
		// no longer usable: check its state then.
		vs, err := kr.store.ListVersions(ctx, d.Key)
		if err != nil {
			return fail(err)
		}
		for _, v := range vs {
			if v.Version == d.Version && !v.State.Usable() {
				return fail(fmt.Errorf("%w: key %s version %d is %s", ErrVersionDisabled, d.Key, d.Version, v.State))
			}
		}
	}
	b, p, err := kr.placement(ctx, k, d.Version)
	if err != nil {
		return fail(err)
	}
	plain, err := b.Unwrap(ctx, p.Ref, p.Version, d.Wrapped)
	if err != nil {
		if errors.Is(err, ErrInvalidCiphertext) || errors.Is(err, ErrWrongVersion) {
			return fail(fmt.Errorf("key %s version %d: %w: %s", d.Key, d.Version, err, fixWrappedCorrupt))
		}
		return fail(fmt.Errorf("key %s version %d: %w", d.Key, d.Version, err))
	}
	if len(plain) != DEKSize {
		zero(plain)
		return fail(fmt.Errorf("%w: unwrapped DEK has %d bytes, want %d: %s", ErrInvalidCiphertext, len(plain), DEKSize, fixWrappedCorrupt))
	}
	return plain, d, nil
}

// fixWrappedCorrupt says what a wrapped DEK the backend refuses means, and
// what to do about it.
const fixWrappedCorrupt = "the stored wrapped DEK is corrupt (or its row was changed): restore the database from a backup"

// SealStream makes a new DEK under key and seals everything read from src
// into dst as one envelope carrying the DEK id. Memory use does not depend on
// the size of the data. It returns the DEK id.
func (kr *Keyring) SealStream(ctx context.Context, key string, dst io.Writer, src io.Reader, aad []byte) (string, error) {
	id, dek, err := kr.NewDEK(ctx, key, "")
	if err != nil {
		return "", err
	}
	defer zero(dek)
	return id, SealStreamWith(dst, src, id, dek, aad)
}

// SealStreamWith seals src into dst under an already opened DEK.
func SealStreamWith(dst io.Writer, src io.Reader, dekID string, dek, aad []byte) error {
	w, err := NewEnvelopeWriter(dst, dekID, dek, aad)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, src); err != nil {
		return err
	}
	return w.Close()
}

// OpenStream opens the envelope read from src into dst and returns the DEK
// id it was sealed under. Errors name the DEK id. Data is written to dst as
// each segment authenticates; on error dst may hold a prefix of the data, so
// write to a temporary file and keep it only on success.
func (kr *Keyring) OpenStream(ctx context.Context, dst io.Writer, src io.Reader, aad []byte) (string, error) {
	return kr.openStream(ctx, dst, src, aad, "")
}

// openStream is OpenStream; a non-empty key refuses (ErrWrongKey) an
// envelope whose DEK belongs to another root key, before anything is
// unwrapped.
func (kr *Keyring) openStream(ctx context.Context, dst io.Writer, src io.Reader, aad []byte, key string) (string, error) {
	h, err := ReadEnvelopeHeader(src)
	if err != nil {
		return "", err
	}
	dek, _, err := kr.openDEKOf(ctx, h.DEKID, key)
	if err != nil {
		return h.DEKID, err
	}
	defer zero(dek)
	r, err := NewEnvelopeReader(src, h, dek, aad)
	if err != nil {
		return h.DEKID, &DEKError{ID: h.DEKID, Op: "decrypt with", Err: err}
	}
	if _, err := io.Copy(dst, r); err != nil {
		return h.DEKID, &DEKError{ID: h.DEKID, Op: "decrypt with", Err: err}
	}
	return h.DEKID, nil
}

// Seal seals plaintext under a new DEK of key and returns the envelope. Each
// call creates and stores one DEK (a row in the store, re-wrapped by every
// rotation): for many small messages under one DEK, open it once with
// NewDEK/OpenDEK and use SealEnvelope, or keep data keys yourself with
// GenerateDataKey.
func (kr *Keyring) Seal(ctx context.Context, key string, plaintext, aad []byte) ([]byte, error) {
	id, dek, err := kr.NewDEK(ctx, key, "")
	if err != nil {
		return nil, err
	}
	defer zero(dek)
	return SealEnvelope(id, dek, plaintext, aad)
}

// AppendSeal is Seal appending the envelope to dst (see
// AppendSealEnvelope): with spare capacity for the plaintext plus
// SealedOverhead(len(plaintext), IDLen) it allocates no buffer for the
// data, so a caller sealing many messages can reuse one.
func (kr *Keyring) AppendSeal(ctx context.Context, dst []byte, key string, plaintext, aad []byte) ([]byte, error) {
	// Refused before a DEK is made and stored for nothing.
	if _, err := sealDst(dst, IDLen, plaintext); err != nil {
		return nil, err
	}
	id, dek, err := kr.NewDEK(ctx, key, "")
	if err != nil {
		return nil, err
	}
	defer zero(dek)
	return AppendSealEnvelope(dst, id, dek, plaintext, aad)
}

// Open opens an envelope made by Seal or SealStream.
func (kr *Keyring) Open(ctx context.Context, sealed, aad []byte) ([]byte, error) {
	return kr.AppendOpen(ctx, nil, sealed, aad)
}

// AppendOpen is Open appending the plaintext to dst (see
// AppendOpenEnvelope): with len(sealed) bytes of spare capacity it
// allocates no buffer for the data.
func (kr *Keyring) AppendOpen(ctx context.Context, dst, sealed, aad []byte) ([]byte, error) {
	// As OpenStream, but each segment is opened straight from sealed into
	// dst.
	src := bytes.NewReader(sealed)
	h, err := ReadEnvelopeHeader(src)
	if err != nil {
		return nil, err
	}
	dek, _, err := kr.openDEKOf(ctx, h.DEKID, "")
	if err != nil {
		return nil, err
	}
	defer zero(dek)
	out, err := openEnvelopeBody(dst, sealed[len(sealed)-src.Len():], h, dek, aad)
	if err != nil {
		return nil, &DEKError{ID: h.DEKID, Op: "decrypt with", Err: err}
	}
	return out, nil
}

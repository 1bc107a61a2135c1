package rekey

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
)

// AEAD encrypts and decrypts data under one root key: each Encrypt seals
// the data under a new DEK of that key (stored, and re-wrapped by every
// rotation), and Decrypt refuses a ciphertext made under another root key
// (ErrWrongKey). It is safe for concurrent use.
type AEAD struct {
	kr  *Keyring
	key string
}

// AEAD returns the AEAD bound to the root key called name. The key is not
// looked up until the first call: an unknown name makes every call fail
// with ErrKeyNotFound.
func (kr *Keyring) AEAD(name string) *AEAD { return &AEAD{kr: kr, key: name} }

// Key is the name of the root key the AEAD is bound to.
func (a *AEAD) Key() string { return a.key }

// Encrypt seals plaintext under a new DEK of the AEAD's key and returns the
// envelope; associatedData is authenticated but not stored (give the same
// to Decrypt). It returns ErrKeyNotFound for an unknown key and the
// backend's errors.
func (a *AEAD) Encrypt(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	return a.kr.Seal(ctx, a.key, plaintext, associatedData)
}

// Decrypt opens an envelope made by Encrypt (or Keyring.Seal) under the
// AEAD's key. A ciphertext of another root key is refused with an error
// matching ErrWrongKey before anything is unwrapped; a corrupt, truncated
// or reordered one with ErrInvalidCiphertext; wrong associated data too.
func (a *AEAD) Decrypt(ctx context.Context, ciphertext, associatedData []byte) ([]byte, error) {
	var out bytes.Buffer
	if _, err := a.kr.openStream(ctx, &out, bytes.NewReader(ciphertext), associatedData, a.key); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// DataKey is a data key made by GenerateDataKey: the plaintext to encrypt
// with (zero it after use), its wrapped form to store beside the data, and
// the root-key version that wrapped it.
type DataKey struct {
	Plaintext []byte
	Wrapped   []byte
	Version   int
}

// GenerateDataKey makes a random 32-byte data key and wraps it under the
// active version of the root key name, storing nothing: the application
// keeps Wrapped (and, for rotation in its own tables, Version) itself. It
// returns ErrKeyNotFound for an unknown key and ErrVersionDisabled while the
// active version is compromised.
func (kr *Keyring) GenerateDataKey(ctx context.Context, name string) (DataKey, error) {
	k, err := kr.store.GetKey(ctx, name)
	if err != nil {
		return DataKey{}, fmt.Errorf("key %s: %w", name, err)
	}
	vs, err := kr.store.ListVersions(ctx, name)
	if err != nil {
		return DataKey{}, fmt.Errorf("key %s: %w", name, err)
	}
	for _, v := range vs {
		if v.Version == k.ActiveVersion && v.State == VersionCompromised {
			return DataKey{}, fmt.Errorf("key %s: %w: the active version %d is compromised and being rotated away", name, ErrVersionDisabled, v.Version)
		}
	}
	kr.places.fill(k, vs)
	b, p, err := kr.placement(ctx, k, k.ActiveVersion)
	if err != nil {
		return DataKey{}, err
	}
	pt := make([]byte, DEKSize)
	if _, err := rand.Read(pt); err != nil {
		return DataKey{}, err
	}
	w, err := b.Wrap(ctx, p.Ref, p.Version, pt)
	if err != nil {
		clear(pt)
		return DataKey{}, fmt.Errorf("wrap data key under key %s version %d: %w", name, k.ActiveVersion, err)
	}
	return DataKey{Plaintext: pt, Wrapped: w, Version: k.ActiveVersion}, nil
}

// DecryptDataKey unwraps a data key made by GenerateDataKey under the root
// key name, whichever of its usable versions wrapped it (a rotation may
// have re-wrapped it since). It refuses bytes under a retired, destroyed or
// compromised version (ErrVersionDisabled) and returns ErrInvalidCiphertext
// for bytes no usable version opens (corrupt, or another key's). The
// caller should zero the plaintext.
func (kr *Keyring) DecryptDataKey(ctx context.Context, name string, wrapped []byte) ([]byte, error) {
	k, err := kr.store.GetKey(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", name, err)
	}
	vs, err := kr.store.ListVersions(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", name, err)
	}
	kr.places.fill(k, vs)
	// Newest first: after a rotation most data keys are on the active
	// version. A backend that names the version in the bytes (the local
	// one) refuses a wrong version without decrypting.
	slices.SortFunc(vs, func(a, b KeyVersion) int { return b.Version - a.Version })
	var disabled error
	for _, v := range vs {
		p := PlacementOf(k, v)
		b, err := kr.backend(p.Backend)
		if err != nil {
			return nil, fmt.Errorf("key %s version %d: %w", name, v.Version, err)
		}
		pt, err := b.Unwrap(ctx, p.Ref, p.Version, wrapped)
		switch {
		case err == nil && !v.State.Usable():
			clear(pt)
			disabled = fmt.Errorf("key %s: %w: version %d is %s", name, ErrVersionDisabled, v.Version, v.State)
		case err == nil:
			return pt, nil
		case errors.Is(err, ErrVersionDisabled):
			disabled = fmt.Errorf("key %s version %d: %w", name, v.Version, err)
		case errors.Is(err, ErrWrongVersion), errors.Is(err, ErrInvalidCiphertext), errors.Is(err, ErrVersionNotFound):
		default:
			return nil, fmt.Errorf("unwrap data key under key %s version %d: %w", name, v.Version, err)
		}
	}
	if disabled != nil {
		return nil, disabled
	}
	return nil, fmt.Errorf("key %s: %w: no version of the key opens these bytes (corrupt, or wrapped under another key)", name, ErrInvalidCiphertext)
}

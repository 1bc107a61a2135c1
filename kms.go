package rekey

import "context"

// KMS is a backend holding root keys: a local keyring, a cloud KMS, an HSM.
// A root key is addressed by the reference CreateKey returned; versions are
// numbered 1, 2, 3, … and never reused. Implementations are safe for
// concurrent use. Errors never carry key material.
//
// Every method may return an *UnreachableError for a transient failure
// (worth retrying) and ErrInvalidArgument for bad input.
type KMS interface {
	// CreateKey creates a root key named name with version 1 and returns the
	// backend's reference for it. It returns ErrKeyExists if the backend
	// already holds a key by that name.
	CreateKey(ctx context.Context, name string) (ref string, err error)

	// CurrentVersion returns the newest version the backend has for ref. It
	// returns ErrKeyNotFound for an unknown ref.
	CurrentVersion(ctx context.Context, ref string) (int, error)

	// RotateKey creates a new version of ref and returns its number, which
	// is exactly CurrentVersion+1 as seen before the call. It returns
	// ErrKeyNotFound for an unknown ref and ErrUsageLimit where the backend
	// limits rotations.
	RotateKey(ctx context.Context, ref string) (int, error)

	// Wrap encrypts plaintext under the given version of ref. It returns
	// ErrKeyNotFound, ErrVersionNotFound, ErrVersionDisabled (the version
	// may not encrypt) or ErrUsageLimit.
	Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error)

	// Unwrap decrypts wrapped, which must have been wrapped under version of
	// ref. It returns ErrInvalidCiphertext for bytes that do not
	// authenticate (corrupt, truncated, another key), ErrWrongVersion where
	// the bytes name another version, ErrVersionNotFound, and
	// ErrVersionDisabled for a retired, destroyed or compromised version.
	// The caller owns (and should zero) the returned plaintext.
	Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error)
}

// Rewrapper is a KMS that re-wraps on the server side: the plaintext DEK
// never leaves the backend.
type Rewrapper interface {
	// Rewrap turns wrapped (under fromVersion) into a wrap under toVersion.
	// Errors are those of Unwrap and Wrap.
	Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error)
}

// RewrapItem is one DEK handed to BatchRewrapper.
type RewrapItem struct {
	Version int
	Wrapped []byte
}

// RewrapResult is the outcome for one RewrapItem: Wrapped on success, Err
// (one of Unwrap's errors) otherwise.
type RewrapResult struct {
	Wrapped []byte
	Err     error
}

// BatchRewrapper is a KMS that re-wraps many DEKs in one call.
type BatchRewrapper interface {
	// RewrapBatch re-wraps every item under toVersion and returns one result
	// per item, in order. The error is for the call as a whole (transport,
	// unknown key); per-item failures go in the results.
	RewrapBatch(ctx context.Context, ref string, toVersion int, items []RewrapItem) ([]RewrapResult, error)
}

// VersionRetirer is a KMS that can disable and destroy single versions.
type VersionRetirer interface {
	// RetireVersion makes version of ref unusable for wrap and unwrap. It is
	// idempotent. It returns ErrKeyNotFound or ErrVersionNotFound.
	RetireVersion(ctx context.Context, ref string, version int) error
	// DestroyVersion destroys the key material of a retired version (or
	// schedules its destruction). It is idempotent. It returns
	// ErrKeyNotFound or ErrVersionNotFound.
	DestroyVersion(ctx context.Context, ref string, version int) error
}

// Pinger is a KMS that can report whether it is reachable (for /readyz).
type Pinger interface {
	// Ping returns nil when the backend answers, else an *UnreachableError.
	Ping(ctx context.Context) error
}

// MACer is a KMS that computes a MAC with a key it holds, so that audit
// checkpoints cannot be forged by someone with access to the store alone.
type MACer interface {
	// MAC returns a MAC over data with a backend-held key derived for
	// purpose. Equal inputs give equal outputs.
	MAC(ctx context.Context, purpose string, data []byte) ([]byte, error)
}

// KeyFinder is a KMS that can find a root key by the name it was created
// with. A move to another backend (rekey key move) uses it to adopt the key
// an interrupted attempt created there, instead of creating a second one.
type KeyFinder interface {
	// FindKey returns the reference of the key CreateKey(name) made. It
	// returns ErrKeyNotFound when the backend has no key by that name.
	FindKey(ctx context.Context, name string) (ref string, err error)
}

// KeyDeleter is a KMS that can delete a whole root key, every version of
// it, or schedule that. A key moved to another backend (rekey key move)
// leaves its newest version on the old backend, enabled: no backend lets a
// key's newest version be disabled on its own, and nothing rotates the key
// there again. When the key's policy sets destroy_after, rekey deletes the
// key there once that version is due for destruction and every older
// version there is destroyed.
type KeyDeleter interface {
	// DeleteKey deletes ref and the key material of all its versions, or
	// schedules their deletion where the backend deletes after a waiting
	// period. It is idempotent: a key already deleted, pending deletion or
	// unknown to the backend is nil. A backend whose own settings forbid
	// the deletion returns an error matching ErrUnsupported that says which
	// setting to change.
	DeleteKey(ctx context.Context, ref string) error
}

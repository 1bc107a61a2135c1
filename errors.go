package rekey

import (
	"errors"
	"fmt"
)

// Sentinel errors. Implementations wrap them with context; callers match
// with errors.Is.
var (
	// ErrKeyNotFound means no root key of that name exists (in the store or
	// in the backend).
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyExists means a root key of that name already exists.
	ErrKeyExists = errors.New("key already exists")
	// ErrVersionNotFound means the key has no such version.
	ErrVersionNotFound = errors.New("key version not found")
	// ErrDEKNotFound means no DEK has that id.
	ErrDEKNotFound = errors.New("dek not found")
	// ErrRotationNotFound means no (open) rotation matched.
	ErrRotationNotFound = errors.New("rotation not found")
	// ErrCheckpointNotFound means the audit trail has no checkpoint (yet).
	ErrCheckpointNotFound = errors.New("audit checkpoint not found")
	// ErrConflict means a write broke a uniqueness rule (a duplicate id, a
	// second open rotation for one key, a version number used twice).
	ErrConflict = errors.New("conflict")
	// ErrStale means a guarded write found the row changed since it was read
	// (a compare-and-swap lost, or a state transition whose expected state no
	// longer holds). Nothing was written.
	ErrStale = errors.New("stale write: the row changed since it was read")
	// ErrFenced means the caller's lease is no longer the current one: another
	// worker took over. Nothing was written.
	ErrFenced = errors.New("lease lost: another worker holds this key")
	// ErrLeaseHeld means another worker holds an unexpired lease on the key.
	ErrLeaseHeld = errors.New("lease held by another worker")
	// ErrLeaseNotFound means nobody holds a lease on the key: it was never
	// leased, or its last lease was released or broken.
	ErrLeaseNotFound = errors.New("lease not found")
	// ErrVersionNotActive means a new DEK was to be stored under a version
	// that is no longer the active one (a rotation committed meanwhile).
	// Re-read the key and wrap again.
	ErrVersionNotActive = errors.New("key version is not the active version")
	// ErrVersionDisabled means the backend refuses to use the version
	// (retired, destroyed or compromised).
	ErrVersionDisabled = errors.New("key version is disabled")
	// ErrInvalidCiphertext means wrapped or sealed bytes failed to parse or
	// authenticate: truncated, corrupted, or made under another key.
	ErrInvalidCiphertext = errors.New("invalid ciphertext")
	// ErrWrongKey means a ciphertext or wrapped DEK belongs to another root
	// key than the one asked to open it (an AEAD bound to key B given key
	// A's ciphertext). Nothing is decrypted.
	ErrWrongKey = errors.New("ciphertext belongs to another root key")
	// ErrWrongVersion means wrapped bytes name a different key version than
	// the one asked for.
	ErrWrongVersion = errors.New("ciphertext was wrapped under another key version")
	// ErrUsageLimit means a key version has done as many encryptions as is
	// safe; rotate the key.
	ErrUsageLimit = errors.New("key version reached its safe encryption limit: rotate the key")
	// ErrUnsupported means the backend does not offer the operation.
	ErrUnsupported = errors.New("operation not supported by this backend")
	// ErrInvalidArgument means the caller passed bad input; nothing changed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrThrottled means the backend refused a request for its rate (AWS
	// ThrottlingException, HTTP 429). Backends return it inside an
	// *UnreachableError, so it is transient: retry later, more slowly. The
	// middleware (kms/kmsmw) lowers its request rate when it sees it.
	ErrThrottled = errors.New("throttled: request rate above the backend's quota")
)

// UnreachableError reports that a backend or store could not be reached or
// answered with a transient failure. The operation may be retried.
type UnreachableError struct {
	Service string // "kms:aws", "store:postgres", ...
	Err     error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("%s unreachable: %v", e.Service, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// IsTransient reports whether err is worth retrying: an UnreachableError
// anywhere in its chain.
func IsTransient(err error) bool {
	var u *UnreachableError
	return errors.As(err, &u)
}

// VersionInUseError reports that a version cannot be retired because DEKs
// still reference it.
type VersionInUseError struct {
	Key     string
	Version int
	DEKs    int64
}

func (e *VersionInUseError) Error() string {
	return fmt.Sprintf("key %q version %d is still referenced by %d DEK(s): re-wrap them first (rekey run, or rekey rotate %s)",
		e.Key, e.Version, e.DEKs, e.Key)
}

// Is makes errors.Is(err, ErrStale) false and lets callers match the type
// with errors.As.
func (e *VersionInUseError) Is(target error) bool { return false }

// DEKError names the DEK an operation failed on. Its message never holds
// key material.
type DEKError struct {
	ID  string
	Op  string // "unwrap", "open", ...
	Err error
}

func (e *DEKError) Error() string { return fmt.Sprintf("%s dek %s: %v", e.Op, e.ID, e.Err) }
func (e *DEKError) Unwrap() error { return e.Err }

// invalidArgError is a plain message that matches ErrInvalidArgument, so
// that callers can put it under a field path without "invalid argument: ".
type invalidArgError struct{ msg string }

func (e *invalidArgError) Error() string        { return e.msg }
func (e *invalidArgError) Is(target error) bool { return target == ErrInvalidArgument }

// Invalidf returns an error with the formatted message that matches
// ErrInvalidArgument under errors.Is.
func Invalidf(format string, args ...any) error {
	return &invalidArgError{msg: fmt.Sprintf(format, args...)}
}

package rekey

import (
	"context"
	"time"
)

// DEKQuery selects DEKs of one key in id order, one page at a time.
// Paging is by cursor (After), never by offset, so that a page costs the same
// at the millionth DEK as at the first.
type DEKQuery struct {
	Key        string // required
	Version    int    // if > 0, only DEKs on this version
	NotVersion int    // if > 0, only DEKs on any other version
	After      string // if set, only ids greater than this one
	Limit      int    // at most this many; <= 0 means 1000
	// Brief lets the store leave Label, CreatedAt and UpdatedAt out of
	// the DEKs it returns (a re-wrap needs only ID, Key, Version and
	// Wrapped); a store may ignore it.
	Brief bool
}

// DEKSwap is a compare-and-swap of one DEK's wrapped value: it applies only
// if the row still holds OldWrapped.
type DEKSwap struct {
	ID         string
	OldWrapped []byte
	NewWrapped []byte
	NewVersion int
	// OldVersion is the version the DEK was read under, or 0 when not
	// known: a hint a store may use to find the row and move its counters
	// faster (the engine sets it). It never decides the swap: a swap
	// applies when the row holds OldWrapped, whatever version the row is
	// on and whatever OldVersion says.
	OldVersion int
}

// DEKSource is the narrow view of DEK storage the rotation engine needs. The
// Store implements it for its own DEK table; an adapter can implement it for
// DEKs kept in an application's own table.
type DEKSource interface {
	// ListDEKs returns up to q.Limit DEKs matching q in ascending id order.
	// It returns ErrInvalidArgument when q.Key is empty.
	ListDEKs(ctx context.Context, q DEKQuery) ([]DEK, error)

	// SwapDEKs applies each swap whose row still holds OldWrapped, in one
	// transaction, provided fence is still the current lease of the key
	// (else ErrFenced and nothing is written). It returns the ids of swaps
	// that lost (the row changed or is gone); those rows are unchanged.
	SwapDEKs(ctx context.Context, swaps []DEKSwap, fence Lease) (lost []string, err error)

	// CountDEKs returns how many DEKs of key reference each version
	// (versions with none are absent).
	CountDEKs(ctx context.Context, key string) (map[int]int64, error)
}

// DEKRowCounter is a DEKSource whose CountDEKs may answer from counters
// kept beside the rows (the SQLite and PostgreSQL stores keep one per key
// and version): CountDEKRows counts the rows of key on version themselves.
// The engine calls it right before a step at the backend it cannot take
// back (retiring, disabling or destroying a version), which it takes only
// on a count of 0: a counter set wrong (by hand, by a bug) may make a
// status wrong, never a DEK undecryptable. A DEKSource whose CountDEKs
// counts the rows need not implement it.
type DEKRowCounter interface {
	CountDEKRows(ctx context.Context, key string, version int) (int64, error)
}

// ConcurrentWriter is a Store whose transactions writing different rows
// run at the same time (PostgreSQL's row locks, one transaction per
// connection), so that re-wrapping several ranges of a shared re-wrap at
// once in one process goes faster: ConcurrentWrites says how many. A store
// without it takes one writer at a time (SQLite), and the engine one range
// at a time.
type ConcurrentWriter interface {
	ConcurrentWrites() int
}

// BatchCommitter writes a re-wrap batch and the rotation's checkpoint in
// one transaction, so that a crash can never leave the checkpoint (cursor,
// counts) behind the DEKs it describes. Every Store implements it; a
// DEKSource in an application's own database cannot, and the engine then
// writes the swaps (SwapDEKs) and the checkpoint (AdvanceRotation) one
// after the other.
type BatchCommitter interface {
	// CommitBatch applies each swap whose row still holds OldWrapped and
	// then checkpoint (exactly as AdvanceRotation would apply it), in one
	// transaction fenced by fence. The swaps follow the rules of SwapDEKs:
	// only DEKs of fence.Key (others lose), and a NewVersion the key lacks
	// is ErrVersionNotFound. Before applying checkpoint it adds the number
	// of swaps applied to checkpoint.Rotation.Done and to the DEKs of each
	// of its events. It returns the ids of swaps that lost; those rows are
	// unchanged. On any error nothing is written, swaps included: ErrFenced
	// (fence is not the current lease of the rotation's key), ErrStale (the
	// rotation left checkpoint.FromState, or an activation's guards
	// failed), ErrRotationNotFound, ErrVersionNotFound, ErrConflict and
	// ErrInvalidArgument as for SwapDEKs and AdvanceRotation.
	CommitBatch(ctx context.Context, swaps []DEKSwap, fence Lease, checkpoint RotationUpdate) (lost []string, err error)
}

// Activation makes a version active at commit: the key's active version
// and expiry change, the new version becomes active with ExpiresAt as its
// own expiry, the previous active version becomes pending_retirement
// (unless it is compromised, which it stays) and keeps its expiry.
type Activation struct {
	Version     int
	ExpiresAt   time.Time
	Previous    int
	RetireAfter time.Time
}

// RotationUpdate is one guarded step of a rotation: it applies only if the
// rotation is still in FromState and the lease is current, and writes
// everything it carries — the rotation's new fields, an optional new version
// row, an optional activation, and the audit events — in one transaction.
type RotationUpdate struct {
	Rotation   Rotation      // new values; Rotation.ID selects the row
	FromState  RotationState // guard: the state the row must still be in
	NewVersion *KeyVersion   // insert this version row (state created)
	Activate   *Activation   // commit the rotation
	Events     []AuditEvent
}

// VersionChange is a guarded change of one version's state.
type VersionChange struct {
	Key           string
	Version       int
	From          []VersionState // guard: the current state must be one of these
	To            VersionState
	RequireUnused bool // refuse with *VersionInUseError while any DEK references the version
	At            time.Time
}

// RotationQuery selects rotations, newest first.
type RotationQuery struct {
	Key      string    // if set, only this key
	OpenOnly bool      // only rotations not done
	Since    time.Time // if set, only rotations started at or after
	Limit    int       // <= 0 means 100
}

// AuditQuery selects audit events in seq order.
type AuditQuery struct {
	Key      string    // if set, only events of this key
	Since    time.Time // if set, only events at or after
	AfterSeq int64     // if > 0, only events with a greater seq
	Limit    int       // <= 0 means 1000
}

// Store holds keys, versions, DEKs, rotations, leases and the audit trail.
// Implementations are safe for concurrent use by many goroutines and, where
// the database allows, many processes.
//
// Methods that take audit events append them, with their hash chain, in the
// same transaction as the change they record.
//
// Retry contract: every method may return an *UnreachableError (IsTransient
// reports true) when the database cannot be reached or answers with a
// transient failure (a lock held past the busy timeout, a lost connection),
// and only when nothing was written: the call can be repeated as it was,
// and a store-retry decorator does so. A write whose outcome is unknown (the
// connection dropped or the disk failed during COMMIT) returns another
// error, never an *UnreachableError: read the state again before writing.
//
// Every Store also commits a re-wrap batch and its checkpoint in one
// transaction (BatchCommitter), and shares a rotation's re-wrap in id
// ranges among workers (RangeSharer).
type Store interface {
	DEKSource
	BatchCommitter
	RangeSharer
	WrapCounter

	// CreateKey stores a new key and its first version, which must be
	// active; a zero v.ExpiresAt is stored as k.ExpiresAt. It returns
	// ErrKeyExists if the name is taken.
	CreateKey(ctx context.Context, k Key, v KeyVersion, events ...AuditEvent) error
	// GetKey returns the key called name, or ErrKeyNotFound.
	GetKey(ctx context.Context, name string) (Key, error)
	// ListKeys returns every key, ordered by name.
	ListKeys(ctx context.Context) ([]Key, error)
	// UpdateKeyPolicy sets a key's policy and expiry, and in the same
	// transaction the ExpiresAt of its active version (other versions keep
	// theirs). It returns ErrKeyNotFound.
	UpdateKeyPolicy(ctx context.Context, name string, p Policy, expiresAt time.Time, events ...AuditEvent) error
	// ListVersions returns the versions of key in ascending order, their
	// times (ExpiresAt included) normalised as NormalizeTime does, or
	// ErrKeyNotFound.
	ListVersions(ctx context.Context, key string) ([]KeyVersion, error)
	// ChangeVersionState applies c if the version's state is one of c.From
	// (else ErrStale), and, with c.RequireUnused, only when no DEK references
	// the version, counted in the same transaction (else *VersionInUseError).
	// A non-nil fence must be the key's current lease (else ErrFenced). It
	// returns ErrVersionNotFound.
	ChangeVersionState(ctx context.Context, c VersionChange, fence *Lease, events ...AuditEvent) error

	// InsertDEKs stores new DEKs, all or none. Each DEK's version must be
	// its key's active version at the time of the write (else
	// ErrVersionNotActive: re-read the key and wrap again), and that
	// version must not be compromised (else ErrVersionDisabled: an
	// emergency rotation is replacing it). It returns ErrConflict for a
	// duplicate id and ErrKeyNotFound for an unknown key.
	InsertDEKs(ctx context.Context, deks []DEK) error
	// GetDEK returns the DEK with that id, or ErrDEKNotFound.
	GetDEK(ctx context.Context, id string) (DEK, error)

	// AcquireLease gives owner the lease on key for ttl from now, with a new
	// epoch, if nobody else holds an unexpired one (else ErrLeaseHeld). An
	// owner re-acquiring its own unexpired lease keeps its epoch.
	AcquireLease(ctx context.Context, key, owner string, ttl time.Duration, now time.Time) (Lease, error)
	// RenewLease extends l by ttl from now if it is still current (else
	// ErrFenced).
	RenewLease(ctx context.Context, l Lease, ttl time.Duration, now time.Time) (Lease, error)
	// ReleaseLease gives l up; releasing a lease that is no longer current
	// is a no-op.
	ReleaseLease(ctx context.Context, l Lease) error
	// GetLease returns the current lease on key: the last one acquired and
	// neither released nor broken, whether or not it has expired (compare
	// ExpiresAt with the time yourself). It returns ErrLeaseNotFound when
	// there is none.
	GetLease(ctx context.Context, key string) (Lease, error)
	// BreakLease ends l, a lease held by another worker, before its expiry.
	// It is a compare-and-swap: it applies only if l is still exactly the
	// current lease of l.Key — same owner, epoch and expiry, not released
	// (a renewal since l was read proves that its holder lives) — and
	// otherwise returns ErrStale and changes nothing. now is recorded as
	// the lease's end. After a break the key is free: the next
	// AcquireLease, by any owner (l's included), gets a higher epoch, so
	// every write fenced by l fails with ErrFenced from then on. Use it to
	// take over from a worker known to be dead; breaking a live worker's
	// lease is still safe (its writes are fenced) but stops its work.
	BreakLease(ctx context.Context, l Lease, now time.Time) error

	// CreateRotation stores a new rotation in state claimed. It returns
	// ErrConflict if the key already has an open rotation, ErrKeyNotFound,
	// and ErrFenced if fence is not the key's current lease.
	CreateRotation(ctx context.Context, r Rotation, fence Lease, events ...AuditEvent) error
	// AdvanceRotation applies u (see RotationUpdate). It returns ErrStale if
	// the rotation left u.FromState, ErrFenced if fence is not current,
	// ErrConflict if u.NewVersion's number exists already.
	AdvanceRotation(ctx context.Context, u RotationUpdate, fence Lease) error
	// GetRotation returns the rotation with that id, or ErrRotationNotFound.
	GetRotation(ctx context.Context, id string) (Rotation, error)
	// OpenRotation returns key's open rotation, or ErrRotationNotFound.
	OpenRotation(ctx context.Context, key string) (Rotation, error)
	// ListRotations returns rotations matching q, newest first.
	ListRotations(ctx context.Context, q RotationQuery) ([]Rotation, error)

	// AppendAudit appends events to the audit trail on their own (for
	// events that record no state change, such as rotation.failed).
	AppendAudit(ctx context.Context, events ...AuditEvent) error
	// ListAudit returns audit events matching q in seq order.
	ListAudit(ctx context.Context, q AuditQuery) ([]AuditEvent, error)

	// AppendAuditCheckpoint stores cp, a MAC'd checkpoint of the audit
	// chain (see AuditCheckpoint). The trail must hold an event with seq
	// cp.Seq and hash cp.Hash, and cp must carry a MAC (else
	// ErrInvalidArgument); a zero CreatedAt is set to now. It returns
	// ErrConflict if a checkpoint with that seq exists. Checkpoints, like
	// events, are never changed or deleted.
	AppendAuditCheckpoint(ctx context.Context, cp AuditCheckpoint) error
	// ListAuditCheckpoints returns up to limit checkpoints with a seq
	// greater than afterSeq, in ascending seq order; limit <= 0 means 1000.
	ListAuditCheckpoints(ctx context.Context, afterSeq int64, limit int) ([]AuditCheckpoint, error)
	// LastAuditCheckpoint returns the checkpoint with the greatest seq, or
	// ErrCheckpointNotFound when there is none.
	LastAuditCheckpoint(ctx context.Context) (AuditCheckpoint, error)

	// Ping returns nil when the database answers.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

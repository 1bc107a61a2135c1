package rekey

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// RewrapRange is one part of a rotation's re-wrap when several workers
// share it: the DEKs of the rotation's key with ids in (From, To] (To ""
// means no upper bound), worked by whoever holds the range's lease
// (RangeLeaseKey). Its progress is checkpointed like a rotation's: Cursor
// is the last id written, Done and Failed count DEKs re-wrapped and DEKs
// that could not be unwrapped, and Finished is set by the batch that found
// nothing left.
type RewrapRange struct {
	RotationID string `json:"rotation_id"`
	Key        string `json:"key"`
	Index      int    `json:"index"` // 0, 1, …: ranges are ordered by id
	From       string `json:"from,omitempty"`
	To         string `json:"to,omitempty"`
	Cursor     string `json:"cursor,omitempty"`
	Done       int64  `json:"deks_done"`
	Failed     int64  `json:"deks_failed"`
	Finished   bool   `json:"finished"`
}

// LeaseKey returns the key the range's lease is held under.
func (r RewrapRange) LeaseKey() string { return RangeLeaseKey(r.RotationID, r.Index) }

// rangeLeasePrefix starts every range lease key. It cannot start a key
// name (ValidateKeyName), so range leases never collide with key leases.
const rangeLeasePrefix = "rewrap/"

// RangeLeaseKey is the lease key of range index of rotation rotationID
// ("rewrap/ROTATION/INDEX"). Range leases live beside key leases
// (AcquireLease, RenewLease, ReleaseLease, GetLease, BreakLease) and follow
// their rules: epochs only go up, an expired lease goes to the next owner
// with a higher epoch, and a write fenced by a lease that moved on fails.
func RangeLeaseKey(rotationID string, index int) string {
	return rangeLeasePrefix + rotationID + "/" + strconv.Itoa(index)
}

// ParseRangeLeaseKey returns the rotation and index of a range lease key,
// and false for any other lease key.
func ParseRangeLeaseKey(leaseKey string) (rotationID string, index int, ok bool) {
	rest, ok := strings.CutPrefix(leaseKey, rangeLeasePrefix)
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(rest[i+1:])
	if err != nil || n < 0 || strconv.Itoa(n) != rest[i+1:] {
		return "", 0, false
	}
	return rest[:i], n, true
}

// RangeCheckpoint is the progress of one range batch, written with the
// batch's swaps by CommitRangeBatch.
type RangeCheckpoint struct {
	RotationID string
	Index      int
	Cursor     string   // the range's new cursor (the batch's last id)
	Done       int64    // DEKs found already re-wrapped (not swapped by this call)
	FailedIDs  []string // DEKs of this batch that could not be unwrapped
	Finished   bool     // nothing is left in the range
	Events     []AuditEvent
	// Now is the writer's clock: a range lease that expired (ExpiresAt
	// not after Now) fences its holder even when nobody took it over
	// yet, so a worker paused past its lease writes nothing on waking.
	Now time.Time
}

// RangeSharer splits a rotation's re-wrap into id ranges that several
// workers re-wrap at once, each range under its own lease. Every Store
// implements it.
//
// The rotation's own lease holder splits the work (SplitRewrap) once the
// rotation is rewrapping; any worker then claims a free range by acquiring
// its lease (AcquireLease on RewrapRange.LeaseKey), writes its batches with
// CommitRangeBatch fenced by that lease, and the rotation's holder moves on
// (commit) once every range is finished.
type RangeSharer interface {
	// DEKBounds returns the id of every every-th DEK of key not on
	// notVersion, in id order (the 1st is the every-th id): the upper
	// bounds of ranges of about every DEKs each. every must be positive.
	DEKBounds(ctx context.Context, key string, notVersion int, every int) ([]string, error)

	// SplitRewrap stores the ranges of rotation rotationID: len(bounds)+1
	// ranges, range i holding ids in (bounds[i-1], bounds[i]] and the last
	// one every id above the last bound. bounds must be strictly
	// ascending. It is fenced by the lease of the rotation's key, applies
	// only while the rotation is rewrapping (else ErrStale), and returns
	// ErrConflict if the rotation was split already (nothing written).
	// events are appended in the same transaction.
	SplitRewrap(ctx context.Context, rotationID string, bounds []string, fence Lease, events ...AuditEvent) error

	// ListRewrapRanges returns the ranges of a rotation in index order
	// (none when it was not split).
	ListRewrapRanges(ctx context.Context, rotationID string) ([]RewrapRange, error)

	// CommitRangeBatch applies swaps (DEKs of the rotation's key with ids
	// inside the range; any other swap loses) and cp in one transaction,
	// fenced by fence, which must be the current lease of the range
	// (RangeLeaseKey(cp.RotationID, cp.Index)) and unexpired at cp.Now
	// (the stored expiry after cp.Now); else ErrFenced and nothing is
	// written. The range's cursor becomes cp.Cursor, its Done grows by
	// cp.Done plus the swaps applied, its Failed by len(cp.FailedIDs), and
	// Finished is set when cp.Finished; the rotation's Done and Failed
	// grow by the same amounts (its FailedDEKs take the failed ids while
	// it holds fewer than 100) and its UpdatedAt is set. The swaps applied
	// are added to the DEKs of each event. It returns ErrStale when the
	// rotation is no longer rewrapping or the range is finished,
	// ErrRotationNotFound, and the ids of swaps that lost.
	CommitRangeBatch(ctx context.Context, swaps []DEKSwap, fence Lease, cp RangeCheckpoint) (lost []string, err error)
}

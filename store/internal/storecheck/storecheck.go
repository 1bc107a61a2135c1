// Package storecheck holds the input checks and defaults that every
// rekey.Store of this module applies before it looks at its data, so that
// the stores refuse the same calls with the same errors and fill in the
// same defaults (storetest checks it).
//
// Every function is pure: it reads only its arguments (a time it needs is
// passed in as now), changes none of the caller's slices and returns errors
// that wrap rekey.ErrInvalidArgument (or the error of
// rekey.ValidateKeyName). Times it sets or returns are in the form
// rekey.NormalizeTime gives.
package storecheck

import (
	"fmt"
	"slices"
	"time"

	"github.com/rekeyhq/rekey"
)

// ---- list limits ----

// Default limits of the list calls when the query asks for none (a limit
// of zero or less).
const (
	// DefaultListLimit is the default limit of ListAudit, ListDEKs and
	// ListAuditCheckpoints.
	DefaultListLimit = 1000
	// DefaultRotationLimit is the default limit of ListRotations.
	DefaultRotationLimit = 100
)

// ListLimit returns limit, or DefaultListLimit when limit is zero or less.
func ListLimit(limit int) int {
	if limit <= 0 {
		return DefaultListLimit
	}
	return limit
}

// RotationLimit returns limit, or DefaultRotationLimit when limit is zero
// or less.
func RotationLimit(limit int) int {
	if limit <= 0 {
		return DefaultRotationLimit
	}
	return limit
}

// ---- keys and versions ----

// PrepareNewKey checks a new key and its first version (CreateKey) and fills
// in their defaults: the version's Key is the key's name, its State is
// active, the key's ActiveVersion is the version; a zero key CreatedAt is
// now, a zero UpdatedAt the key's CreatedAt, a zero version CreatedAt the
// key's CreatedAt, a zero ActivatedAt the version's CreatedAt and a zero
// version ExpiresAt the key's ExpiresAt (the period in force). The first
// version must be active, positive and the key's active version.
func PrepareNewKey(k rekey.Key, v rekey.KeyVersion, now time.Time) (rekey.Key, rekey.KeyVersion, error) {
	if err := rekey.ValidateKeyName(k.Name); err != nil {
		return k, v, err
	}
	if v.Key == "" {
		v.Key = k.Name
	}
	if v.State == "" {
		v.State = rekey.VersionActive
	}
	if k.ActiveVersion == 0 {
		k.ActiveVersion = v.Version
	}
	switch {
	case v.Key != k.Name:
		return k, v, fmt.Errorf("%w: version names key %q, not %q", rekey.ErrInvalidArgument, v.Key, k.Name)
	case v.Version <= 0:
		return k, v, fmt.Errorf("%w: version must be positive, got %d", rekey.ErrInvalidArgument, v.Version)
	case k.ActiveVersion != v.Version:
		return k, v, fmt.Errorf("%w: active version %d is not the first version %d", rekey.ErrInvalidArgument, k.ActiveVersion, v.Version)
	case v.State != rekey.VersionActive:
		return k, v, fmt.Errorf("%w: the first version must be active, not %q", rekey.ErrInvalidArgument, v.State)
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = now
	}
	if k.UpdatedAt.IsZero() {
		k.UpdatedAt = k.CreatedAt
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = k.CreatedAt
	}
	if v.ActivatedAt.IsZero() {
		v.ActivatedAt = v.CreatedAt
	}
	if v.ExpiresAt.IsZero() {
		v.ExpiresAt = k.ExpiresAt
	}
	return NormKey(k), NormVersion(v), nil
}

// PrepareNewVersion checks a version that a rotation adds to key
// (RotationUpdate.NewVersion) and fills in its defaults: an empty Key is
// key, an empty State is created, a zero CreatedAt is now. The version
// must be of key, positive, in state created and without an ExpiresAt (a
// version gets one when it becomes active).
func PrepareNewVersion(v rekey.KeyVersion, key string, now time.Time) (rekey.KeyVersion, error) {
	if v.Key == "" {
		v.Key = key
	}
	if v.State == "" {
		v.State = rekey.VersionCreated
	}
	switch {
	case v.Key != key:
		return v, fmt.Errorf("%w: new version names key %q, not %q", rekey.ErrInvalidArgument, v.Key, key)
	case v.Version <= 0:
		return v, fmt.Errorf("%w: version must be positive, got %d", rekey.ErrInvalidArgument, v.Version)
	case v.State != rekey.VersionCreated:
		return v, fmt.Errorf("%w: a new version is created, not %q", rekey.ErrInvalidArgument, v.State)
	case !v.ExpiresAt.IsZero():
		return v, fmt.Errorf("%w: new version %d has an expiry: a version gets one when it becomes active", rekey.ErrInvalidArgument, v.Version)
	case v.BackendVersion < 0:
		return v, fmt.Errorf("%w: new version %d: backend version must not be negative, got %d", rekey.ErrInvalidArgument, v.Version, v.BackendVersion)
	case v.Backend == "" && (v.BackendRef != "" || v.BackendVersion != 0):
		return v, fmt.Errorf("%w: new version %d has a backend reference or version but no backend", rekey.ErrInvalidArgument, v.Version)
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now
	}
	return NormVersion(v), nil
}

// ValidateVersionChange checks a ChangeVersionState call: it names a key,
// has a From guard and moves to a known state other than active (a version
// becomes active only by committing a rotation).
func ValidateVersionChange(c rekey.VersionChange) error {
	switch {
	case c.Key == "":
		return fmt.Errorf("%w: version change names no key", rekey.ErrInvalidArgument)
	case len(c.From) == 0:
		return fmt.Errorf("%w: version change has no From guard", rekey.ErrInvalidArgument)
	case !c.To.Valid():
		return fmt.Errorf("%w: unknown version state %q", rekey.ErrInvalidArgument, c.To)
	case c.To == rekey.VersionActive:
		return fmt.Errorf("%w: a version becomes active only by committing a rotation", rekey.ErrInvalidArgument)
	}
	return nil
}

// NormKey returns k with its times normalised (rekey.NormalizeTime).
func NormKey(k rekey.Key) rekey.Key {
	k.ExpiresAt = rekey.NormalizeTime(k.ExpiresAt)
	k.CreatedAt = rekey.NormalizeTime(k.CreatedAt)
	k.UpdatedAt = rekey.NormalizeTime(k.UpdatedAt)
	return k
}

// NormVersion returns v with its times normalised (rekey.NormalizeTime).
func NormVersion(v rekey.KeyVersion) rekey.KeyVersion {
	v.CreatedAt = rekey.NormalizeTime(v.CreatedAt)
	v.ActivatedAt = rekey.NormalizeTime(v.ActivatedAt)
	v.ExpiresAt = rekey.NormalizeTime(v.ExpiresAt)
	v.RetireAfter = rekey.NormalizeTime(v.RetireAfter)
	v.RetiredAt = rekey.NormalizeTime(v.RetiredAt)
	v.DestroyedAt = rekey.NormalizeTime(v.DestroyedAt)
	return v
}

// ---- DEKs ----

// PrepareNewDEK checks a DEK to insert (InsertDEKs) and fills in its
// defaults: a zero CreatedAt is now, a zero UpdatedAt its CreatedAt. The
// DEK must have an id, a key and wrapped bytes. The result shares Wrapped
// with d: a store that keeps it copies it.
func PrepareNewDEK(d rekey.DEK, now time.Time) (rekey.DEK, error) {
	switch {
	case d.ID == "":
		return d, fmt.Errorf("%w: dek has no id", rekey.ErrInvalidArgument)
	case d.Key == "":
		return d, fmt.Errorf("%w: dek %s names no key", rekey.ErrInvalidArgument, d.ID)
	case len(d.Wrapped) == 0:
		return d, fmt.Errorf("%w: dek %s has no wrapped bytes", rekey.ErrInvalidArgument, d.ID)
	}
	if d.CreatedAt.IsZero() {
		d.CreatedAt = now
	}
	if d.UpdatedAt.IsZero() {
		d.UpdatedAt = d.CreatedAt
	}
	d.CreatedAt = rekey.NormalizeTime(d.CreatedAt)
	d.UpdatedAt = rekey.NormalizeTime(d.UpdatedAt)
	return d, nil
}

// ValidateDEKQuery checks a ListDEKs query: it names a key.
func ValidateDEKQuery(q rekey.DEKQuery) error {
	if q.Key == "" {
		return fmt.Errorf("%w: dek query names no key", rekey.ErrInvalidArgument)
	}
	return nil
}

// ValidateSwaps checks a SwapDEKs batch: every swap has an id, new wrapped
// bytes and a positive version. The error names the first swap that
// has not.
func ValidateSwaps(swaps []rekey.DEKSwap) error {
	for _, sw := range swaps {
		if sw.ID == "" || len(sw.NewWrapped) == 0 || sw.NewVersion <= 0 {
			return fmt.Errorf("%w: swap of dek %q needs an id, new wrapped bytes and a positive version", rekey.ErrInvalidArgument, sw.ID)
		}
	}
	return nil
}

// ---- leases ----

// ValidateAcquire checks an AcquireLease call: a key, an owner and a
// positive ttl.
func ValidateAcquire(key, owner string, ttl time.Duration) error {
	if key == "" || owner == "" || ttl <= 0 {
		return fmt.Errorf("%w: a lease needs a key, an owner and a positive ttl", rekey.ErrInvalidArgument)
	}
	return nil
}

// ValidateRenew checks a RenewLease call: a positive ttl.
func ValidateRenew(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("%w: ttl must be positive", rekey.ErrInvalidArgument)
	}
	return nil
}

// ValidateBreak checks a BreakLease call: the lease names its key and
// owner.
func ValidateBreak(l rekey.Lease) error {
	if l.Key == "" || l.Owner == "" {
		return fmt.Errorf("%w: breaking a lease needs its key and owner", rekey.ErrInvalidArgument)
	}
	return nil
}

// ---- rotations ----

// PrepareNewRotation checks a new rotation (CreateRotation) and fills in
// its defaults: an empty State is claimed, Owner and Epoch are fence's, a
// zero StartedAt is now and a zero UpdatedAt its StartedAt. The rotation
// must have an id and a key and be claimed.
func PrepareNewRotation(r rekey.Rotation, fence rekey.Lease, now time.Time) (rekey.Rotation, error) {
	if r.State == "" {
		r.State = rekey.RotationClaimed
	}
	switch {
	case r.ID == "":
		return r, fmt.Errorf("%w: rotation has no id", rekey.ErrInvalidArgument)
	case r.Key == "":
		return r, fmt.Errorf("%w: rotation %s names no key", rekey.ErrInvalidArgument, r.ID)
	case r.State != rekey.RotationClaimed:
		return r, fmt.Errorf("%w: a new rotation is claimed, not %q", rekey.ErrInvalidArgument, r.State)
	}
	r.Owner, r.Epoch = fence.Owner, fence.Epoch
	if r.StartedAt.IsZero() {
		r.StartedAt = now
	}
	if r.UpdatedAt.IsZero() {
		r.UpdatedAt = r.StartedAt
	}
	return NormRotation(r), nil
}

// rotationRank orders rotation states; a rotation never moves backwards.
// An unknown state ranks 0.
func rotationRank(s rekey.RotationState) int {
	switch s {
	case rekey.RotationClaimed:
		return 1
	case rekey.RotationVersionCreated:
		return 2
	case rekey.RotationRewrapping:
		return 3
	case rekey.RotationCommitted:
		return 4
	case rekey.RotationDone:
		return 5
	}
	return 0
}

// ValidateUpdate checks an AdvanceRotation call before the rotation is
// read: it names the rotation, both states are known, the state does not
// go back, and an activation names a positive version.
func ValidateUpdate(u rekey.RotationUpdate) error {
	switch {
	case u.Rotation.ID == "":
		return fmt.Errorf("%w: rotation update has no id", rekey.ErrInvalidArgument)
	case rotationRank(u.Rotation.State) == 0:
		return fmt.Errorf("%w: unknown rotation state %q", rekey.ErrInvalidArgument, u.Rotation.State)
	case rotationRank(u.FromState) == 0:
		return fmt.Errorf("%w: unknown rotation state %q", rekey.ErrInvalidArgument, u.FromState)
	case rotationRank(u.Rotation.State) < rotationRank(u.FromState):
		return fmt.Errorf("%w: rotation %s cannot go back from %s to %s", rekey.ErrInvalidArgument, u.Rotation.ID, u.FromState, u.Rotation.State)
	case u.Activate != nil && u.Activate.Version <= 0:
		return fmt.Errorf("%w: activation of version %d", rekey.ErrInvalidArgument, u.Activate.Version)
	}
	return nil
}

// ValidateUpdateKey checks an AdvanceRotation call against the stored
// rotation cur: an update that names a key names cur's.
func ValidateUpdateKey(cur rekey.Rotation, u rekey.RotationUpdate) error {
	if u.Rotation.Key != "" && u.Rotation.Key != cur.Key {
		return fmt.Errorf("%w: rotation %s is of key %q, not %q", rekey.ErrInvalidArgument, cur.ID, cur.Key, u.Rotation.Key)
	}
	return nil
}

// MergeRotation returns cur with the mutable fields of upd (AdvanceRotation):
// Owner and Epoch are fence's, a zero UpdatedAt is now, and a done rotation
// without FinishedAt finishes at its UpdatedAt. The id, key, from_version,
// reason and started_at of cur never change. FailedDEKs is copied.
func MergeRotation(cur, upd rekey.Rotation, fence rekey.Lease, now time.Time) rekey.Rotation {
	next := cur
	next.ToVersion = upd.ToVersion
	next.State = upd.State
	next.Note = upd.Note
	next.Compromised = upd.Compromised
	next.Total = upd.Total
	next.Done = upd.Done
	next.Failed = upd.Failed
	next.Cursor = upd.Cursor
	next.FailedDEKs = slices.Clone(upd.FailedDEKs)
	next.UpdatedAt = upd.UpdatedAt
	next.FinishedAt = upd.FinishedAt
	next.LastError = upd.LastError
	next.Owner, next.Epoch = fence.Owner, fence.Epoch
	if next.UpdatedAt.IsZero() {
		next.UpdatedAt = now
	}
	if next.State == rekey.RotationDone && next.FinishedAt.IsZero() {
		next.FinishedAt = next.UpdatedAt
	}
	return NormRotation(next)
}

// AddApplied returns the checkpoint of a batch (BatchCommitter.CommitBatch)
// with the swaps it applied counted: next.Done and the DEKs of each event
// increased by applied. evs is copied, not changed.
func AddApplied(next rekey.Rotation, evs []rekey.AuditEvent, applied int) (rekey.Rotation, []rekey.AuditEvent) {
	next.Done += int64(applied)
	out := slices.Clone(evs)
	for i := range out {
		out[i].DEKs += int64(applied)
	}
	return next, out
}

// NormRotation returns r with its times normalised (rekey.NormalizeTime)
// and an empty FailedDEKs as nil.
func NormRotation(r rekey.Rotation) rekey.Rotation {
	r.StartedAt = rekey.NormalizeTime(r.StartedAt)
	r.UpdatedAt = rekey.NormalizeTime(r.UpdatedAt)
	r.FinishedAt = rekey.NormalizeTime(r.FinishedAt)
	if len(r.FailedDEKs) == 0 {
		r.FailedDEKs = nil
	}
	return r
}

// ---- audit ----

// PrepareEvents checks the audit events of a write and fills in their
// defaults: it returns a copy of events (the caller's slice is never
// modified) with a zero Time set to now, or nil for no events. Every event
// must have a type.
func PrepareEvents(events []rekey.AuditEvent, now time.Time) ([]rekey.AuditEvent, error) {
	if len(events) == 0 {
		return nil, nil
	}
	out := slices.Clone(events)
	for i := range out {
		if out[i].Type == "" {
			return nil, fmt.Errorf("%w: audit event %d has no type", rekey.ErrInvalidArgument, i)
		}
		if out[i].Time.IsZero() {
			out[i].Time = now
		}
	}
	return out, nil
}

// PrepareCheckpoint checks a new audit checkpoint (AppendAuditCheckpoint)
// and fills in its defaults: it copies the MAC (the caller's slice is
// never kept) and sets a zero CreatedAt to now. The checkpoint must have a
// positive seq, a hash and a MAC.
func PrepareCheckpoint(cp rekey.AuditCheckpoint, now time.Time) (rekey.AuditCheckpoint, error) {
	switch {
	case cp.Seq <= 0:
		return cp, fmt.Errorf("%w: checkpoint seq must be positive, got %d", rekey.ErrInvalidArgument, cp.Seq)
	case cp.Hash == "":
		return cp, fmt.Errorf("%w: checkpoint of seq %d has no hash", rekey.ErrInvalidArgument, cp.Seq)
	case len(cp.MAC) == 0:
		return cp, fmt.Errorf("%w: checkpoint of seq %d has no MAC", rekey.ErrInvalidArgument, cp.Seq)
	}
	cp.MAC = slices.Clone(cp.MAC)
	if cp.CreatedAt.IsZero() {
		cp.CreatedAt = now
	}
	cp.CreatedAt = rekey.NormalizeTime(cp.CreatedAt)
	return cp, nil
}

// ValidateCheckpointEvent checks a new audit checkpoint against the trail:
// found tells whether the trail holds the event of seq cp.Seq, hash is that
// event's hash. The checkpoint must name an event the trail holds, with
// that hash.
func ValidateCheckpointEvent(cp rekey.AuditCheckpoint, found bool, hash string) error {
	if !found {
		return fmt.Errorf("%w: checkpoint of seq %d: the audit trail has no such event", rekey.ErrInvalidArgument, cp.Seq)
	}
	if hash != cp.Hash {
		return fmt.Errorf("%w: checkpoint of seq %d names hash %s, but that event's hash is %s", rekey.ErrInvalidArgument, cp.Seq, cp.Hash, hash)
	}
	return nil
}

// CheckNewDEKVersion checks that a new DEK is wrapped under its key's
// active version (else ErrVersionNotActive: a rotation committed meanwhile)
// and that this version is not compromised (else ErrVersionDisabled: an
// emergency rotation is replacing it, and nothing new may be wrapped under
// a key that may be in an attacker's hands).
func CheckNewDEKVersion(d rekey.DEK, activeVersion int, activeState rekey.VersionState) error {
	if d.Version != activeVersion {
		return fmt.Errorf("dek %s: key %q version %d (active is %d): %w", d.ID, d.Key, d.Version, activeVersion, rekey.ErrVersionNotActive)
	}
	if activeState == rekey.VersionCompromised {
		return fmt.Errorf("dek %s: key %q version %d is compromised and an emergency rotation is replacing it: retry once it commits (rekey status): %w",
			d.ID, d.Key, d.Version, rekey.ErrVersionDisabled)
	}
	return nil
}

// ---- range sharing ----

// MaxFailedDEKs is how many failed DEK ids a rotation keeps
// (Rotation.FailedDEKs): the first ones found.
const MaxFailedDEKs = 100

// ValidateEvery checks a DEKBounds call: every is positive.
func ValidateEvery(key string, every int) error {
	if every <= 0 {
		return fmt.Errorf("%w: dek bounds of key %q: every must be positive, got %d", rekey.ErrInvalidArgument, key, every)
	}
	return nil
}

// ValidateBounds checks the bounds of a SplitRewrap call: non-empty ids,
// strictly ascending. The error names the first bound that is not.
func ValidateBounds(rotationID string, bounds []string) error {
	for i, b := range bounds {
		switch {
		case b == "":
			return fmt.Errorf("%w: split of rotation %s: bound %d is empty", rekey.ErrInvalidArgument, rotationID, i)
		case i > 0 && b <= bounds[i-1]:
			return fmt.Errorf("%w: split of rotation %s: bound %d (%q) is not above bound %d (%q): bounds must be strictly ascending",
				rekey.ErrInvalidArgument, rotationID, i, b, i-1, bounds[i-1])
		}
	}
	return nil
}

// RangeBounds returns the (lo, hi] bounds of the len(bounds)+1 ranges a
// split by bounds makes: range i holds ids in (lo[i], hi[i]], "" meaning
// no bound.
func RangeBounds(bounds []string) (lo, hi []string) {
	lo, hi = make([]string, len(bounds)+1), make([]string, len(bounds)+1)
	for i, b := range bounds {
		hi[i], lo[i+1] = b, b
	}
	return lo, hi
}

// InRange reports whether id is in the range (lo, hi]; hi "" is no upper
// bound.
func InRange(id, lo, hi string) bool {
	return id > lo && (hi == "" || id <= hi)
}

// ValidateRangeCheckpoint checks a CommitRangeBatch checkpoint: it names a
// rotation and a range index that is not negative, and counts no negative
// Done.
func ValidateRangeCheckpoint(cp rekey.RangeCheckpoint) error {
	switch {
	case cp.RotationID == "":
		return fmt.Errorf("%w: range checkpoint names no rotation", rekey.ErrInvalidArgument)
	case cp.Index < 0:
		return fmt.Errorf("%w: range checkpoint of rotation %s: negative range index %d", rekey.ErrInvalidArgument, cp.RotationID, cp.Index)
	case cp.Done < 0:
		return fmt.Errorf("%w: range checkpoint of rotation %s range %d: negative done %d", rekey.ErrInvalidArgument, cp.RotationID, cp.Index, cp.Done)
	}
	return nil
}

// AppendFailed returns cur with the ids of failed appended while it holds
// fewer than MaxFailedDEKs; cur is not changed.
func AppendFailed(cur, failed []string) []string {
	room := MaxFailedDEKs - len(cur)
	if room <= 0 || len(failed) == 0 {
		return slices.Clone(cur)
	}
	return append(slices.Clone(cur), failed[:min(room, len(failed))]...)
}

// AddEventDEKs returns a copy of evs with the DEKs of each event increased
// by applied (the swaps a batch applied); evs is not changed.
func AddEventDEKs(evs []rekey.AuditEvent, applied int) []rekey.AuditEvent {
	out := slices.Clone(evs)
	for i := range out {
		out[i].DEKs += int64(applied)
	}
	return out
}

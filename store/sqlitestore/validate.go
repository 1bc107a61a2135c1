package sqlitestore

import (
	"fmt"
	"slices"
	"time"

	"github.com/rekeyhq/rekey"
)

// The input checks and defaults below are the same as memstore's, so that
// both stores refuse the same calls with the same errors (storetest checks
// it). They could move to a package shared by the stores.

// prepareNewKey fills the defaults of a new key and its first version and
// checks that they agree.
func prepareNewKey(k rekey.Key, v rekey.KeyVersion, now time.Time) (rekey.Key, rekey.KeyVersion, error) {
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
	return normKey(k), normVersion(v), nil
}
func validateVersionChange(c rekey.VersionChange) error {
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
func validateNewDEK(d rekey.DEK) error {
	switch {
	case d.ID == "":
		return fmt.Errorf("%w: dek has no id", rekey.ErrInvalidArgument)
	case d.Key == "":
		return fmt.Errorf("%w: dek %s names no key", rekey.ErrInvalidArgument, d.ID)
	case len(d.Wrapped) == 0:
		return fmt.Errorf("%w: dek %s has no wrapped bytes", rekey.ErrInvalidArgument, d.ID)
	}
	return nil
}
func prepareNewRotation(r rekey.Rotation, fence rekey.Lease, now time.Time) (rekey.Rotation, error) {
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
	return normRotation(r), nil
}
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
func validateUpdate(u rekey.RotationUpdate) error {
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
func prepareNewVersion(v rekey.KeyVersion, key string, now time.Time) (rekey.KeyVersion, error) {
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
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now
	}
	return normVersion(v), nil
}
func normKey(k rekey.Key) rekey.Key {
	k.ExpiresAt = rekey.NormalizeTime(k.ExpiresAt)
	k.CreatedAt = rekey.NormalizeTime(k.CreatedAt)
	k.UpdatedAt = rekey.NormalizeTime(k.UpdatedAt)
	return k
}
func normVersion(v rekey.KeyVersion) rekey.KeyVersion {
	v.CreatedAt = rekey.NormalizeTime(v.CreatedAt)
	v.ActivatedAt = rekey.NormalizeTime(v.ActivatedAt)
	v.RetireAfter = rekey.NormalizeTime(v.RetireAfter)
	v.RetiredAt = rekey.NormalizeTime(v.RetiredAt)
	v.DestroyedAt = rekey.NormalizeTime(v.DestroyedAt)
	return v
}
func normRotation(r rekey.Rotation) rekey.Rotation {
	r.StartedAt = rekey.NormalizeTime(r.StartedAt)
	r.UpdatedAt = rekey.NormalizeTime(r.UpdatedAt)
	r.FinishedAt = rekey.NormalizeTime(r.FinishedAt)
	if len(r.FailedDEKs) == 0 {
		r.FailedDEKs = nil
	}
	return r
}

// prepareEvents copies events (the caller's slice is never modified), sets
// a zero Time to now and refuses an event without a type.
func prepareEvents(events []rekey.AuditEvent, now time.Time) ([]rekey.AuditEvent, error) {
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

// mergeRotation returns cur with the mutable fields of upd.
func mergeRotation(cur, upd rekey.Rotation, fence rekey.Lease, now time.Time) rekey.Rotation {
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
	return normRotation(next)
}

// prepareCheckpoint checks a new audit checkpoint, copies its MAC (the
// caller's slice is never kept) and sets a zero CreatedAt to now.
func prepareCheckpoint(cp rekey.AuditCheckpoint, now time.Time) (rekey.AuditCheckpoint, error) {
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

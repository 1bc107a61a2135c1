// Package memstore is an in-memory rekey.Store for unit tests of the engine
// and the CLI. It keeps the same guarded semantics as the SQL stores (it
// passes the same storetest suite): compare-and-swap on DEKs, fencing by
// lease epoch, one open rotation per key, and a hash-chained audit trail
// appended in the same critical section as the change it records.
//
// Nothing is persisted. A single mutex serialises every call, which is the
// in-memory equivalent of a transaction: a call either applies completely or
// not at all.
package memstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

// Store is an in-memory rekey.Store. The zero value is ready to use; New
// returns one too. It is safe for concurrent use.
type Store struct {
	// Fail, when set, is consulted at the start of every method with the
	// method's name ("InsertDEKs", "SwapDEKs", ...). A non-nil result is
	// returned as the method's error, unchanged, and nothing is done. Use it
	// to inject faults, e.g. an *rekey.UnreachableError.
	Fail func(op string) error

	// Now is the clock for the times the store sets itself (a DEK's
	// UpdatedAt on swap, a key's UpdatedAt). Nil means time.Now.
	Now func() time.Time

	mu        sync.Mutex
	ready     bool
	closed    bool
	keys      map[string]*keyRecord
	deks      map[string]*rekey.DEK
	rotations map[string]*rekey.Rotation
	open      map[string]string // key name -> id of its open rotation
	leases    map[string]*leaseRecord
	audit     []rekey.AuditEvent
	auditCPs  []rekey.AuditCheckpoint         // ascending seq
	ranges    map[string][]*rekey.RewrapRange // rotation id -> its re-wrap ranges
	wraps     map[wrapCountKey]int64          // wrap counts (usage.go)
}

type keyRecord struct {
	key      rekey.Key
	versions map[int]*rekey.KeyVersion
	dekIDs   []string // ids of the key's DEKs, ascending
}

type leaseRecord struct {
	lease    rekey.Lease
	released bool
}

var (
	_ rekey.Store          = (*Store)(nil)
	_ rekey.BatchCommitter = (*Store)(nil)
)

// errClosed is returned by every method after Close.
// errClosed is returned after Close: the caller's bug, not an outage, so
// it is not transient and no decorator retries it.
var errClosed = errors.New("store is closed")

// New returns an empty store.
func New() *Store { return &Store{} }

// begin consults Fail, takes the lock and initialises the maps on first use.
// The caller must call s.mu.Unlock when begin returns nil.
func (s *Store) begin(op string) error {
	if s.Fail != nil {
		if err := s.Fail(op); err != nil {
			return err
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("memstore: %s: %w", op, errClosed)
	}
	if !s.ready {
		s.keys = map[string]*keyRecord{}
		s.deks = map[string]*rekey.DEK{}
		s.rotations = map[string]*rekey.Rotation{}
		s.open = map[string]string{}
		s.leases = map[string]*leaseRecord{}
		s.ready = true
	}
	return nil
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return rekey.NormalizeTime(s.Now())
	}
	return rekey.NormalizeTime(time.Now())
}

func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("memstore: %s: %w", op, err)
}

// ---- keys and versions ----

// CreateKey implements rekey.Store.
func (s *Store) CreateKey(ctx context.Context, k rekey.Key, v rekey.KeyVersion, events ...rekey.AuditEvent) error {
	const op = "CreateKey"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	k, v, err := storecheck.PrepareNewKey(k, v, s.now())
	if err != nil {
		return wrapErr(op, err)
	}
	evs, err := s.prepareEvents(events)
	if err != nil {
		return wrapErr(op, err)
	}
	if _, ok := s.keys[k.Name]; ok {
		return wrapErr(op, fmt.Errorf("key %q: %w", k.Name, rekey.ErrKeyExists))
	}
	vc := v
	s.keys[k.Name] = &keyRecord{key: k, versions: map[int]*rekey.KeyVersion{v.Version: &vc}}
	s.appendLocked(evs)
	return nil
}

// GetKey implements rekey.Store.
func (s *Store) GetKey(ctx context.Context, name string) (rekey.Key, error) {
	const op = "GetKey"
	if err := s.begin(op); err != nil {
		return rekey.Key{}, err
	}
	defer s.mu.Unlock()
	kr, ok := s.keys[name]
	if !ok {
		return rekey.Key{}, wrapErr(op, fmt.Errorf("key %q: %w", name, rekey.ErrKeyNotFound))
	}
	return kr.key, nil
}

// ListKeys implements rekey.Store.
func (s *Store) ListKeys(ctx context.Context) ([]rekey.Key, error) {
	if err := s.begin("ListKeys"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]rekey.Key, 0, len(s.keys))
	for _, name := range slices.Sorted(maps.Keys(s.keys)) {
		out = append(out, s.keys[name].key)
	}
	return out, nil
}

// UpdateKeyPolicy implements rekey.Store. The key's active version gets
// expiresAt too; its other versions keep theirs.
func (s *Store) UpdateKeyPolicy(ctx context.Context, name string, p rekey.Policy, expiresAt time.Time, events ...rekey.AuditEvent) error {
	const op = "UpdateKeyPolicy"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	evs, err := s.prepareEvents(events)
	if err != nil {
		return wrapErr(op, err)
	}
	kr, ok := s.keys[name]
	if !ok {
		return wrapErr(op, fmt.Errorf("key %q: %w", name, rekey.ErrKeyNotFound))
	}
	kr.key.Policy = p
	kr.key.ExpiresAt = rekey.NormalizeTime(expiresAt)
	kr.key.UpdatedAt = s.now()
	if v, ok := kr.versions[kr.key.ActiveVersion]; ok {
		v.ExpiresAt = kr.key.ExpiresAt
	}
	s.appendLocked(evs)
	return nil
}

// ListVersions implements rekey.Store.
func (s *Store) ListVersions(ctx context.Context, key string) ([]rekey.KeyVersion, error) {
	const op = "ListVersions"
	if err := s.begin(op); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	kr, ok := s.keys[key]
	if !ok {
		return nil, wrapErr(op, fmt.Errorf("key %q: %w", key, rekey.ErrKeyNotFound))
	}
	out := make([]rekey.KeyVersion, 0, len(kr.versions))
	for _, n := range slices.Sorted(maps.Keys(kr.versions)) {
		out = append(out, *kr.versions[n])
	}
	return out, nil
}

// ChangeVersionState implements rekey.Store. Besides the state it sets the
// time field that goes with it: RetiredAt (retired), DestroyedAt
// (destroyed), RetireAfter = At + the key's grace (pending_retirement, when
// not set yet). c.To may not be active (activation goes through
// AdvanceRotation) and c.From may not be empty: both give
// ErrInvalidArgument.
func (s *Store) ChangeVersionState(ctx context.Context, c rekey.VersionChange, fence *rekey.Lease, events ...rekey.AuditEvent) error {
	const op = "ChangeVersionState"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateVersionChange(c); err != nil {
		return wrapErr(op, err)
	}
	evs, err := s.prepareEvents(events)
	if err != nil {
		return wrapErr(op, err)
	}
	if fence != nil {
		if err := s.checkFenceLocked(c.Key, *fence); err != nil {
			return wrapErr(op, err)
		}
	}
	kr, ok := s.keys[c.Key]
	if !ok {
		return wrapErr(op, fmt.Errorf("key %q version %d: %w", c.Key, c.Version, rekey.ErrVersionNotFound))
	}
	v, ok := kr.versions[c.Version]
	if !ok {
		return wrapErr(op, fmt.Errorf("key %q version %d: %w", c.Key, c.Version, rekey.ErrVersionNotFound))
	}
	if !slices.Contains(c.From, v.State) {
		return wrapErr(op, fmt.Errorf("key %q version %d is %s, not one of %v: %w", c.Key, c.Version, v.State, c.From, rekey.ErrStale))
	}
	if c.RequireUnused {
		var n int64
		for _, id := range kr.dekIDs {
			if s.deks[id].Version == c.Version {
				n++
			}
		}
		if n > 0 {
			return wrapErr(op, &rekey.VersionInUseError{Key: c.Key, Version: c.Version, DEKs: n})
		}
	}
	at := rekey.NormalizeTime(c.At)
	if at.IsZero() {
		at = s.now()
	}
	v.State = c.To
	switch c.To {
	case rekey.VersionRetired:
		v.RetiredAt = at
	case rekey.VersionDestroyed:
		v.DestroyedAt = at
	case rekey.VersionPendingRetirement:
		if v.RetireAfter.IsZero() {
			v.RetireAfter = rekey.NormalizeTime(at.Add(kr.key.Policy.Grace))
		}
	}
	s.appendLocked(evs)
	return nil
}

// ---- DEKs ----

// InsertDEKs implements rekey.Store. A zero CreatedAt is set to now and a
// zero UpdatedAt to CreatedAt.
func (s *Store) InsertDEKs(ctx context.Context, deks []rekey.DEK) error {
	const op = "InsertDEKs"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	now := s.now()
	batch := make([]rekey.DEK, len(deks))
	seen := make(map[string]bool, len(deks))
	for i := range deks {
		d, err := storecheck.PrepareNewDEK(deks[i], now)
		if err != nil {
			return wrapErr(op, err)
		}
		kr, ok := s.keys[d.Key]
		if !ok {
			return wrapErr(op, fmt.Errorf("dek %s: key %q: %w", d.ID, d.Key, rekey.ErrKeyNotFound))
		}
		var state rekey.VersionState
		if v, ok := kr.versions[kr.key.ActiveVersion]; ok {
			state = v.State
		}
		if err := storecheck.CheckNewDEKVersion(d, kr.key.ActiveVersion, state); err != nil {
			return wrapErr(op, err)
		}
		if _, ok := s.deks[d.ID]; ok || seen[d.ID] {
			return wrapErr(op, fmt.Errorf("dek %s exists: %w", d.ID, rekey.ErrConflict))
		}
		seen[d.ID] = true
		d.Wrapped = slices.Clone(d.Wrapped)
		batch[i] = d
	}
	for i := range batch {
		d := &batch[i]
		s.deks[d.ID] = d
		kr := s.keys[d.Key]
		kr.dekIDs = insertSorted(kr.dekIDs, d.ID)
	}
	return nil
}

// insertSorted inserts id into the ascending slice ids. New ids are
// time-ordered, so the common case is an append.
func insertSorted(ids []string, id string) []string {
	if n := len(ids); n == 0 || ids[n-1] < id {
		return append(ids, id)
	}
	i, _ := slices.BinarySearch(ids, id)
	return slices.Insert(ids, i, id)
}

func cloneDEK(d *rekey.DEK) rekey.DEK {
	c := *d
	c.Wrapped = slices.Clone(d.Wrapped)
	return c
}

// GetDEK implements rekey.Store.
func (s *Store) GetDEK(ctx context.Context, id string) (rekey.DEK, error) {
	const op = "GetDEK"
	if err := s.begin(op); err != nil {
		return rekey.DEK{}, err
	}
	defer s.mu.Unlock()
	d, ok := s.deks[id]
	if !ok {
		return rekey.DEK{}, wrapErr(op, fmt.Errorf("dek %s: %w", id, rekey.ErrDEKNotFound))
	}
	return cloneDEK(d), nil
}

// ListDEKs implements rekey.DEKSource.
func (s *Store) ListDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	const op = "ListDEKs"
	if err := s.begin(op); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateDEKQuery(q); err != nil {
		return nil, wrapErr(op, err)
	}
	limit := storecheck.ListLimit(q.Limit)
	kr, ok := s.keys[q.Key]
	if !ok {
		return nil, nil
	}
	start := 0
	if q.After != "" {
		var found bool
		if start, found = slices.BinarySearch(kr.dekIDs, q.After); found {
			start++
		}
	}
	var out []rekey.DEK
	for _, id := range kr.dekIDs[start:] {
		if len(out) == limit {
			break
		}
		d := s.deks[id]
		if q.Version > 0 && d.Version != q.Version || q.NotVersion > 0 && d.Version == q.NotVersion {
			continue
		}
		out = append(out, cloneDEK(d))
	}
	return out, nil
}

// SwapDEKs implements rekey.DEKSource. A swap of a DEK of another key than
// fence.Key loses. A NewVersion the key does not have gives
// ErrVersionNotFound and nothing is written.
func (s *Store) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease) ([]string, error) {
	const op = "SwapDEKs"
	if err := s.begin(op); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, wrapErr(op, err)
	}
	lost, err := s.swapLocked(swaps, fence, s.now())
	return lost, wrapErr(op, err)
}

// swapLocked applies swaps as SwapDEKs documents, with now as the DEKs'
// UpdatedAt, and returns the ids of the swaps that lost. It checks
// everything before it changes anything: on an error nothing is written.
func (s *Store) swapLocked(swaps []rekey.DEKSwap, fence rekey.Lease, now time.Time) ([]string, error) {
	if err := s.checkFenceLocked(fence.Key, fence); err != nil {
		return nil, err
	}
	if len(swaps) == 0 {
		return nil, nil
	}
	kr, ok := s.keys[fence.Key]
	if !ok {
		return nil, fmt.Errorf("key %q: %w", fence.Key, rekey.ErrKeyNotFound)
	}
	for _, sw := range swaps {
		if _, ok := kr.versions[sw.NewVersion]; !ok {
			return nil, fmt.Errorf("dek %s: key %q version %d: %w", sw.ID, fence.Key, sw.NewVersion, rekey.ErrVersionNotFound)
		}
	}
	var lost []string
	for _, sw := range swaps {
		d, ok := s.deks[sw.ID]
		if !ok || d.Key != fence.Key || !bytes.Equal(d.Wrapped, sw.OldWrapped) {
			lost = append(lost, sw.ID)
			continue
		}
		d.Wrapped = slices.Clone(sw.NewWrapped)
		d.Version = sw.NewVersion
		d.UpdatedAt = now
	}
	return lost, nil
}

// CountDEKs implements rekey.DEKSource.
func (s *Store) CountDEKs(ctx context.Context, key string) (map[int]int64, error) {
	if err := s.begin("CountDEKs"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := map[int]int64{}
	if kr, ok := s.keys[key]; ok {
		for _, id := range kr.dekIDs {
			out[s.deks[id].Version]++
		}
	}
	return out, nil
}

// ---- leases ----

// AcquireLease implements rekey.Store. A lease that expired or was released
// goes to the next owner with the epoch incremented; epochs of a key never
// go down.
func (s *Store) AcquireLease(ctx context.Context, key, owner string, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	const op = "AcquireLease"
	if err := s.begin(op); err != nil {
		return rekey.Lease{}, err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateAcquire(key, owner, ttl); err != nil {
		return rekey.Lease{}, wrapErr(op, err)
	}
	now = rekey.NormalizeTime(now)
	expires := rekey.NormalizeTime(now.Add(ttl))
	lr, ok := s.leases[key]
	switch {
	case !ok:
		lr = &leaseRecord{lease: rekey.Lease{Key: key, Owner: owner, Epoch: 1, ExpiresAt: expires}}
		s.leases[key] = lr
	case !lr.released && lr.lease.ExpiresAt.After(now):
		if lr.lease.Owner != owner {
			return rekey.Lease{}, wrapErr(op, fmt.Errorf("key %q is leased by %s until %s: %w", key, lr.lease.Owner, lr.lease.ExpiresAt.Format(time.RFC3339), rekey.ErrLeaseHeld))
		}
		lr.lease.ExpiresAt = expires
	default:
		lr.lease = rekey.Lease{Key: key, Owner: owner, Epoch: lr.lease.Epoch + 1, ExpiresAt: expires}
		lr.released = false
	}
	return lr.lease, nil
}

// RenewLease implements rekey.Store. A lease stays current, even past its
// expiry, until another owner acquires the key or it is released.
func (s *Store) RenewLease(ctx context.Context, l rekey.Lease, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	const op = "RenewLease"
	if err := s.begin(op); err != nil {
		return rekey.Lease{}, err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateRenew(ttl); err != nil {
		return rekey.Lease{}, wrapErr(op, err)
	}
	if err := s.checkFenceLocked(l.Key, l); err != nil {
		return rekey.Lease{}, wrapErr(op, err)
	}
	lr := s.leases[l.Key]
	lr.lease.ExpiresAt = rekey.NormalizeTime(now.Add(ttl))
	return lr.lease, nil
}

// ReleaseLease implements rekey.Store. Writes fenced by a released lease
// fail with ErrFenced.
func (s *Store) ReleaseLease(ctx context.Context, l rekey.Lease) error {
	if err := s.begin("ReleaseLease"); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if s.checkFenceLocked(l.Key, l) == nil {
		s.leases[l.Key].released = true
	}
	return nil
}

// GetLease implements rekey.Store.
func (s *Store) GetLease(ctx context.Context, key string) (rekey.Lease, error) {
	const op = "GetLease"
	if err := s.begin(op); err != nil {
		return rekey.Lease{}, err
	}
	defer s.mu.Unlock()
	lr, ok := s.leases[key]
	if !ok || lr.released {
		return rekey.Lease{}, wrapErr(op, fmt.Errorf("key %q: %w", key, rekey.ErrLeaseNotFound))
	}
	return lr.lease, nil
}

// BreakLease implements rekey.Store: a broken lease is marked released, so
// that the next owner gets the next epoch.
func (s *Store) BreakLease(ctx context.Context, l rekey.Lease, now time.Time) error {
	const op = "BreakLease"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateBreak(l); err != nil {
		return wrapErr(op, err)
	}
	lr, ok := s.leases[l.Key]
	if !ok || lr.released || lr.lease.Owner != l.Owner || lr.lease.Epoch != l.Epoch ||
		!lr.lease.ExpiresAt.Equal(rekey.NormalizeTime(l.ExpiresAt)) {
		return wrapErr(op, fmt.Errorf("key %q owner %s epoch %d is no longer the current lease: %w", l.Key, l.Owner, l.Epoch, rekey.ErrStale))
	}
	lr.released = true
	if now = rekey.NormalizeTime(now); !now.IsZero() && now.Before(lr.lease.ExpiresAt) {
		lr.lease.ExpiresAt = now
	}
	return nil
}

// checkFenceLocked returns ErrFenced unless fence is the current lease of
// key: same owner and epoch, not released. Expiry alone does not fence: only
// another owner acquiring the key (which increments the epoch) does.
func (s *Store) checkFenceLocked(key string, fence rekey.Lease) error {
	lr, ok := s.leases[key]
	if fence.Key != key || !ok || lr.released || lr.lease.Owner != fence.Owner || lr.lease.Epoch != fence.Epoch {
		return fmt.Errorf("key %q owner %s epoch %d: %w", key, fence.Owner, fence.Epoch, rekey.ErrFenced)
	}
	return nil
}

// ---- rotations ----

// CreateRotation implements rekey.Store. r.State must be empty or claimed;
// r.Owner and r.Epoch are taken from fence.
func (s *Store) CreateRotation(ctx context.Context, r rekey.Rotation, fence rekey.Lease, events ...rekey.AuditEvent) error {
	const op = "CreateRotation"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	r, err := storecheck.PrepareNewRotation(r, fence, s.now())
	if err != nil {
		return wrapErr(op, err)
	}
	evs, err := s.prepareEvents(events)
	if err != nil {
		return wrapErr(op, err)
	}
	if _, ok := s.keys[r.Key]; !ok {
		return wrapErr(op, fmt.Errorf("key %q: %w", r.Key, rekey.ErrKeyNotFound))
	}
	if err := s.checkFenceLocked(r.Key, fence); err != nil {
		return wrapErr(op, err)
	}
	if _, ok := s.rotations[r.ID]; ok {
		return wrapErr(op, fmt.Errorf("rotation %s exists: %w", r.ID, rekey.ErrConflict))
	}
	if id, ok := s.open[r.Key]; ok {
		return wrapErr(op, fmt.Errorf("key %q already has open rotation %s: %w", r.Key, id, rekey.ErrConflict))
	}
	rc := cloneRotation(&r)
	s.rotations[r.ID] = &rc
	s.open[r.Key] = r.ID
	s.appendLocked(evs)
	return nil
}

func cloneRotation(r *rekey.Rotation) rekey.Rotation {
	c := *r
	c.FailedDEKs = slices.Clone(r.FailedDEKs)
	return c
}

// AdvanceRotation implements rekey.Store. The rotation's id, key,
// from_version, reason and started_at never change; Owner and Epoch are
// taken from fence; the state may stay or move forward, never back
// (ErrInvalidArgument). With Activate, the version to activate must be in
// state created (else ErrStale) and the key's active version must still be
// Activate.Previous (else ErrStale); the version activated gets
// Activate.ExpiresAt.
func (s *Store) AdvanceRotation(ctx context.Context, u rekey.RotationUpdate, fence rekey.Lease) error {
	const op = "AdvanceRotation"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateUpdate(u); err != nil {
		return wrapErr(op, err)
	}
	evs, err := s.prepareEvents(u.Events)
	if err != nil {
		return wrapErr(op, err)
	}
	p, err := s.planAdvanceLocked(u, fence, s.now())
	if err != nil {
		return wrapErr(op, err)
	}
	p.evs = evs
	s.applyAdvanceLocked(p)
	return nil
}

// CommitBatch implements rekey.BatchCommitter: the checkpoint is checked
// as AdvanceRotation checks it, then the swaps are applied as SwapDEKs
// applies them, then the checkpoint, with the number of swaps applied
// added to checkpoint.Rotation.Done and to the DEKs of each event. On any
// error (ErrFenced, ErrStale, ErrVersionNotFound, … as for those two
// methods) nothing is written, swaps included.
func (s *Store) CommitBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, checkpoint rekey.RotationUpdate) ([]string, error) {
	const op = "CommitBatch"
	if err := s.begin(op); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, wrapErr(op, err)
	}
	if err := storecheck.ValidateUpdate(checkpoint); err != nil {
		return nil, wrapErr(op, err)
	}
	evs, err := s.prepareEvents(checkpoint.Events)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	now := s.now()
	// Everything the checkpoint needs is checked before the swaps write,
	// and the swaps change nothing it checks: all or nothing.
	p, err := s.planAdvanceLocked(checkpoint, fence, now)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	lost, err := s.swapLocked(swaps, fence, now)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	p.next, p.evs = storecheck.AddApplied(p.next, evs, len(swaps)-len(lost))
	s.applyAdvanceLocked(p)
	return lost, nil
}

// advancePlan is a rotation update that passed every check of
// AdvanceRotation, ready for applyAdvanceLocked.
type advancePlan struct {
	cur        *rekey.Rotation
	next       rekey.Rotation
	kr         *keyRecord
	newVersion *rekey.KeyVersion
	activate   *rekey.Activation
	evs        []rekey.AuditEvent
}

// planAdvanceLocked checks u as AdvanceRotation does (the fence before the
// state guard) and returns what applying it writes, events aside. It
// changes nothing.
func (s *Store) planAdvanceLocked(u rekey.RotationUpdate, fence rekey.Lease, now time.Time) (*advancePlan, error) {
	cur, ok := s.rotations[u.Rotation.ID]
	if !ok {
		return nil, fmt.Errorf("rotation %s: %w", u.Rotation.ID, rekey.ErrRotationNotFound)
	}
	if err := storecheck.ValidateUpdateKey(*cur, u); err != nil {
		return nil, err
	}
	if err := s.checkFenceLocked(cur.Key, fence); err != nil {
		return nil, err
	}
	if cur.State != u.FromState {
		return nil, fmt.Errorf("rotation %s is %s, not %s: %w", cur.ID, cur.State, u.FromState, rekey.ErrStale)
	}
	p := &advancePlan{cur: cur, next: storecheck.MergeRotation(*cur, u.Rotation, fence, now), kr: s.keys[cur.Key], activate: u.Activate}
	if u.NewVersion != nil {
		nv, err := storecheck.PrepareNewVersion(*u.NewVersion, cur.Key, now)
		if err != nil {
			return nil, err
		}
		if _, ok := p.kr.versions[nv.Version]; ok {
			return nil, fmt.Errorf("key %q version %d exists: %w", cur.Key, nv.Version, rekey.ErrConflict)
		}
		p.newVersion = &nv
	}
	if a := u.Activate; a != nil {
		target, ok := p.kr.versions[a.Version]
		if p.newVersion != nil && p.newVersion.Version == a.Version {
			target, ok = p.newVersion, true
		}
		if !ok {
			return nil, fmt.Errorf("activate key %q version %d: %w", cur.Key, a.Version, rekey.ErrVersionNotFound)
		}
		if target.State != rekey.VersionCreated {
			return nil, fmt.Errorf("activate key %q version %d: it is %s, not created: %w", cur.Key, a.Version, target.State, rekey.ErrStale)
		}
		if p.kr.key.ActiveVersion != a.Previous {
			return nil, fmt.Errorf("activate key %q: active version is %d, not %d: %w", cur.Key, p.kr.key.ActiveVersion, a.Previous, rekey.ErrStale)
		}
	}
	return p, nil
}

// applyAdvanceLocked writes p: the new version, the activation (the
// version activated gets the activation's expiry, the previous one keeps
// its own), the rotation's next values and p.evs.
func (s *Store) applyAdvanceLocked(p *advancePlan) {
	kr, next := p.kr, p.next
	if p.newVersion != nil {
		kr.versions[p.newVersion.Version] = p.newVersion
	}
	if a := p.activate; a != nil {
		target := kr.versions[a.Version]
		if target.Backend != "" && (target.Backend != kr.key.Backend || target.BackendRef != kr.key.BackendRef) {
			// A move: the key follows its active version to the new
			// backend. Versions that name no backend were on the key's
			// old one; they say so before the key's changes.
			for _, v := range kr.versions {
				if v.Backend == "" {
					v.Backend, v.BackendRef = kr.key.Backend, kr.key.BackendRef
				}
			}
			kr.key.Backend, kr.key.BackendRef = target.Backend, target.BackendRef
		}
		target.State = rekey.VersionActive
		target.ActivatedAt = next.UpdatedAt
		target.ExpiresAt = rekey.NormalizeTime(a.ExpiresAt)
		if prev, ok := kr.versions[a.Previous]; ok && a.Previous != a.Version && prev.State == rekey.VersionActive {
			prev.State = rekey.VersionPendingRetirement
			prev.RetireAfter = rekey.NormalizeTime(a.RetireAfter)
		}
		kr.key.ActiveVersion = a.Version
		kr.key.ExpiresAt = rekey.NormalizeTime(a.ExpiresAt)
		kr.key.UpdatedAt = next.UpdatedAt
	}
	*p.cur = next
	if !next.State.Open() {
		delete(s.open, next.Key)
	}
	s.appendLocked(p.evs)
}

// GetRotation implements rekey.Store.
func (s *Store) GetRotation(ctx context.Context, id string) (rekey.Rotation, error) {
	const op = "GetRotation"
	if err := s.begin(op); err != nil {
		return rekey.Rotation{}, err
	}
	defer s.mu.Unlock()
	r, ok := s.rotations[id]
	if !ok {
		return rekey.Rotation{}, wrapErr(op, fmt.Errorf("rotation %s: %w", id, rekey.ErrRotationNotFound))
	}
	return cloneRotation(r), nil
}

// OpenRotation implements rekey.Store.
func (s *Store) OpenRotation(ctx context.Context, key string) (rekey.Rotation, error) {
	const op = "OpenRotation"
	if err := s.begin(op); err != nil {
		return rekey.Rotation{}, err
	}
	defer s.mu.Unlock()
	id, ok := s.open[key]
	if !ok {
		return rekey.Rotation{}, wrapErr(op, fmt.Errorf("open rotation of key %q: %w", key, rekey.ErrRotationNotFound))
	}
	return cloneRotation(s.rotations[id]), nil
}

// ListRotations implements rekey.Store. Rotations started at the same time
// are ordered by id, newest first.
func (s *Store) ListRotations(ctx context.Context, q rekey.RotationQuery) ([]rekey.Rotation, error) {
	if err := s.begin("ListRotations"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	limit := storecheck.RotationLimit(q.Limit)
	since := rekey.NormalizeTime(q.Since)
	var out []rekey.Rotation
	for _, r := range s.rotations {
		if q.Key != "" && r.Key != q.Key || q.OpenOnly && !r.State.Open() || !since.IsZero() && r.StartedAt.Before(since) {
			continue
		}
		out = append(out, cloneRotation(r))
	}
	slices.SortFunc(out, func(a, b rekey.Rotation) int {
		if c := b.StartedAt.Compare(a.StartedAt); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// ---- audit ----

// prepareEvents is storecheck.PrepareEvents at the store's now; the clock
// is read only when there are events.
func (s *Store) prepareEvents(events []rekey.AuditEvent) ([]rekey.AuditEvent, error) {
	if len(events) == 0 {
		return nil, nil
	}
	return storecheck.PrepareEvents(events, s.now())
}

// appendLocked chains evs after the last event and appends them.
func (s *Store) appendLocked(evs []rekey.AuditEvent) {
	seq, hash := int64(0), rekey.GenesisHash
	if n := len(s.audit); n > 0 {
		seq, hash = s.audit[n-1].Seq, s.audit[n-1].Hash
	}
	for i := range evs {
		// Times follow the chain: never before the previous event's.
		if n := len(s.audit); n > 0 && evs[i].Time.Before(s.audit[n-1].Time) {
			evs[i].Time = s.audit[n-1].Time
		}
		if i > 0 && evs[i].Time.Before(evs[i-1].Time) {
			evs[i].Time = evs[i-1].Time
		}
		evs[i].Chain(seq, hash)
		seq, hash = evs[i].Seq, evs[i].Hash
	}
	s.audit = append(s.audit, evs...)
}

// AppendAudit implements rekey.Store. A zero Time is set to now.
func (s *Store) AppendAudit(ctx context.Context, events ...rekey.AuditEvent) error {
	const op = "AppendAudit"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	evs, err := s.prepareEvents(events)
	if err != nil {
		return wrapErr(op, err)
	}
	s.appendLocked(evs)
	return nil
}

// ListAudit implements rekey.Store.
func (s *Store) ListAudit(ctx context.Context, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	if err := s.begin("ListAudit"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	limit := storecheck.ListLimit(q.Limit)
	since := rekey.NormalizeTime(q.Since)
	// Seq n is at index n-1.
	start := 0
	if q.AfterSeq > 0 {
		start = int(min(q.AfterSeq, int64(len(s.audit))))
	}
	var out []rekey.AuditEvent
	for _, ev := range s.audit[start:] {
		if len(out) == limit {
			break
		}
		if q.Key != "" && ev.Key != q.Key || !since.IsZero() && ev.Time.Before(since) {
			continue
		}
		out = append(out, ev)
	}
	return out, nil
}

// Ping implements rekey.Store: it fails only after Close.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.begin("Ping"); err != nil {
		return err
	}
	s.mu.Unlock()
	return nil
}

// Close implements rekey.Store. Every later call fails with an
// *rekey.UnreachableError. Closing twice is harmless.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

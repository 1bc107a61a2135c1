package audit

import (
	"context"
	"fmt"
	"slices"

	"github.com/rekeyhq/rekey"
)

// More problem kinds (Keeper.Verify and Keeper.Checkpoint).
const (
	// KindMissingEvent: the store holds a key, version, state or rotation
	// that no event of the trail records: the trail was cut short (or
	// events deleted and the chain re-hashed) while the state moved on.
	KindMissingEvent Kind = "missing_event"
	// KindStateMismatch: an event records a change that the store's state
	// contradicts (a version retired that is active, a rotation that does
	// not exist): a forged event.
	KindStateMismatch Kind = "state_mismatch"
	// KindAnchor: the anchor file kept beside the database is not what
	// rekey wrote: its MAC is wrong (edited, forged, or copied from another
	// home), or it is in the unMACed format 1.
	KindAnchor Kind = "anchor"
	// KindUnanchored: nothing outside the database vouches for the trail:
	// there is no anchor, though the database has checkpoints (the anchor
	// was deleted) or events (the anchor was deleted together with every
	// checkpoint, or the first command died before checkpointing).
	KindUnanchored Kind = "unanchored"
	// KindStoreGuard: the database's own guards of the trail (SQLite's
	// append-only triggers) were dropped or altered.
	KindStoreGuard Kind = "store_guard"
)

// maxRotations bounds the rotations CrossCheck reads per key; rotations
// are few (one per key per rotation period), so this is all of them.
const maxRotations = 1 << 20

// fact is one thing the store's state says happened, as the event that
// records it would name it.
type fact struct {
	typ      rekey.AuditType
	key      string
	version  int
	rotation string
}

// CrossCheck compares the trail with the state it describes. Every key,
// version, version state and rotation in s must have its event: key.created
// for each key; version.created or version.adopted for each version above
// 1, and rotation.committed for each such version that was ever active;
// version.pending_retirement, version.retired, version.destroyed or
// version.compromised for a version in that state; rotation.started for
// each rotation and rotation.completed for each one done. And every event
// written before the state was read must agree with it: its key, version
// and rotation exist, and its version is in (or past) the state the event
// says it entered. It returns the first disagreement, or nil.
//
// The state is read before the trail, and every change commits with its
// event, so writers running meanwhile cause no false alarm. Memory grows
// with the number of keys, versions and rotations, not with the trail.
// Errors are the store's.
func CrossCheck(ctx context.Context, s rekey.Store) (*Problem, error) {
	return crossCheckFrom(ctx, s, nil)
}

// state is the store's keys, versions and rotations as CrossCheck reads
// them, and the facts they need the trail to record.
type state struct {
	keys      map[string]bool
	versions  map[fact]rekey.VersionState // key+version → state
	rotations map[string]rekey.Rotation
	need      map[fact]string // fact → the object that needs its event
	order     []fact          // of need, for a deterministic first problem
}

func (st *state) want(f fact, what string) {
	if _, ok := st.need[f]; !ok {
		st.order = append(st.order, f)
	}
	st.need[f] = what
}

// readState reads every key, version and rotation of s.
func readState(ctx context.Context, s rekey.Store) (*state, error) {
	keys, err := s.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: cross-check: list keys: %w", err)
	}
	st := &state{keys: map[string]bool{}, versions: map[fact]rekey.VersionState{}, rotations: map[string]rekey.Rotation{}, need: map[fact]string{}}
	for _, k := range keys {
		st.keys[k.Name] = true
		st.want(fact{typ: rekey.AuditKeyCreated, key: k.Name}, fmt.Sprintf("key %q exists", k.Name))
		vs, err := s.ListVersions(ctx, k.Name)
		if err != nil {
			return nil, fmt.Errorf("audit: cross-check: list versions of key %s: %w", k.Name, err)
		}
		for _, v := range vs {
			st.versions[fact{key: k.Name, version: v.Version}] = v.State
			what := fmt.Sprintf("key %q version %d is %s", k.Name, v.Version, v.State)
			if v.Version > 1 {
				st.want(fact{typ: rekey.AuditVersionCreated, key: k.Name, version: v.Version}, what)
				if !v.ActivatedAt.IsZero() {
					st.want(fact{typ: rekey.AuditRotationCommitted, key: k.Name, version: v.Version}, what)
				}
			}
			switch v.State {
			case rekey.VersionPendingRetirement:
				st.want(fact{typ: rekey.AuditVersionPendingRetirement, key: k.Name, version: v.Version}, what)
			case rekey.VersionRetired:
				st.want(fact{typ: rekey.AuditVersionRetired, key: k.Name, version: v.Version}, what)
			case rekey.VersionDestroyed:
				st.want(fact{typ: rekey.AuditVersionDestroyed, key: k.Name, version: v.Version}, what)
			case rekey.VersionCompromised:
				st.want(fact{typ: rekey.AuditVersionCompromised, key: k.Name, version: v.Version}, what)
			}
		}
		rs, err := s.ListRotations(ctx, rekey.RotationQuery{Key: k.Name, Limit: maxRotations})
		if err != nil {
			return nil, fmt.Errorf("audit: cross-check: list rotations of key %s: %w", k.Name, err)
		}
		for _, r := range rs {
			st.rotations[r.ID] = r
			what := fmt.Sprintf("rotation %s of key %q (v%d→v%d) is %s", r.ID, r.Key, r.FromVersion, r.ToVersion, r.State)
			st.want(fact{typ: rekey.AuditRotationStarted, rotation: r.ID}, what)
			if r.State == rekey.RotationDone {
				st.want(fact{typ: rekey.AuditRotationCompleted, rotation: r.ID}, what)
			}
		}
	}
	return st, nil
}

// missing returns the first needed fact that recorded does not hold, as a
// KindMissingEvent problem, or nil.
func (st *state) missing(recorded func(fact) bool, head int64) *Problem {
	for _, f := range st.order {
		if recorded(f) {
			continue
		}
		typ := string(f.typ)
		if f.typ == rekey.AuditVersionCreated {
			typ = "version.created or version.adopted"
		}
		return &Problem{Seq: head + 1, Kind: KindMissingEvent, Message: fmt.Sprintf(
			"%s, but the trail has no %s event for it: events were deleted (the trail cut short or re-hashed while the state moved on)", st.need[f], typ)}
	}
	return nil
}

// eventFacts returns the facts e records.
func eventFacts(e rekey.AuditEvent) []fact {
	switch e.Type {
	case rekey.AuditKeyCreated:
		return []fact{{typ: e.Type, key: e.Key}}
	case rekey.AuditVersionCreated, rekey.AuditVersionAdopted:
		return []fact{{typ: rekey.AuditVersionCreated, key: e.Key, version: e.ToVersion}}
	case rekey.AuditRotationCommitted:
		return []fact{{typ: e.Type, key: e.Key, version: e.ToVersion}}
	case rekey.AuditVersionPendingRetirement, rekey.AuditVersionRetired, rekey.AuditVersionDestroyed, rekey.AuditVersionCompromised:
		return []fact{{typ: e.Type, key: e.Key, version: e.FromVersion}}
	case rekey.AuditRotationStarted, rekey.AuditRotationCompleted:
		return []fact{{typ: e.Type, rotation: e.RotationID}}
	}
	return nil
}

// statesAfter lists, for an event that moves a version into a state, the
// states the version may be in since (states only move forward).
var statesAfter = map[rekey.AuditType][]rekey.VersionState{
	rekey.AuditVersionPendingRetirement: {rekey.VersionPendingRetirement, rekey.VersionRetired, rekey.VersionDestroyed, rekey.VersionCompromised},
	rekey.AuditVersionRetired:           {rekey.VersionRetired, rekey.VersionDestroyed, rekey.VersionCompromised},
	rekey.AuditVersionDestroyed:         {rekey.VersionDestroyed},
	rekey.AuditVersionCompromised:       {rekey.VersionCompromised, rekey.VersionRetired, rekey.VersionDestroyed},
}

// contradiction says what of e the state contradicts, or "".
func contradiction(e rekey.AuditEvent, keys map[string]bool, versions map[fact]rekey.VersionState, rotations map[string]rekey.Rotation) string {
	if e.Key != "" && !keys[e.Key] {
		return fmt.Sprintf("something happened to key %q, which the store does not hold", e.Key)
	}
	// A failure may name a rotation whose claim did not commit.
	if e.RotationID != "" && e.Type != rekey.AuditRotationFailed {
		r, ok := rotations[e.RotationID]
		switch {
		case !ok:
			return fmt.Sprintf("something happened in rotation %s, which the store does not hold", e.RotationID)
		case r.Key != e.Key:
			return fmt.Sprintf("rotation %s is of key %q, but the store's is of key %q", e.RotationID, e.Key, r.Key)
		case e.Type == rekey.AuditRotationCompleted && r.State != rekey.RotationDone:
			return fmt.Sprintf("rotation %s completed, but the store has it %s", e.RotationID, r.State)
		}
	}
	switch e.Type {
	case rekey.AuditVersionCreated, rekey.AuditVersionAdopted, rekey.AuditRotationCommitted:
		st, ok := versions[fact{key: e.Key, version: e.ToVersion}]
		if !ok {
			return fmt.Sprintf("key %q has a version %d, which the store does not hold", e.Key, e.ToVersion)
		}
		if e.Type == rekey.AuditRotationCommitted && st == rekey.VersionCreated {
			return fmt.Sprintf("key %q version %d became active, but the store has it %s", e.Key, e.ToVersion, st)
		}
	}
	if allowed, ok := statesAfter[e.Type]; ok {
		st, found := versions[fact{key: e.Key, version: e.FromVersion}]
		if !found {
			return fmt.Sprintf("key %q version %d changed state, but the store does not hold that version", e.Key, e.FromVersion)
		}
		if !slices.Contains(allowed, st) {
			return fmt.Sprintf("key %q version %d entered the state of %s, but the store has it %s", e.Key, e.FromVersion, e.Type, st)
		}
	}
	return ""
}

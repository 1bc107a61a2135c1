package rekey

import (
	"fmt"
	"time"
)

// This file is the one home of the rules that several packages need (the
// engine, plan, status, metrics, the report): each is a pure function of
// stored facts, so that every caller gets the same answer.

// Progress is the re-wrap progress of r, 0..1: the DEKs dealt with (re-wrapped
// or found unusable and skipped) over the DEKs counted when the re-wrap
// started. A committed or done rotation is at 1; one that has not counted
// yet is at 0.
func (r Rotation) Progress() float64 {
	switch {
	case r.State == RotationDone || r.State == RotationCommitted:
		return 1
	case r.Total <= 0:
		return 0
	}
	return min(1, float64(r.Done+r.Failed)/float64(r.Total))
}

// VersionAction is what the rotation worker does next with a version that
// is not the active one.
type VersionAction string

// Version actions, as DecideVersion returns them and `rekey plan` prints
// them.
const (
	VersionKeep    VersionAction = "keep"    // active, or nothing to do
	VersionWait    VersionAction = "wait"    // pending retirement, grace not over
	VersionRetire  VersionAction = "retire"  // grace over and no DEK references it
	VersionBlocked VersionAction = "blocked" // due to retire (or disable) but DEKs reference it: re-wrap first
	VersionDestroy VersionAction = "destroy" // retired longer than destroy_after
	VersionDisable VersionAction = "disable" // compromised and unused: disable at the backend
)

// VersionFacts is what DecideVersion looks at: a key, one of its versions,
// how many DEKs reference that version (a real count), and whether a
// rotation of the key is open (it re-wraps those DEKs itself).
type VersionFacts struct {
	Key          Key
	Version      KeyVersion
	DEKs         int64
	RotationOpen bool
}

// VersionDecision is DecideVersion's answer: the action, when a waiting
// action becomes due (At: end of the grace, or when destroy is due), and a
// sentence saying why.
type VersionDecision struct {
	Action VersionAction `json:"action"`
	At     time.Time     `json:"at,omitzero"`
	Why    string        `json:"why,omitempty"`
}

// RetirementBlocked reports whether the version should have retired (or,
// compromised, been disabled) by now but DEKs still reference it: the
// rekey_retirement_blocked signal.
func (d VersionDecision) RetirementBlocked() bool { return d.Action == VersionBlocked }

// DecideVersion is rule 5 in one place: a pending_retirement version
// retires only when its grace has passed and a count shows zero DEKs on it;
// with DEKs left it is blocked (they are re-wrapped first). A compromised
// version that is not active is disabled at the backend once unused, and is
// blocked while DEKs reference it and no rotation is re-wrapping them away.
// A retired version is destroyed once destroy_after has passed since it
// retired, when the policy says so. While a rotation is open, a version's
// DEKs are being re-wrapped by it: nothing is reported blocked then.
func DecideVersion(f VersionFacts, now time.Time) VersionDecision {
	v, k := f.Version, f.Key
	if v.Version == k.ActiveVersion {
		return VersionDecision{Action: VersionKeep}
	}
	switch v.State {
	case VersionPendingRetirement:
		switch {
		case v.RetireAfter.After(now):
			return VersionDecision{Action: VersionWait, At: v.RetireAfter, Why: "grace until " + v.RetireAfter.UTC().Format(time.RFC3339)}
		case f.DEKs > 0 && f.RotationOpen:
			return VersionDecision{Action: VersionWait, Why: fmt.Sprintf("%d DEK(s) still reference it; the open rotation re-wraps them", f.DEKs)}
		case f.DEKs > 0:
			return VersionDecision{Action: VersionBlocked, Why: fmt.Sprintf("%d DEK(s) still reference it: they are re-wrapped first; it retires once none is left", f.DEKs)}
		}
		return VersionDecision{Action: VersionRetire, Why: "grace over and no DEK references it"}
	case VersionCompromised:
		switch {
		case f.DEKs > 0 && f.RotationOpen:
			return VersionDecision{Action: VersionWait, Why: fmt.Sprintf("%d DEK(s) still reference it; the open rotation re-wraps them first", f.DEKs)}
		case f.DEKs > 0:
			return VersionDecision{Action: VersionBlocked, Why: fmt.Sprintf("%d DEK(s) still reference it: re-wrapped first, then it is disabled at the backend", f.DEKs)}
		}
		return VersionDecision{Action: VersionDisable, Why: "disabled at the backend; stays compromised in the store"}
	case VersionRetired:
		if k.Policy.DestroyAfter <= 0 {
			return VersionDecision{Action: VersionKeep}
		}
		since := v.RetiredAt
		if since.IsZero() {
			since = v.RetireAfter
		}
		at := since.Add(k.Policy.DestroyAfter)
		if at.After(now) {
			return VersionDecision{Action: VersionKeep, At: at, Why: "destroyed after " + at.UTC().Format(time.RFC3339)}
		}
		return VersionDecision{Action: VersionDestroy, At: at, Why: "retired longer than destroy_after"}
	}
	return VersionDecision{Action: VersionKeep}
}

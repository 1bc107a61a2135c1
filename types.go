package rekey

import (
	"regexp"
	"time"
)

// VersionState is the life-cycle state of one root-key version.
type VersionState string

// Version states. A version is created (by a rotation, before it commits),
// becomes active at commit, pending_retirement when a newer version commits,
// then retired once no DEK references it and its grace has passed, and
// optionally destroyed. A compromised version is re-wrapped away first and
// then refused for unwrap.
const (
	VersionCreated           VersionState = "created"
	VersionActive            VersionState = "active"
	VersionPendingRetirement VersionState = "pending_retirement"
	VersionRetired           VersionState = "retired"
	VersionDestroyed         VersionState = "destroyed"
	VersionCompromised       VersionState = "compromised"
)

// Usable reports whether DEKs wrapped under a version in state s may still
// be unwrapped.
func (s VersionState) Usable() bool {
	switch s {
	case VersionCreated, VersionActive, VersionPendingRetirement:
		return true
	}
	return false
}

// Valid reports whether s is one of the defined states.
func (s VersionState) Valid() bool {
	switch s {
	case VersionCreated, VersionActive, VersionPendingRetirement, VersionRetired, VersionDestroyed, VersionCompromised:
		return true
	}
	return false
}

// Policy says when a root key rotates and what happens to old versions.
// Zero durations are meaningful (grace 0 retires at once); DestroyAfter 0
// means never destroy.
type Policy struct {
	RotationPeriod time.Duration `json:"rotation_period"`
	RotateWithin   time.Duration `json:"rotate_within"`
	NotifyWithin   time.Duration `json:"notify_within"`
	Grace          time.Duration `json:"grace"`
	DestroyAfter   time.Duration `json:"destroy_after"` // 0 = never
	// MaxEncryptions is how many wraps one version may do
	// (DefaultMaxEncryptions, 2^30); wraps past it are refused until the
	// key rotates. RotateAt is the fraction of it at which the key is due
	// by usage (DefaultRotateAt, 0.8). Zero means the default. See usage.go.
	MaxEncryptions int64   `json:"max_encryptions"`
	RotateAt       float64 `json:"rotate_at"`
}

// DefaultPolicy is the policy of DESIGN.md: 90-day period, due 7 days before
// expiry, "due soon" 14 days before, 7 days of grace, never destroyed.
func DefaultPolicy() Policy {
	return Policy{
		RotationPeriod: 90 * Day,
		RotateWithin:   7 * Day,
		NotifyWithin:   14 * Day,
		Grace:          7 * Day,
		MaxEncryptions: DefaultMaxEncryptions,
		RotateAt:       DefaultRotateAt,
	}
}

// Validate reports the first field that is out of range, by its config
// name, or a pair of windows that contradict each other: rotate_within
// must be shorter than rotation_period (else the key rotates on every
// worker cycle) and notify_within at least rotate_within (else the key is
// due before it is due soon). The error matches ErrInvalidArgument.
func (p Policy) Validate() error {
	switch {
	case p.RotationPeriod <= 0:
		return Invalidf("rotation_period must be positive (e.g. 90d)")
	case p.RotateWithin < 0:
		return Invalidf("rotate_within must not be negative")
	case p.NotifyWithin < 0:
		return Invalidf("notify_within must not be negative")
	case p.Grace < 0:
		return Invalidf("grace must not be negative")
	case p.DestroyAfter < 0:
		return Invalidf("destroy_after must not be negative (use never)")
	case p.RotateWithin >= p.RotationPeriod:
		return Invalidf("rotate_within %s is not shorter than rotation_period %s: the key would be due again right after each rotation and rotate on every worker cycle; set rotate_within well below rotation_period (the defaults are 7d within 90d)",
			FormatDuration(p.RotateWithin), FormatDuration(p.RotationPeriod))
	case p.NotifyWithin < p.RotateWithin:
		return Invalidf("notify_within %s is shorter than rotate_within %s: the key would be due before it is reported due soon; set notify_within to %s or more",
			FormatDuration(p.NotifyWithin), FormatDuration(p.RotateWithin), FormatDuration(p.RotateWithin))
	}
	return p.validateUsage()
}

// Key is a root key: a name, the backend holding it, the backend's reference
// for it, its policy and its active version.
type Key struct {
	Name          string    `json:"name"`
	Backend       string    `json:"backend"`
	BackendRef    string    `json:"backend_ref"`
	ActiveVersion int       `json:"active_version"`
	ExpiresAt     time.Time `json:"expires_at"` // when the active version's period ends
	Policy        Policy    `json:"policy"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// Due reports whether the key should rotate at now: expires_at - now <=
// rotate_within.
func (k Key) Due(now time.Time) bool { return !k.ExpiresAt.After(now.Add(k.Policy.RotateWithin)) }

// DueSoon reports whether the key is within notify_within of its expiry.
func (k Key) DueSoon(now time.Time) bool { return !k.ExpiresAt.After(now.Add(k.Policy.NotifyWithin)) }

// Overdue reports whether the active version's period has ended.
func (k Key) Overdue(now time.Time) bool { return !k.ExpiresAt.After(now) }

// KeyVersion is one version of a root key.
type KeyVersion struct {
	Key         string       `json:"key"`
	Version     int          `json:"version"`
	State       VersionState `json:"state"`
	CreatedAt   time.Time    `json:"created_at"`
	ActivatedAt time.Time    `json:"activated_at,omitzero"`
	// ExpiresAt is when this version's rotation period ends (or ended): set
	// when it becomes active (activation + the rotation_period in force),
	// moved by a policy change while it is active, kept afterwards. It is
	// the typed record of "the period in force" that lateness is judged
	// against; zero for a version that was never active.
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	RetireAfter time.Time `json:"retire_after,omitzero"` // set when it becomes pending_retirement
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	DestroyedAt time.Time `json:"destroyed_at,omitzero"`
	// Backend and BackendRef say where this version lives: the configured
	// backend name and that backend's reference for the key. Empty means
	// the key's (Key.Backend, Key.BackendRef): every version written before
	// versions knew their backend. A key moved to another backend (rekey
	// key move) has versions on both; PlacementOf resolves them.
	Backend    string `json:"backend,omitempty"`
	BackendRef string `json:"backend_ref,omitempty"`
	// BackendVersion is this version's number at its backend; 0 means the
	// same as Version. They differ after a move: rekey's version 4 may be
	// version 1 of the key on the target backend. Wraps and unwraps use
	// the backend's number; DEKs, rotations and audit events use rekey's.
	BackendVersion int `json:"backend_version,omitempty"`
}

// DEK is a data-encryption key as stored: wrapped under one version of one
// root key. rekey never stores a plaintext DEK.
type DEK struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"`
	Version   int       `json:"version"`
	Wrapped   []byte    `json:"-"`
	Label     string    `json:"label,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// RotationState is the state of a persisted rotation.
type RotationState string

// Rotation states, in order: claimed → version_created → rewrapping →
// committed → done. Only done is terminal; an interrupted rotation is resumed
// from the state it reached.
const (
	RotationClaimed        RotationState = "claimed"
	RotationVersionCreated RotationState = "version_created"
	RotationRewrapping     RotationState = "rewrapping"
	RotationCommitted      RotationState = "committed"
	RotationDone           RotationState = "done"
)

// Open reports whether a rotation in state s still has work to do.
func (s RotationState) Open() bool { return s != RotationDone }

// RotationReason says why a rotation started.
type RotationReason string

// Rotation reasons.
const (
	ReasonScheduled RotationReason = "scheduled"
	ReasonManual    RotationReason = "manual"
	ReasonEmergency RotationReason = "emergency"
	ReasonUsage     RotationReason = "usage"
	ReasonMove      RotationReason = "move"
)

// Rotation is the persisted record of one rotation of one key.
type Rotation struct {
	ID          string         `json:"id"`
	Key         string         `json:"key"`
	FromVersion int            `json:"from_version"`
	ToVersion   int            `json:"to_version"` // 0 until recorded
	State       RotationState  `json:"state"`
	Reason      RotationReason `json:"reason"`
	Note        string         `json:"note,omitempty"`        // free text given with --reason
	Compromised int            `json:"compromised,omitempty"` // emergency: the version to re-wrap away first
	// ToBackend, set for a move (rekey key move), names the backend the new
	// version is created on; empty means the key's own backend. It never
	// changes once the rotation is stored.
	ToBackend  string    `json:"to_backend,omitempty"`
	Total      int64     `json:"deks_total"`            // DEKs to re-wrap, counted when re-wrapping starts
	Done       int64     `json:"deks_done"`             // DEKs re-wrapped so far
	Failed     int64     `json:"deks_failed"`           // DEKs that could not be unwrapped
	Cursor     string    `json:"cursor,omitempty"`      // last DEK id checkpointed
	FailedDEKs []string  `json:"failed_deks,omitempty"` // ids of DEKs that could not be unwrapped (first 100)
	StartedAt  time.Time `json:"started_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	Owner      string    `json:"owner"`
	Epoch      int64     `json:"epoch"`
	LastError  string    `json:"last_error,omitempty"`
}

// Lease is a worker's claim on one key. Every engine write carries it and the
// store refuses the write (ErrFenced) when Epoch is no longer current.
type Lease struct {
	Key       string    `json:"key"`
	Owner     string    `json:"owner"`
	Epoch     int64     `json:"epoch"`
	ExpiresAt time.Time `json:"expires_at"`
}

var keyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateKeyName reports whether name may name a root key: 1 to 63
// characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit.
func ValidateKeyName(name string) error {
	if !keyNameRE.MatchString(name) {
		return Invalidf("key name %q: use 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit", name)
	}
	return nil
}

// NormalizeTime returns t in UTC truncated to microseconds, the precision
// every store keeps, so that a time read back equals the time written.
func NormalizeTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Microsecond)
}

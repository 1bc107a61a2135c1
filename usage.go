package rekey

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Rotation by usage: AES-GCM with random 96-bit nonces may encrypt at most
// 2^32 messages under one key (NIST SP 800-38D, section 8.3) before the
// chance of a repeated nonce, which breaks both confidentiality and
// authenticity, passes 2^-32. rekey counts every wrap under every key
// version, rotates a key whose active version has done rotate_at of its
// max_encryptions, and refuses wraps past max_encryptions until the
// rotation has run.

const (
	// DefaultMaxEncryptions is the default of Policy.MaxEncryptions: 2^30
	// wraps per key version. Four times below the 2^32 bound of AES-GCM
	// with random nonces, it keeps the chance of a nonce collision under
	// 2^-37 (q^2 / 2^97 for q nonces of 96 bits), and leaves room for the
	// counting's over-estimate (counts reserved by a process that then
	// died are counted as done). It applies to every backend: local,
	// pkcs11 and vault wrap with AES-GCM and random 96-bit nonces; AWS KMS
	// and Key Protect do not publish a per-key bound, and 2^30 is far
	// above what a root key wrapping DEKs does in a rotation period.
	DefaultMaxEncryptions int64 = 1 << 30
	// MaxMaxEncryptions is the largest max_encryptions accepted: the bound
	// for AES-GCM with random 96-bit nonces.
	MaxMaxEncryptions int64 = 1 << 32
	// DefaultRotateAt is the default of Policy.RotateAt: a key is due when
	// its active version has done 80% of max_encryptions.
	DefaultRotateAt = 0.8
)

// EffectiveMaxEncryptions is p.MaxEncryptions, or DefaultMaxEncryptions
// when it is 0 (a Policy built in Go without the field).
func (p Policy) EffectiveMaxEncryptions() int64 {
	if p.MaxEncryptions == 0 {
		return DefaultMaxEncryptions
	}
	return p.MaxEncryptions
}

// EffectiveRotateAt is p.RotateAt, or DefaultRotateAt when it is 0.
func (p Policy) EffectiveRotateAt() float64 {
	if p.RotateAt == 0 {
		return DefaultRotateAt
	}
	return p.RotateAt
}

// Normalized is p with the usage defaults filled in (0 becomes
// DefaultMaxEncryptions and DefaultRotateAt), for comparing policies.
func (p Policy) Normalized() Policy {
	p.MaxEncryptions, p.RotateAt = p.EffectiveMaxEncryptions(), p.EffectiveRotateAt()
	return p
}

// validateUsage checks the usage fields of p (Policy.Validate calls it).
// Zero means the default in Go; the config and the CLI refuse an explicit
// 0 themselves.
func (p Policy) validateUsage() error {
	switch {
	case p.MaxEncryptions < 0:
		return Invalidf("max_encryptions must be at least 1 (got %d); the default is %d (2^30)", p.MaxEncryptions, DefaultMaxEncryptions)
	case p.MaxEncryptions > MaxMaxEncryptions:
		return Invalidf("max_encryptions %d is above %d (2^32), the bound for AES-GCM with random nonces (NIST SP 800-38D): use %d (2^30) or less", p.MaxEncryptions, MaxMaxEncryptions, DefaultMaxEncryptions)
	case math.IsNaN(p.RotateAt) || p.RotateAt < 0 || p.RotateAt > 1:
		return Invalidf("rotate_at must be a fraction above 0 and at most 1 (got %g); the default is %g: the key is due when its active version did rotate_at × max_encryptions wraps", p.RotateAt, DefaultRotateAt)
	}
	return nil
}

// UsageThreshold is the wrap count at which the active version makes the
// key due by usage: rotate_at × max_encryptions, rounded up, at least 1.
func (p Policy) UsageThreshold() int64 {
	m := p.EffectiveMaxEncryptions()
	t := int64(math.Ceil(p.EffectiveRotateAt() * float64(m)))
	return max(1, min(t, m))
}

// Usage is a key version's wrap count against its key's limit.
type Usage struct {
	// Encryptions is the number of wraps counted under the version: never
	// fewer than were done (see UsageCounter), possibly more.
	Encryptions int64 `json:"encryptions"`
	// Max is the key's max_encryptions; Threshold the count at which the
	// key is due (rotate_at × max).
	Max       int64 `json:"max_encryptions"`
	Threshold int64 `json:"rotate_at_encryptions"`
}

// UsageOf returns the usage of a version of k that did n wraps.
func UsageOf(k Key, n int64) Usage {
	return Usage{Encryptions: n, Max: k.Policy.EffectiveMaxEncryptions(), Threshold: k.Policy.UsageThreshold()}
}

// Ratio is Encryptions over Max (0 when Max is not set).
func (u Usage) Ratio() float64 {
	if u.Max <= 0 {
		return 0
	}
	return float64(u.Encryptions) / float64(u.Max)
}

// Due reports whether the count reached the threshold.
func (u Usage) Due() bool { return u.Max > 0 && u.Encryptions >= u.Threshold }

// Exhausted reports whether the count reached max_encryptions: new wraps
// are refused.
func (u Usage) Exhausted() bool { return u.Max > 0 && u.Encryptions >= u.Max }

// RotationDue is the one rule that says whether key k is due to rotate at
// now, and why: by schedule (expires_at - now <= rotate_within, reason
// scheduled) or, when not, because its active version did activeWraps
// wraps, at least rotate_at × max_encryptions (reason usage). Every caller
// (the engine, plan, status, the report) decides through it.
func RotationDue(k Key, now time.Time, activeWraps int64) (RotationReason, bool) {
	if k.Due(now) {
		return ReasonScheduled, true
	}
	if UsageOf(k, activeWraps).Due() {
		return ReasonUsage, true
	}
	return "", false
}

// UsageCounter is a backend, or the backend middleware, that counts the
// wraps under each key version (Wrap, Rewrap and each item of RewrapBatch
// count one). The count is authoritative and crash-safe: counts are
// recorded before they are used, so it never reads lower than the number
// of wraps done, even after a process was killed; it may read higher
// (counts recorded by a process that died before using them).
type UsageCounter interface {
	// Encryptions returns the count of version of ref. It returns
	// ErrKeyNotFound or ErrVersionNotFound where the counter knows the
	// key, and ErrUnsupported when nothing counts this backend's wraps.
	Encryptions(ctx context.Context, ref string, version int) (int64, error)
}

// UsageLimitError is a wrap refused because the version did as many wraps
// as its key allows. It matches ErrUsageLimit.
type UsageLimitError struct {
	Backend string // the backend name, when known
	Ref     string // the backend's reference of the key
	Version int    // the version at the backend
	Count   int64  // wraps counted
	Limit   int64  // max_encryptions
}

func (e *UsageLimitError) Error() string {
	where := fmt.Sprintf("key %q version %d", e.Ref, e.Version)
	if e.Backend != "" {
		where = fmt.Sprintf("backend %s key %q version %d", e.Backend, e.Ref, e.Version)
	}
	return fmt.Sprintf("%s did %d wraps, its limit max_encryptions=%d: %v; the next rotation (rekey run, or rekey rotate) makes a new version, which is not limited by this count", where, e.Count, e.Limit, ErrUsageLimit)
}

// Unwrap makes errors.Is(err, ErrUsageLimit) hold.
func (e *UsageLimitError) Unwrap() error { return ErrUsageLimit }

// WrapReservation asks a WrapCounter for N more wraps under Version of
// Ref at Backend, without passing Limit (max_encryptions; 0 means none).
type WrapReservation struct {
	Backend string
	Ref     string
	Version int
	N       int64
	Limit   int64
}

// WrapCounter is the store's count of wraps under the key versions of
// backends that do not count their own (kms/kmsmw reserves through it
// before each wrap). Counts are kept per backend key version: backend
// name, backend reference and version at the backend (a Placement), so
// that a key moved to another backend counts each backend's key material
// on its own.
type WrapCounter interface {
	// ReserveWraps adds min(r.N, r.Limit - count) to the count of the
	// version (all of r.N when r.Limit is 0), in one transaction, and
	// returns the new total and how many it added. With nothing left
	// under r.Limit it adds nothing and returns a *UsageLimitError. It
	// returns ErrInvalidArgument when r.N < 1, r.Limit < 0, r.Version < 1
	// or r.Backend or r.Ref is empty. A version never counted starts at 0.
	ReserveWraps(ctx context.Context, r WrapReservation) (total, granted int64, err error)
	// WrapCount returns the count of the version: 0 when never counted.
	WrapCount(ctx context.Context, backend, ref string, version int) (int64, error)
}

// ValidateWrapReservation reports what is wrong with r, for stores.
func ValidateWrapReservation(r WrapReservation) error {
	switch {
	case r.Backend == "" || r.Ref == "":
		return Invalidf("reserve wraps: backend and ref are required")
	case r.Version < 1:
		return Invalidf("reserve wraps: version %d: versions start at 1", r.Version)
	case r.N < 1:
		return Invalidf("reserve wraps: n %d: reserve at least 1", r.N)
	case r.Limit < 0:
		return Invalidf("reserve wraps: limit %d: use 0 for none", r.Limit)
	}
	return nil
}

// GrantWraps is the rule every store applies to a reservation: given the
// current count, how many of r.N it grants, or the *UsageLimitError.
func GrantWraps(r WrapReservation, count int64) (int64, error) {
	if r.Limit == 0 {
		return r.N, nil
	}
	if count >= r.Limit {
		return 0, &UsageLimitError{Backend: r.Backend, Ref: r.Ref, Version: r.Version, Count: count, Limit: r.Limit}
	}
	return min(r.N, r.Limit-count), nil
}

// VersionUsage returns the wrap count of version v of key k against its
// limit: from the backend when it counts its own wraps (the local
// keyring), else from the store, through the backend middleware. It
// returns an error matching ErrUnsupported when nothing counts them. Status, plan, the engine,
// the metrics and the report all read counts through it.
func VersionUsage(ctx context.Context, backends map[string]KMS, k Key, v KeyVersion) (Usage, error) {
	p := PlacementOf(k, v)
	b, ok := backends[p.Backend]
	if !ok {
		return Usage{}, fmt.Errorf("key %s version %d: backend %q is not configured", k.Name, v.Version, p.Backend)
	}
	uc, ok := b.(UsageCounter)
	if !ok {
		return Usage{}, fmt.Errorf("key %s: backend %s: %w", k.Name, p.Backend, ErrUnsupported)
	}
	n, err := uc.Encryptions(ctx, p.Ref, p.Version)
	if err != nil {
		return Usage{}, fmt.Errorf("key %s version %d: wrap count: %w", k.Name, v.Version, err)
	}
	return UsageOf(k, n), nil
}

// UsageTooLow is why a key due by usage is not rotated: a rotation
// re-wraps every one of the key's DEKs under the new version, and each
// re-wrap counts as a wrap under it, so when the rotation that made the
// active version already re-wrapped at least the threshold (rotate_at ×
// max_encryptions), and the key still has that many DEKs, another
// rotation by usage would be due again as soon as it ended: it would
// start every cycle. The engine then starts none (a rotation by schedule
// still runs) and reports it; the fix is a higher max_encryptions.
type UsageTooLow struct {
	// DEKs is the number of DEKs a rotation of the key re-wraps now.
	DEKs int64 `json:"deks"`
	// Rewrapped is the number of DEKs the rotation that made the active
	// version re-wrapped (wraps counted under it by that rotation alone).
	Rewrapped int64 `json:"rewrapped_by_last_rotation"`
	// MaxEncryptions and Threshold are the key's max_encryptions and
	// rotate_at × max_encryptions.
	MaxEncryptions int64 `json:"max_encryptions"`
	Threshold      int64 `json:"rotate_at_encryptions"`
	// MinMaxEncryptions is the smallest max_encryptions that works
	// (Policy.MinMaxEncryptions); 0 when none up to 2^32 does.
	MinMaxEncryptions int64 `json:"min_max_encryptions"`
}

// String says what is wrong and how to fix it, for logs, plan and status.
func (u UsageTooLow) String() string {
	fix := fmt.Sprintf("set max_encryptions to at least %d (the key's max_encryptions in the config's keys: entry, or rekey key create --max-encryptions for a new key)", u.MinMaxEncryptions)
	if u.MinMaxEncryptions == 0 {
		fix = fmt.Sprintf("no max_encryptions up to %d (2^32) works: spread the DEKs over more keys", MaxMaxEncryptions)
	}
	return fmt.Sprintf("due by usage, but max_encryptions %d is too low for the key's %d DEKs: its last rotation re-wrapped %d, counted as wraps under the new version, at or above the threshold %d (rotate_at × max_encryptions), so another would be due again at once; no rotation by usage is started: %s",
		u.MaxEncryptions, u.DEKs, u.Rewrapped, u.Threshold, fix)
}

// MinMaxEncryptions is the smallest max_encryptions (at p's rotate_at)
// with which a key of deks DEKs is not due by usage right after a
// rotation, with room for the count's over-estimate: while the process
// that re-wrapped runs, counts it reserved in doubling blocks but did not
// use are counted too, so the count can read up to twice the re-wraps. It
// is the smallest m whose threshold exceeds 2 × deks, or 0 when no m up
// to MaxMaxEncryptions does.
func (p Policy) MinMaxEncryptions(deks int64) int64 {
	need := 2*max(deks, 0) + 1 // the threshold must reach this
	ra := p.EffectiveRotateAt()
	m := max(1, int64(math.Floor(float64(need)/ra)))
	threshold := func(m int64) int64 {
		q := p
		q.MaxEncryptions = m
		return q.UsageThreshold()
	}
	for m > 1 && threshold(m-1) >= need {
		m--
	}
	for m <= MaxMaxEncryptions && threshold(m) < need {
		m++
	}
	if m > MaxMaxEncryptions {
		return 0
	}
	return m
}

// CheckUsageLimit says whether p's max_encryptions is too low for a key
// with deks DEKs (all of them: rekey's store and the DEK sources): a
// rotation would re-wrap at least the threshold. It returns nil when not.
// Rewrapped is left 0: UsageRotationBlocked fills it.
func CheckUsageLimit(p Policy, deks int64) *UsageTooLow {
	if deks < p.UsageThreshold() {
		return nil
	}
	return &UsageTooLow{DEKs: deks, MaxEncryptions: p.EffectiveMaxEncryptions(), Threshold: p.UsageThreshold(), MinMaxEncryptions: p.MinMaxEncryptions(deks)}
}

// UsageRotationBlocked is the rule every caller applies to a key k due
// for reason (rekey.RotationDue): when the reason is usage, the rotation
// that made the active version re-wrapped rewrapped DEKs (LastRewrapped),
// at least the threshold, and the key still has deks at least the
// threshold, another rotation by usage would loop, and it returns why; no
// rotation starts. A key never rotated gets its first rotation by usage
// (it may be the one that shows the loop); a key due by schedule is never
// blocked.
func UsageRotationBlocked(k Key, reason RotationReason, deks, rewrapped int64) *UsageTooLow {
	if reason != ReasonUsage || rewrapped < k.Policy.UsageThreshold() {
		return nil
	}
	tl := CheckUsageLimit(k.Policy, deks)
	if tl != nil {
		tl.Rewrapped = rewrapped
	}
	return tl
}

// LastRewrapped is the number of DEKs re-wrapped by the rotation that made
// k's active version (the newest committed or done rotation to it, among
// the key's last 20), 0 when none did (a key never rotated). It returns
// the store's error.
func LastRewrapped(ctx context.Context, s Store, k Key) (int64, error) {
	rs, err := s.ListRotations(ctx, RotationQuery{Key: k.Name, Limit: 20})
	if err != nil {
		return 0, fmt.Errorf("key %s: rotations: %w", k.Name, err)
	}
	for _, r := range rs {
		if r.ToVersion == k.ActiveVersion && (r.State == RotationDone || r.State == RotationCommitted) {
			return r.Done, nil
		}
	}
	return 0, nil
}

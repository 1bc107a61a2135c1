// Package status builds the read-only views of keys, versions and
// rotations that `rekey key show`, `rekey status` and the HTTP API print.
// One builder serves all of them, so /api/v1/status and `rekey status
// --json` cannot drift apart.
package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
)

// PolicyView is a policy with durations as text ("90d", "never").
type PolicyView struct {
	RotationPeriod string `json:"rotation_period"`
	RotateWithin   string `json:"rotate_within"`
	NotifyWithin   string `json:"notify_within"`
	Grace          string `json:"grace"`
	DestroyAfter   string `json:"destroy_after"`
	// MaxEncryptions and RotateAt are the usage limit in force (the
	// defaults filled in): see rekey.Policy.
	MaxEncryptions int64   `json:"max_encryptions"`
	RotateAt       float64 `json:"rotate_at"`
}

// NewPolicyView renders p.
func NewPolicyView(p rekey.Policy) PolicyView {
	destroy := "never"
	if p.DestroyAfter > 0 {
		destroy = rekey.FormatDuration(p.DestroyAfter)
	}
	return PolicyView{
		RotationPeriod: rekey.FormatDuration(p.RotationPeriod),
		RotateWithin:   rekey.FormatDuration(p.RotateWithin),
		NotifyWithin:   rekey.FormatDuration(p.NotifyWithin),
		Grace:          rekey.FormatDuration(p.Grace),
		DestroyAfter:   destroy,
		MaxEncryptions: p.EffectiveMaxEncryptions(),
		RotateAt:       p.EffectiveRotateAt(),
	}
}

// VersionView is one version with the number of DEKs wrapped under it.
type VersionView struct {
	Version     int                `json:"version"`
	State       rekey.VersionState `json:"state"`
	DEKs        int64              `json:"deks"`
	CreatedAt   time.Time          `json:"created_at"`
	RetireAfter *time.Time         `json:"retire_after"`
	RetiredAt   *time.Time         `json:"retired_at,omitempty"`
	// RetirementBlocked is rekey.DecideVersion's verdict (the same as the
	// rekey_retirement_blocked metric): the version should have retired
	// (grace over) or, compromised, been disabled, but DEKs still reference
	// it and no rotation of the key is re-wrapping them. The DEKs counted
	// are rekey's own and, when the view has them (Options.SourceCounts),
	// the rows of the DEK sources that gate the retirement (BlockingDEKs).
	RetirementBlocked bool `json:"retirement_blocked,omitempty"`
	// Backend and BackendVersion say where the version lives (a key moved
	// with rekey key move has versions on more than one backend) and its
	// number there (rekey.PlacementOf).
	Backend        string `json:"backend"`
	BackendVersion int    `json:"backend_version"`
	// Encryptions is the version's wrap count (rekey.VersionUsage); absent
	// when nothing counts its backend's wraps or it could not be read.
	Encryptions *int64 `json:"encryptions,omitempty"`
}

// KeyView is a key as `rekey key show --json` prints it (contract fields
// name, backend, active_version, expires_at, policy, versions; due and
// overdue as in status).
type KeyView struct {
	Name          string        `json:"name"`
	Backend       string        `json:"backend"`
	ActiveVersion int           `json:"active_version"`
	ExpiresAt     time.Time     `json:"expires_at"`
	Policy        PolicyView    `json:"policy"`
	Versions      []VersionView `json:"versions"`
	DEKs          int64         `json:"deks"`
	Due           bool          `json:"due"`
	// DueReason is why the key is due (rekey.RotationDue): scheduled or
	// usage; empty when it is not.
	DueReason rekey.RotationReason `json:"due_reason,omitempty"`
	// Usage is the active version's wrap count against max_encryptions;
	// absent when it is not counted.
	Usage *rekey.Usage `json:"usage,omitempty"`
	// UsageTooLow is set when the key is due by usage but is not rotated:
	// its max_encryptions is too low for its DEKs (rekey.UsageRotationBlocked),
	// with the minimum that works.
	UsageTooLow *rekey.UsageTooLow `json:"usage_too_low,omitempty"`
	DueSoon     bool               `json:"due_soon"`
	Overdue     bool               `json:"overdue"`
	// ExpiresIn is expires_at - now in seconds (negative when overdue).
	ExpiresIn float64 `json:"expires_in_seconds"`
	// Sources counts the key's rows per version in each DEK source (the
	// application's own tables) that may hold rows of it; the DEKs and
	// version counts above are rekey's own store only.
	Sources []SourceCount `json:"sources,omitempty"`

	lastRewrapped int64 // rekey.LastRewrapped, read when due by usage
}

// SourceCount is how many rows of one key a DEK source holds per version,
// or why they could not be counted.
type SourceCount struct {
	Source   string        `json:"source"`
	Versions map[int]int64 `json:"deks_by_version"`
	Error    string        `json:"error,omitempty"`
}

// Options adds to a status view what rekey's store alone cannot say.
type Options struct {
	// SourceCounts, when set, counts each key's rows in the DEK sources
	// (rotation.Engine.SourceCounts); it fills KeyView.Sources.
	SourceCounts func(ctx context.Context, key string) []SourceCount
}

// RotationView is a rotation with its progress.
type RotationView struct {
	rekey.Rotation
	Progress float64 `json:"progress"` // 0..1, r.Progress()
}

// NewRotationView renders r; its progress is rekey.Rotation.Progress.
func NewRotationView(r rekey.Rotation) RotationView {
	return RotationView{Rotation: r, Progress: r.Progress()}
}

// Status is what `rekey status --json` and /api/v1/status print.
type Status struct {
	Time      time.Time      `json:"time"`
	Keys      []KeyView      `json:"keys"`
	Rotations []RotationView `json:"rotations"` // open rotations
	Recent    []RotationView `json:"recent_rotations"`
}

// Key builds the view of the key called name, with wrap counts read
// through backends (nil: none). It returns rekey.ErrKeyNotFound for an
// unknown name, and the store's error when a read fails.
func Key(ctx context.Context, s rekey.Store, backends map[string]rekey.KMS, name string, now time.Time) (KeyView, error) {
	k, err := s.GetKey(ctx, name)
	if err != nil {
		return KeyView{}, fmt.Errorf("key %s: %w", name, err)
	}
	open := true
	switch _, err := s.OpenRotation(ctx, name); {
	case errors.Is(err, rekey.ErrRotationNotFound):
		open = false
	case err != nil:
		return KeyView{}, fmt.Errorf("key %s: open rotation: %w", name, err)
	}
	return keyView(ctx, s, backends, k, open, now, Options{})
}

// KeyWith is Key with the additions of opt: the key's rows in the DEK
// sources (KeyView.Sources), which count in RetirementBlocked.
func KeyWith(ctx context.Context, s rekey.Store, backends map[string]rekey.KMS, name string, now time.Time, opt Options) (KeyView, error) {
	k, err := s.GetKey(ctx, name)
	if err != nil {
		return KeyView{}, fmt.Errorf("key %s: %w", name, err)
	}
	open := true
	switch _, err := s.OpenRotation(ctx, name); {
	case errors.Is(err, rekey.ErrRotationNotFound):
		open = false
	case err != nil:
		return KeyView{}, fmt.Errorf("key %s: open rotation: %w", name, err)
	}
	return keyView(ctx, s, backends, k, open, now, opt)
}

// BlockingDEKs returns how many DEKs keep version of a key from retiring,
// as the rotation engine's retirement gate counts them: own (rekey's own
// DEKs on it) plus, in every DEK source, the rows on the version and the
// rows whose version is unknown (a NULL version column, counted under 0).
// A source that could not be counted blocks every version (the engine
// retires none while it cannot count): it adds 1.
func BlockingDEKs(own int64, sources []SourceCount, version int) int64 {
	n := own
	for _, sc := range sources {
		if sc.Error != "" {
			n++
			continue
		}
		n += sc.Versions[version]
		if version != 0 {
			n += sc.Versions[0]
		}
	}
	return n
}

// keyView builds k's view; rotationOpen says whether a rotation of k is
// open (it re-wraps the DEKs of older versions, which are then not
// blocked).
func keyView(ctx context.Context, s rekey.Store, backends map[string]rekey.KMS, k rekey.Key, rotationOpen bool, now time.Time, opt Options) (KeyView, error) {
	versions, err := s.ListVersions(ctx, k.Name)
	if err != nil {
		return KeyView{}, fmt.Errorf("key %s: versions: %w", k.Name, err)
	}
	counts, err := s.CountDEKs(ctx, k.Name)
	if err != nil {
		return KeyView{}, fmt.Errorf("key %s: count deks: %w", k.Name, err)
	}
	v := KeyView{
		Name: k.Name, Backend: k.Backend, ActiveVersion: k.ActiveVersion, ExpiresAt: k.ExpiresAt,
		Policy: NewPolicyView(k.Policy), Versions: make([]VersionView, 0, len(versions)),
		Due: k.Due(now), DueSoon: k.DueSoon(now), Overdue: k.Overdue(now),
		ExpiresIn: k.ExpiresAt.Sub(now).Seconds(),
	}
	if opt.SourceCounts != nil {
		v.Sources = opt.SourceCounts(ctx, k.Name)
	}
	for _, kv := range versions {
		pl := rekey.PlacementOf(k, kv)
		vv := VersionView{Version: kv.Version, State: kv.State, DEKs: counts[kv.Version], CreatedAt: kv.CreatedAt,
			Backend: pl.Backend, BackendVersion: pl.Version}
		if !kv.RetireAfter.IsZero() {
			t := kv.RetireAfter
			vv.RetireAfter = &t
		}
		if !kv.RetiredAt.IsZero() {
			t := kv.RetiredAt
			vv.RetiredAt = &t
		}
		if backends != nil && kv.State.Usable() {
			if u, err := rekey.VersionUsage(ctx, backends, k, kv); err == nil {
				n := u.Encryptions
				vv.Encryptions = &n
				if kv.Version == k.ActiveVersion {
					v.Usage = &u
				}
			}
		}
		blocking := BlockingDEKs(vv.DEKs, v.Sources, kv.Version)
		vv.RetirementBlocked = rekey.DecideVersion(rekey.VersionFacts{Key: k, Version: kv, DEKs: blocking, RotationOpen: rotationOpen}, now).RetirementBlocked()
		v.DEKs += vv.DEKs
		v.Versions = append(v.Versions, vv)
	}
	var wraps int64
	if v.Usage != nil {
		wraps = v.Usage.Encryptions
	}
	v.DueReason, v.Due = rekey.RotationDue(k, now, wraps)
	if v.Due && v.DueReason == rekey.ReasonUsage {
		if v.lastRewrapped, err = rekey.LastRewrapped(ctx, s, k); err != nil {
			return KeyView{}, err
		}
	}
	v.usageTooLow(k)
	return v, nil
}

// Build builds the status of every key (wrap counts read through backends;
// nil: none), the open rotations and the ten most recent ones. It returns
// the store's error when a read fails.
func Build(ctx context.Context, s rekey.Store, backends map[string]rekey.KMS, now time.Time) (Status, error) {
	return BuildWith(ctx, s, backends, now, Options{})
}

// BuildWith is Build with the additions of opt (the DEK sources' counts).
func BuildWith(ctx context.Context, s rekey.Store, backends map[string]rekey.KMS, now time.Time, opt Options) (Status, error) {
	keys, err := s.ListKeys(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("list keys: %w", err)
	}
	st := Status{Time: rekey.NormalizeTime(now), Keys: make([]KeyView, 0, len(keys)), Rotations: []RotationView{}, Recent: []RotationView{}}
	open, err := s.ListRotations(ctx, rekey.RotationQuery{OpenOnly: true})
	if err != nil {
		return Status{}, fmt.Errorf("list rotations: %w", err)
	}
	rotating := make(map[string]bool, len(open))
	for _, r := range open {
		rotating[r.Key] = true
		st.Rotations = append(st.Rotations, NewRotationView(r))
	}
	for _, k := range keys {
		v, err := keyView(ctx, s, backends, k, rotating[k.Name], now, opt)
		if err != nil {
			return Status{}, err
		}
		st.Keys = append(st.Keys, v)
	}
	recent, err := s.ListRotations(ctx, rekey.RotationQuery{Limit: 10})
	if err != nil {
		return Status{}, fmt.Errorf("list rotations: %w", err)
	}
	for _, r := range recent {
		st.Recent = append(st.Recent, NewRotationView(r))
	}
	return st, nil
}

// usageTooLow sets v.UsageTooLow from the DEKs a rotation of k would
// re-wrap: those in rekey's store and in the DEK sources counted so far.
func (v *KeyView) usageTooLow(k rekey.Key) {
	deks := v.DEKs
	for _, sc := range v.Sources {
		for _, n := range sc.Versions {
			deks += n
		}
	}
	v.UsageTooLow = rekey.UsageRotationBlocked(k, v.DueReason, deks, v.lastRewrapped)
}

// Package report builds the compliance report of `rekey report`: for a
// period, every root key with its policy and state, every rotation with
// whether it met the key's schedule, the retirements, the problems open
// now, and the result of verifying the audit trail — the evidence an
// auditor asks for under PCI DSS 3.7.4 (cryptoperiods) and SOC 2.
//
// Build gathers the facts from a rekey.Store into a Report; Markdown, JSON
// and HTML render the same facts. The report never carries key material:
// no wrapped or plaintext DEK bytes, and of a key's backend only its name
// (never the backend reference, which for some backends is a URL that
// could hold credentials). Free text taken from the store (errors, notes,
// actors) has URL credentials ("scheme://user:pass@") redacted and control
// characters replaced by spaces.
//
// # On time or late
//
// Each key version has a period: it becomes active when the rotation that
// created it commits (or when the key is created, for version 1) and its
// period ends at the version's expires_at (rekey.KeyVersion.ExpiresAt): set
// at activation to activated_at + the rotation_period in force, moved by a
// policy change while the version is active, kept afterwards. That end is
// the deadline of the rotation away from it:
//
//	deadline = from-version's expires_at
//
// A scheduled rotation is on time when it committed (the new version
// became active, so no new DEK is wrapped under the old one) at or before
// the deadline, and late by committed_at - deadline otherwise. A scheduled
// rotation still open after its deadline is late by now - deadline so far.
// Manual and emergency rotations are not judged against the schedule and
// never count as late; the report still shows their deadline.
//
// The deadline is a typed fact of the store, never read out of audit text:
// a policy change made after the rotation left the version does not move
// it. A version written by a build older than KeyVersion.ExpiresAt has a
// zero expires_at; for it the deadline falls back to activated_at + the
// key's current rotation_period (which a later policy change may have
// moved), and the deadline basis says so.
package report

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/redact"
)

// ChainCheck is the result of verifying the audit chain, made by the caller
// (the audit package verifies; this package only reports).
type ChainCheck struct {
	// Valid is true when every event's hash recomputes and links to the
	// previous one and every checkpoint that could be checked matches.
	Valid bool `json:"valid"`
	// Events is how many events were verified.
	Events int64 `json:"events"`
	// Checkpoints is how many checkpoints were checked.
	Checkpoints int `json:"checkpoints"`
	// LastSeq and HeadHash are the seq and hash of the last event: they pin
	// the report to one state of the trail.
	LastSeq  int64  `json:"last_seq"`
	HeadHash string `json:"head_hash"`
	// FirstBad is "" or a sentence naming the first bad event.
	FirstBad string `json:"first_bad,omitempty"`
	// Unverifiable is "" or a sentence saying what could not be verified
	// (for example: checkpoint MACs, when no backend key was given).
	Unverifiable string `json:"unverifiable,omitempty"`
	// CheckedAt is when the verification ran; zero means it did not run.
	CheckedAt time.Time `json:"checked_at,omitzero"`
}

// Timeliness values of Rotation.Timeliness.
const (
	OnTime     = "on_time"     // a scheduled rotation committed by its deadline
	Late       = "late"        // a scheduled rotation committed (or still open) after its deadline
	Manual     = "manual"      // a manual rotation: not judged against the schedule
	Emergency  = "emergency"   // an emergency rotation: not judged against the schedule
	InProgress = "in_progress" // a scheduled rotation still open, its deadline not yet passed
	Unknown    = "unknown"     // the deadline could not be established from the store
)

// Chain statuses of ChainReport.Status.
const (
	ChainValid        = "valid"              // verified, nothing left unchecked
	ChainValidCaveats = "valid_with_caveats" // verified, but something could not be checked (see Unverifiable)
	ChainInvalid      = "invalid"            // the chain does not verify (see FirstBad)
	ChainNotChecked   = "not_checked"        // no verification was run
)

// Problem kinds of Problem.Kind.
const (
	ProblemChainInvalid         = "audit_chain_invalid"
	ProblemChainNotChecked      = "audit_chain_not_checked"
	ProblemKeyOverdue           = "key_overdue"
	ProblemRotationFailing      = "rotation_failing"
	ProblemRetirementBlocked    = "retirement_blocked"
	ProblemDEKUnwrapFailed      = "dek_unwrap_failed"
	ProblemCompromisedInUse     = "compromised_version_in_use"
	ProblemScheduleUnverifiable = "deadline_unknown"
	// ProblemUsageLimitTooLow: the key is due by usage but its
	// max_encryptions is too low for its DEKs, so it is not rotated.
	ProblemUsageLimitTooLow = "usage_limit_too_low"
)

// Report is the compliance report for one period. Its JSON encoding (see
// JSON) is a contract: field names are stable, times are RFC 3339 in UTC,
// and every duration is given in seconds (a number) and as text.
type Report struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Since is the start of the period; zero (absent in JSON) means the
	// beginning of the store's history.
	Since time.Time `json:"since,omitzero"`
	// Until is the end of the period: the time the report was built.
	Until    time.Time   `json:"until"`
	Summary  Summary     `json:"summary"`
	Problems []Problem   `json:"open_problems"`
	Chain    ChainReport `json:"audit_chain"`
	Keys     []Key       `json:"keys"`
}

// Summary is the paragraph an auditor reads first, and its numbers.
type Summary struct {
	Text       string `json:"text"`
	Keys       int    `json:"keys"`
	Rotations  int    `json:"rotations"`
	OnTime     int    `json:"on_time"`
	Late       int    `json:"late"`
	Manual     int    `json:"manual"`
	Emergency  int    `json:"emergency"`
	InProgress int    `json:"in_progress"`
	Unknown    int    `json:"unknown"`
	// LateRotations lists the ids of the late rotations.
	LateRotations []string `json:"late_rotations"`
	Retirements   int      `json:"retirements"`
	OpenProblems  int      `json:"open_problems"`
	ChainValid    bool     `json:"audit_chain_valid"`
}

// Problem is something wrong now that someone must act on.
type Problem struct {
	Kind       string   `json:"kind"`
	Key        string   `json:"key,omitempty"`
	Version    int      `json:"version,omitempty"`
	RotationID string   `json:"rotation_id,omitempty"`
	DEKs       []string `json:"dek_ids,omitempty"`
	Text       string   `json:"text"`
}

// ChainReport is the audit-chain check as reported, with a plain sentence.
type ChainReport struct {
	Status      string `json:"status"`
	Valid       bool   `json:"valid"`
	Events      int64  `json:"events"`
	Checkpoints int    `json:"checkpoints"`
	LastSeq     int64  `json:"last_seq"`
	HeadHash    string `json:"head_hash"`
	// LastCheckpointSeq is the seq of the newest checkpoint in the store
	// (0 when there is none or the store cannot say).
	LastCheckpointSeq int64     `json:"last_checkpoint_seq,omitempty"`
	FirstBad          string    `json:"first_bad,omitempty"`
	Unverifiable      string    `json:"unverifiable,omitempty"`
	CheckedAt         time.Time `json:"checked_at,omitzero"`
	Text              string    `json:"text"`
}

// Key is one root key: its policy, its state now, its versions, and what
// happened to it in the period.
type Key struct {
	Name          string    `json:"name"`
	Backend       string    `json:"backend"` // the backend's name only, never its reference
	ActiveVersion int       `json:"active_version"`
	ExpiresAt     time.Time `json:"expires_at"`
	// ExpiresIn is expires_at - generated_at (negative when overdue).
	ExpiresInSeconds float64      `json:"expires_in_seconds"`
	ExpiresIn        string       `json:"expires_in"`
	Due              bool         `json:"due"`
	DueSoon          bool         `json:"due_soon"`
	Overdue          bool         `json:"overdue"`
	Policy           Policy       `json:"policy"`
	DEKs             int64        `json:"deks"`
	Versions         []Version    `json:"versions"`
	Rotations        []Rotation   `json:"rotations"`
	Retirements      []Retirement `json:"retirements"`
	CreatedAt        time.Time    `json:"created_at"`
	// Usage is the active version's wrap count against max_encryptions;
	// absent when the report was built without backends or nothing
	// counts the backend's wraps.
	Usage *Usage `json:"usage,omitempty"`
}

// Policy is a key's policy, each duration in seconds and as text ("30d";
// destroy_after "never" is 0 seconds).
type Policy struct {
	RotationPeriodSeconds float64 `json:"rotation_period_seconds"`
	RotationPeriod        string  `json:"rotation_period"`
	RotateWithinSeconds   float64 `json:"rotate_within_seconds"`
	RotateWithin          string  `json:"rotate_within"`
	NotifyWithinSeconds   float64 `json:"notify_within_seconds"`
	NotifyWithin          string  `json:"notify_within"`
	GraceSeconds          float64 `json:"grace_seconds"`
	Grace                 string  `json:"grace"`
	DestroyAfterSeconds   float64 `json:"destroy_after_seconds"`
	DestroyAfter          string  `json:"destroy_after"`
}

// Version is one key version now.
type Version struct {
	Version     int                `json:"version"`
	State       rekey.VersionState `json:"state"`
	DEKs        int64              `json:"deks"`
	CreatedAt   time.Time          `json:"created_at"`
	ActivatedAt time.Time          `json:"activated_at,omitzero"`
	RetireAfter time.Time          `json:"retire_after,omitzero"`
	RetiredAt   time.Time          `json:"retired_at,omitzero"`
	DestroyedAt time.Time          `json:"destroyed_at,omitzero"`
	// ExpiresAt is the end of the version's rotation period (zero for a
	// version never active, or written by an older build).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// RetirementBlocked is rekey.DecideVersion's verdict (the same as the
	// rekey_retirement_blocked metric): past its grace (or compromised),
	// DEKs still reference it, and no rotation is re-wrapping them.
	RetirementBlocked bool `json:"retirement_blocked"`
}

// Rotation is one rotation with its timeliness.
type Rotation struct {
	ID          string               `json:"id"`
	Key         string               `json:"key"`
	Reason      rekey.RotationReason `json:"reason"`
	Note        string               `json:"note,omitempty"`
	State       rekey.RotationState  `json:"state"`
	Open        bool                 `json:"open"`
	FromVersion int                  `json:"from_version"`
	ToVersion   int                  `json:"to_version"`
	Compromised int                  `json:"compromised_version,omitempty"`
	StartedAt   time.Time            `json:"started_at"`
	// CommittedAt is when to_version became active (zero while not
	// committed).
	CommittedAt time.Time `json:"committed_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	// Duration is finished_at - started_at, or generated_at - started_at
	// while the rotation is open.
	DurationSeconds float64  `json:"duration_seconds"`
	Duration        string   `json:"duration"`
	DEKsTotal       int64    `json:"deks_total"`
	DEKsRewrapped   int64    `json:"deks_rewrapped"`
	DEKsFailed      int64    `json:"deks_failed"`
	FailedDEKs      []string `json:"failed_dek_ids"`
	LastError       string   `json:"last_error,omitempty"`
	// Deadline is the end of from_version's period (see the package
	// documentation); zero when it could not be established.
	Deadline      time.Time `json:"deadline,omitzero"`
	DeadlineBasis string    `json:"deadline_basis"`
	// Timeliness is one of on_time, late, manual, emergency, in_progress,
	// unknown. Late is true exactly when it is late.
	Timeliness string `json:"timeliness"`
	Late       bool   `json:"late"`
	// LateBy is committed_at - deadline (or generated_at - deadline while
	// open), when late; 0 and "" otherwise.
	LateBySeconds float64 `json:"late_by_seconds"`
	LateBy        string  `json:"late_by"`
	// Margin is deadline - committed_at (or - generated_at while open):
	// positive is time to spare, negative is past the deadline. Absent
	// when there is no deadline.
	MarginSeconds *float64 `json:"margin_seconds,omitempty"`
	Margin        string   `json:"margin,omitempty"`
}

// Retirement is a version leaving service in the period, from the audit
// trail: version.retired, version.destroyed or version.compromised.
type Retirement struct {
	Time    time.Time       `json:"time"`
	Type    rekey.AuditType `json:"type"`
	Version int             `json:"version"`
	Actor   string          `json:"actor"`
	Seq     int64           `json:"seq"`
}

// Build gathers the report for the period [since, now] from s: every key,
// every rotation started in the period plus any open now, the retirements
// in the period, the problems open at now, and chain, the caller's
// verification of the audit trail. A zero since means the whole history.
// It returns an error wrapping rekey.ErrInvalidArgument when since is after
// now, and the store's error when a read fails.
func Build(ctx context.Context, s rekey.Store, since, now time.Time, chain ChainCheck) (*Report, error) {
	return BuildWith(ctx, s, since, now, chain, Options{})
}

// BuildWith is Build with the additions of opt: with opt.Backends, each
// key's usage (the active version's wraps against max_encryptions).
func BuildWith(ctx context.Context, s rekey.Store, since, now time.Time, chain ChainCheck, opt Options) (*Report, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: report: no store", rekey.ErrInvalidArgument)
	}
	now = rekey.NormalizeTime(now)
	if now.IsZero() {
		return nil, fmt.Errorf("%w: report: the report time is zero", rekey.ErrInvalidArgument)
	}
	since = rekey.NormalizeTime(since)
	if since.After(now) {
		return nil, fmt.Errorf("%w: report: the period starts (%s) after it ends (%s)", rekey.ErrInvalidArgument,
			since.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	keys, err := s.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("report: list keys: %w", err)
	}
	r := &Report{GeneratedAt: now, Since: since, Until: now, Keys: make([]Key, 0, len(keys)), Problems: []Problem{}}
	r.Chain, err = chainReport(ctx, s, chain)
	if err != nil {
		return nil, err
	}
	switch r.Chain.Status {
	case ChainInvalid:
		r.Problems = append(r.Problems, Problem{Kind: ProblemChainInvalid, Text: r.Chain.Text})
	case ChainNotChecked:
		r.Problems = append(r.Problems, Problem{Kind: ProblemChainNotChecked,
			Text: "The audit trail was not verified for this report: run `rekey audit verify` and build the report again."})
	}
	for _, k := range keys {
		kb := &keyBuilder{s: s, k: k, since: since, now: now, backends: opt.Backends}
		kr, problems, err := kb.build(ctx)
		if err != nil {
			return nil, fmt.Errorf("report: key %s: %w", k.Name, err)
		}
		r.Keys = append(r.Keys, kr)
		r.Problems = append(r.Problems, problems...)
	}
	r.Summary = summarize(r)
	return r, nil
}

// checkpointReader is the optional store method for the newest checkpoint.
type checkpointReader interface {
	LastAuditCheckpoint(ctx context.Context) (rekey.AuditCheckpoint, error)
}

func chainReport(ctx context.Context, s rekey.Store, c ChainCheck) (ChainReport, error) {
	cr := ChainReport{
		Valid: c.Valid, Events: c.Events, Checkpoints: c.Checkpoints, LastSeq: c.LastSeq, HeadHash: c.HeadHash,
		FirstBad: clean(c.FirstBad), Unverifiable: clean(c.Unverifiable), CheckedAt: rekey.NormalizeTime(c.CheckedAt),
	}
	switch {
	case cr.CheckedAt.IsZero():
		cr.Status, cr.Valid = ChainNotChecked, false
	case !c.Valid:
		cr.Status = ChainInvalid
	case cr.Unverifiable != "" || c.Checkpoints == 0:
		cr.Status = ChainValidCaveats
	default:
		cr.Status = ChainValid
	}
	if cp, ok := s.(checkpointReader); ok && c.Checkpoints > 0 {
		last, err := cp.LastAuditCheckpoint(ctx)
		switch {
		case errors.Is(err, rekey.ErrCheckpointNotFound):
		case err != nil:
			return ChainReport{}, fmt.Errorf("report: last audit checkpoint: %w", err)
		case last.Seq <= c.LastSeq || c.LastSeq == 0:
			// A checkpoint made after the verification ran was not checked.
			cr.LastCheckpointSeq = last.Seq
		}
	}
	cr.Text = chainSentence(cr)
	return cr, nil
}

// chainSentence is the plain-language result of the chain check.
func chainSentence(c ChainReport) string {
	switch c.Status {
	case ChainNotChecked:
		return "The audit trail was not verified for this report, so nothing in it is proven intact."
	case ChainInvalid:
		s := fmt.Sprintf("The audit trail (%s) does NOT verify", plural(c.Events, "event"))
		if c.FirstBad != "" {
			s += ": " + strings.TrimSuffix(c.FirstBad, ".") + "."
		} else {
			s += "."
		}
		s += " Events from that point on may have been edited, deleted, inserted or reordered: do not rely on the history in this report until the cause is found."
		if c.Unverifiable != "" {
			s += " Also not verified: " + strings.TrimSuffix(c.Unverifiable, ".") + "."
		}
		return s
	}
	s := fmt.Sprintf("The audit trail of %s verifies: every event's hash recomputes and links to the previous one", plural(c.Events, "event"))
	switch {
	case c.Checkpoints == 0:
		s += ". There is no checkpoint yet, so no key held outside the database vouches for the events: someone with write access to the database could rewrite them and recompute every hash."
	case c.LastCheckpointSeq > 0 && c.Unverifiable == "":
		s += fmt.Sprintf("; the last checkpoint (seq %d) carries a valid MAC from the backend.", c.LastCheckpointSeq)
	case c.Unverifiable == "":
		s += fmt.Sprintf("; %s carry a valid MAC from the backend.", plural(int64(c.Checkpoints), "checkpoint"))
	default:
		s += fmt.Sprintf("; %s checked.", plural(int64(c.Checkpoints), "checkpoint"))
	}
	if c.LastCheckpointSeq > 0 && c.LastSeq > c.LastCheckpointSeq {
		s += fmt.Sprintf(" The %s after seq %d are not covered by a checkpoint yet.", plural(c.LastSeq-c.LastCheckpointSeq, "event"), c.LastCheckpointSeq)
	}
	if c.Unverifiable != "" {
		s += " Not verified: " + strings.TrimSuffix(c.Unverifiable, ".") + "."
	}
	return s
}

// keyBuilder builds one key's part of the report.
type keyBuilder struct {
	s          rekey.Store
	k          rekey.Key
	since, now time.Time
	backends   map[string]rekey.KMS // for wrap counts; nil: none

	versions map[int]rekey.KeyVersion
	counts   map[int]int64
	// committed maps a rotation id to the time of its rotation.committed
	// event.
	committed map[string]time.Time
}

func (b *keyBuilder) build(ctx context.Context) (Key, []Problem, error) {
	k := b.k
	kr := Key{
		Name: k.Name, Backend: k.Backend, ActiveVersion: k.ActiveVersion, ExpiresAt: rekey.NormalizeTime(k.ExpiresAt),
		ExpiresInSeconds: k.ExpiresAt.Sub(b.now).Seconds(), ExpiresIn: humanDuration(k.ExpiresAt.Sub(b.now)),
		Due: k.Due(b.now), DueSoon: k.DueSoon(b.now), Overdue: k.Overdue(b.now),
		Policy: newPolicy(k.Policy), CreatedAt: rekey.NormalizeTime(k.CreatedAt),
		Versions: []Version{}, Rotations: []Rotation{}, Retirements: []Retirement{},
	}
	versions, err := b.s.ListVersions(ctx, k.Name)
	if err != nil {
		return Key{}, nil, fmt.Errorf("versions: %w", err)
	}
	if b.counts, err = b.s.CountDEKs(ctx, k.Name); err != nil {
		return Key{}, nil, fmt.Errorf("count deks: %w", err)
	}
	rots, err := b.rotations(ctx)
	if err != nil {
		return Key{}, nil, err
	}
	rotationOpen := slices.ContainsFunc(rots, func(r rekey.Rotation) bool { return r.State.Open() })
	b.versions = make(map[int]rekey.KeyVersion, len(versions))
	for _, v := range versions {
		b.versions[v.Version] = v
		n := b.counts[v.Version]
		kr.DEKs += n
		kr.Versions = append(kr.Versions, Version{
			Version: v.Version, State: v.State, DEKs: n,
			CreatedAt: rekey.NormalizeTime(v.CreatedAt), ActivatedAt: rekey.NormalizeTime(v.ActivatedAt),
			RetireAfter: rekey.NormalizeTime(v.RetireAfter), RetiredAt: rekey.NormalizeTime(v.RetiredAt),
			DestroyedAt: rekey.NormalizeTime(v.DestroyedAt), ExpiresAt: rekey.NormalizeTime(v.ExpiresAt),
			RetirementBlocked: rekey.DecideVersion(rekey.VersionFacts{Key: k, Version: v, DEKs: n, RotationOpen: rotationOpen}, b.now).RetirementBlocked(),
		})
	}

	b.usage(ctx, &kr, versions)

	// The audit trail is read from the earliest start of a reported
	// rotation, so that an open rotation begun before the period still
	// finds its rotation.committed event.
	auditSince := b.since
	for _, r := range rots {
		if !auditSince.IsZero() && r.StartedAt.Before(auditSince) {
			auditSince = r.StartedAt
		}
	}
	events, err := listAudit(ctx, b.s, rekey.AuditQuery{Key: k.Name, Since: auditSince})
	if err != nil {
		return Key{}, nil, fmt.Errorf("audit trail: %w", err)
	}
	b.committed = map[string]time.Time{}
	for _, ev := range events {
		switch ev.Type {
		case rekey.AuditRotationCommitted:
			if _, ok := b.committed[ev.RotationID]; !ok && ev.RotationID != "" {
				b.committed[ev.RotationID] = rekey.NormalizeTime(ev.Time)
			}
		case rekey.AuditVersionRetired, rekey.AuditVersionDestroyed, rekey.AuditVersionCompromised:
			if !ev.Time.Before(b.since) {
				kr.Retirements = append(kr.Retirements, Retirement{Time: rekey.NormalizeTime(ev.Time), Type: ev.Type,
					Version: ev.FromVersion, Actor: clean(ev.Actor), Seq: ev.Seq})
			}
		}
	}
	for _, r := range rots {
		kr.Rotations = append(kr.Rotations, b.rotation(r))
	}
	problems, err := b.problems(ctx, kr)
	if err != nil {
		return Key{}, nil, err
	}
	return kr, problems, nil
}

// rotations returns the key's rotations started in the period and the open
// one, oldest first.
func (b *keyBuilder) rotations(ctx context.Context) ([]rekey.Rotation, error) {
	rots, err := listRotations(ctx, b.s, rekey.RotationQuery{Key: b.k.Name, Since: b.since})
	if err != nil {
		return nil, fmt.Errorf("rotations: %w", err)
	}
	open, err := listRotations(ctx, b.s, rekey.RotationQuery{Key: b.k.Name, OpenOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open rotations: %w", err)
	}
	for _, o := range open {
		if !slices.ContainsFunc(rots, func(r rekey.Rotation) bool { return r.ID == o.ID }) {
			rots = append(rots, o)
		}
	}
	slices.SortFunc(rots, func(a, b rekey.Rotation) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return rots, nil
}

// listRotations reads every rotation matching q. The store query has a
// limit but no cursor, so the limit grows until the answer is complete.
func listRotations(ctx context.Context, s rekey.Store, q rekey.RotationQuery) ([]rekey.Rotation, error) {
	q.Limit = 500
	for {
		rots, err := s.ListRotations(ctx, q)
		if err != nil {
			return nil, err
		}
		if len(rots) < q.Limit {
			return rots, nil
		}
		q.Limit *= 4
	}
}

// listAudit reads every audit event matching q, paging by seq.
func listAudit(ctx context.Context, s rekey.Store, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	const page = 1000
	q.Limit = page
	var out []rekey.AuditEvent
	for {
		evs, err := s.ListAudit(ctx, q)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
		if len(evs) < page {
			return out, nil
		}
		q.AfterSeq = evs[len(evs)-1].Seq
	}
}

// deadline returns the end of version's period and how it was found: the
// version's expires_at, or for a version written before expires_at was
// recorded, its activation + the key's current rotation_period. It
// returns a zero time when neither is known.
func (b *keyBuilder) deadline(version int) (time.Time, string) {
	v, ok := b.versions[version]
	switch {
	case !ok:
		return time.Time{}, fmt.Sprintf("unknown: the store has no v%d", version)
	case !v.ExpiresAt.IsZero():
		return rekey.NormalizeTime(v.ExpiresAt), fmt.Sprintf("v%d's expires_at, the end of its period in force (%s)",
			version, rekey.NormalizeTime(v.ExpiresAt).Format(textTime))
	}
	activated := v.ActivatedAt
	if activated.IsZero() && version == 1 {
		activated = v.CreatedAt // version 1 is active from the key's creation
	}
	if activated.IsZero() {
		return time.Time{}, fmt.Sprintf("unknown: the store records neither when v%d became active nor when its period ends", version)
	}
	period := b.k.Policy.RotationPeriod
	return rekey.NormalizeTime(activated.Add(period)), fmt.Sprintf("v%d active since %s + rotation_period %s (the key's current policy: v%d records no expires_at)",
		version, rekey.NormalizeTime(activated).Format(textTime), rekey.FormatDuration(period), version)
}

// rotation renders r and judges whether it met its deadline.
func (b *keyBuilder) rotation(r rekey.Rotation) Rotation {
	out := Rotation{
		ID: r.ID, Key: r.Key, Reason: r.Reason, Note: clean(r.Note), State: r.State, Open: r.State.Open(),
		FromVersion: r.FromVersion, ToVersion: r.ToVersion, Compromised: r.Compromised,
		StartedAt: rekey.NormalizeTime(r.StartedAt), FinishedAt: rekey.NormalizeTime(r.FinishedAt),
		DEKsTotal: r.Total, DEKsRewrapped: r.Done, DEKsFailed: r.Failed, FailedDEKs: []string{},
		LastError: clean(r.LastError),
	}
	for _, id := range r.FailedDEKs {
		out.FailedDEKs = append(out.FailedDEKs, clean(id))
	}
	if r.State == rekey.RotationCommitted || r.State == rekey.RotationDone {
		switch {
		case r.ToVersion > 0 && !b.versions[r.ToVersion].ActivatedAt.IsZero():
			out.CommittedAt = rekey.NormalizeTime(b.versions[r.ToVersion].ActivatedAt)
		case !b.committed[r.ID].IsZero():
			out.CommittedAt = b.committed[r.ID]
		default:
			out.CommittedAt = out.FinishedAt
		}
	}
	end := out.FinishedAt
	if out.Open || end.IsZero() {
		end = b.now
	}
	out.DurationSeconds = end.Sub(out.StartedAt).Seconds()
	out.Duration = humanDuration(end.Sub(out.StartedAt))

	out.Deadline, out.DeadlineBasis = b.deadline(r.FromVersion)

	// ref is when the old version stopped taking new wraps, or now.
	ref := out.CommittedAt
	if ref.IsZero() {
		ref = b.now
	}
	if !out.Deadline.IsZero() {
		m := out.Deadline.Sub(ref)
		ms := m.Seconds()
		out.MarginSeconds = &ms
		out.Margin = humanDuration(m)
	}
	switch {
	case r.Reason == rekey.ReasonManual:
		out.Timeliness = Manual
	case r.Reason == rekey.ReasonEmergency:
		out.Timeliness = Emergency
	case out.Deadline.IsZero():
		out.Timeliness = Unknown
	case ref.After(out.Deadline):
		out.Timeliness, out.Late = Late, true
		out.LateBySeconds = ref.Sub(out.Deadline).Seconds()
		out.LateBy = humanDuration(ref.Sub(out.Deadline))
	case out.CommittedAt.IsZero():
		out.Timeliness = InProgress
	default:
		out.Timeliness = OnTime
	}
	return out
}

// problems lists what is wrong with the key now.
func (b *keyBuilder) problems(ctx context.Context, kr Key) ([]Problem, error) {
	var ps []Problem
	k := b.k
	if kr.Overdue {
		ps = append(ps, Problem{Kind: ProblemKeyOverdue, Key: k.Name, Version: k.ActiveVersion,
			Text: fmt.Sprintf("Key %s is overdue: the period of its active version v%d ended %s ago (%s) and no rotation has committed since.",
				k.Name, k.ActiveVersion, humanDuration(b.now.Sub(k.ExpiresAt)), kr.ExpiresAt.Format(textTime))})
	}
	for _, r := range kr.Rotations {
		if r.Open && r.LastError != "" {
			ps = append(ps, Problem{Kind: ProblemRotationFailing, Key: k.Name, RotationID: r.ID, Version: r.FromVersion,
				Text: fmt.Sprintf("Rotation %s of key %s (v%d → %s) is still open (state %s, running %s) and its last attempt failed: %s",
					r.ID, k.Name, r.FromVersion, toVersionText(r.ToVersion), r.State, r.Duration, r.LastError)})
		}
		if r.Timeliness == Unknown {
			ps = append(ps, Problem{Kind: ProblemScheduleUnverifiable, Key: k.Name, RotationID: r.ID, Version: r.FromVersion,
				Text: fmt.Sprintf("Rotation %s of key %s cannot be judged on time or late: %s.", r.ID, k.Name, r.DeadlineBasis)})
		}
	}
	for _, v := range kr.Versions {
		// A compromised version that is blocked is reported below as in use.
		if v.RetirementBlocked && v.State != rekey.VersionCompromised {
			ps = append(ps, Problem{Kind: ProblemRetirementBlocked, Key: k.Name, Version: v.Version,
				Text: fmt.Sprintf("Retirement of key %s v%d is blocked: its grace ended %s ago (%s) but %s %s it. Re-wrap %s (rekey run), or find out why %s cannot be unwrapped.",
					k.Name, v.Version, humanDuration(b.now.Sub(v.RetireAfter)), v.RetireAfter.Format(textTime), plural(v.DEKs, "DEK"),
					agree(v.DEKs, "still references", "still reference"), agree(v.DEKs, "it", "them"), agree(v.DEKs, "it", "they"))})
		}
		if v.State == rekey.VersionCompromised && v.DEKs > 0 {
			ps = append(ps, Problem{Kind: ProblemCompromisedInUse, Key: k.Name, Version: v.Version,
				Text: fmt.Sprintf("Key %s v%d is compromised and %s %s it: applications cannot open %s until %s re-wrapped (rekey rotate %s --compromised %d).",
					k.Name, v.Version, plural(v.DEKs, "DEK"), agree(v.DEKs, "still references", "still reference"),
					agree(v.DEKs, "it", "them"), agree(v.DEKs, "it is", "they are"), k.Name, v.Version)})
		}
	}
	if u := kr.Usage; u != nil && u.TooLow != nil {
		ps = append(ps, Problem{Kind: ProblemUsageLimitTooLow, Key: k.Name, Version: k.ActiveVersion,
			Text: fmt.Sprintf("Key %s is %s.", k.Name, u.TooLow)})
	}
	failed, err := b.failedDEKs(ctx, kr)
	if err != nil {
		return nil, err
	}
	return append(ps, failed...), nil
}

// failedDEKs checks the DEKs that recent rotations could not unwrap (the
// key's latest rotation, and those in the period) and reports those still
// not on the active version, grouped by the version they are stuck on.
func (b *keyBuilder) failedDEKs(ctx context.Context, kr Key) ([]Problem, error) {
	ids := map[string]bool{}
	for _, r := range kr.Rotations {
		for _, id := range r.FailedDEKs {
			ids[id] = true
		}
	}
	latest, err := b.s.ListRotations(ctx, rekey.RotationQuery{Key: b.k.Name, Limit: 1})
	if err != nil {
		return nil, fmt.Errorf("latest rotation: %w", err)
	}
	for _, r := range latest {
		for _, id := range r.FailedDEKs {
			ids[id] = true
		}
	}
	stuck := map[int][]string{}
	for _, id := range slices.Sorted(mapKeys(ids)) {
		d, err := b.s.GetDEK(ctx, id)
		if errors.Is(err, rekey.ErrDEKNotFound) {
			continue // deleted since: nothing depends on it any more
		}
		if err != nil {
			return nil, fmt.Errorf("dek %s: %w", id, err)
		}
		if d.Version != b.k.ActiveVersion {
			stuck[d.Version] = append(stuck[d.Version], clean(d.ID))
		}
		clear(d.Wrapped) // never kept, never rendered
	}
	var ps []Problem
	for _, v := range slices.Sorted(mapKeys(stuck)) {
		list := stuck[v]
		n := int64(len(list))
		ps = append(ps, Problem{Kind: ProblemDEKUnwrapFailed, Key: b.k.Name, Version: v, DEKs: list,
			Text: fmt.Sprintf("%s of key %s could not be unwrapped during rotation and %s on v%d: %s. %s retirement of v%d; check %s wrapped bytes (corruption) and whether the backend still has v%d.",
				plural(n, "DEK"), b.k.Name, agree(n, "remains", "remain"), v, strings.Join(list, ", "),
				agree(n, "It blocks", "They block"), v, agree(n, "its", "their"), v)})
	}
	return ps, nil
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func summarize(r *Report) Summary {
	s := Summary{Keys: len(r.Keys), OpenProblems: len(r.Problems), ChainValid: r.Chain.Valid, LateRotations: []string{}}
	for _, k := range r.Keys {
		s.Retirements += len(k.Retirements)
		for _, rot := range k.Rotations {
			s.Rotations++
			switch rot.Timeliness {
			case OnTime:
				s.OnTime++
			case Late:
				s.Late++
				s.LateRotations = append(s.LateRotations, rot.ID)
			case Manual:
				s.Manual++
			case Emergency:
				s.Emergency++
			case InProgress:
				s.InProgress++
			default:
				s.Unknown++
			}
		}
	}
	s.Text = summaryText(r, s)
	return s
}

func summaryText(r *Report, s Summary) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Period: %s. %s", periodText(r), plural(int64(s.Keys), "root key"))
	fmt.Fprintf(&b, ", %s in the period", plural(int64(s.Rotations), "rotation"))
	if s.Rotations > 0 {
		var parts []string
		add := func(n int, what string) {
			if n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", n, what))
			}
		}
		parts = append(parts, fmt.Sprintf("%d on time", s.OnTime))
		parts = append(parts, fmt.Sprintf("%d LATE", s.Late))
		add(s.Manual, "manual")
		add(s.Emergency, "emergency")
		add(s.InProgress, "in progress")
		add(s.Unknown, "not judgeable")
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	b.WriteString(". ")
	if s.Late > 0 {
		var late []string
		for _, k := range r.Keys {
			for _, rot := range k.Rotations {
				if rot.Late {
					what := "committed"
					if rot.Open {
						what = "still open"
					}
					late = append(late, fmt.Sprintf("key %s v%d → %s, %s %s after v%d's period ended", k.Name, rot.FromVersion,
						toVersionText(rot.ToVersion), what, rot.LateBy, rot.FromVersion))
				}
			}
		}
		fmt.Fprintf(&b, "LATE: %s. ", strings.Join(late, "; "))
	}
	if s.OpenProblems == 0 {
		b.WriteString("No open problems. ")
	} else {
		fmt.Fprintf(&b, "%s open now (listed below). ", plural(int64(s.OpenProblems), "problem"))
	}
	switch r.Chain.Status {
	case ChainValid:
		fmt.Fprintf(&b, "Audit trail: VALID (%s verified).", plural(r.Chain.Events, "event"))
	case ChainValidCaveats:
		fmt.Fprintf(&b, "Audit trail: VALID with caveats (%s verified; see the audit trail section).", plural(r.Chain.Events, "event"))
	case ChainInvalid:
		b.WriteString("Audit trail: INVALID — it does not verify; see the audit trail section.")
	default:
		b.WriteString("Audit trail: NOT VERIFIED for this report.")
	}
	return b.String()
}

func periodText(r *Report) string {
	if r.Since.IsZero() {
		return "all history up to " + r.Until.Format(textTime)
	}
	return r.Since.Format(textTime) + " to " + r.Until.Format(textTime)
}

func newPolicy(p rekey.Policy) Policy {
	destroy := "never"
	if p.DestroyAfter > 0 {
		destroy = rekey.FormatDuration(p.DestroyAfter)
	}
	return Policy{
		RotationPeriodSeconds: p.RotationPeriod.Seconds(), RotationPeriod: rekey.FormatDuration(p.RotationPeriod),
		RotateWithinSeconds: p.RotateWithin.Seconds(), RotateWithin: rekey.FormatDuration(p.RotateWithin),
		NotifyWithinSeconds: p.NotifyWithin.Seconds(), NotifyWithin: rekey.FormatDuration(p.NotifyWithin),
		GraceSeconds: p.Grace.Seconds(), Grace: rekey.FormatDuration(p.Grace),
		DestroyAfterSeconds: p.DestroyAfter.Seconds(), DestroyAfter: destroy,
	}
}

// textTime is how times read in the text of the report.
const textTime = "2006-01-02 15:04:05 UTC"

// humanDuration prints d for a reader: "2d3h", "1h30m", "45s", "350ms";
// above a minute it is rounded to the minute. Negative durations get a
// leading "-".
func humanDuration(d time.Duration) string {
	if d < 0 {
		return "-" + humanDuration(-d)
	}
	switch {
	case d == 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	}
	d = d.Round(time.Minute)
	days, hours, mins := d/rekey.Day, (d%rekey.Day)/time.Hour, (d%time.Hour)/time.Minute
	var b strings.Builder
	if days > 0 {
		fmt.Fprintf(&b, "%dd", days)
	}
	if hours > 0 {
		fmt.Fprintf(&b, "%dh", hours)
	}
	if mins > 0 {
		fmt.Fprintf(&b, "%dm", mins)
	}
	return b.String()
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// agree picks the singular or plural form for a count of n.
func agree(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func toVersionText(v int) string {
	if v <= 0 {
		return "(new version not yet recorded)"
	}
	return fmt.Sprintf("v%d", v)
}

// clean prepares free text from the store for the report: credentials
// (redact.Text: URL user information, password=… pairs)
// redacted, control characters (newlines too) replaced by spaces.
func clean(s string) string {
	if s == "" {
		return ""
	}
	s = redact.Text(s)
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
}

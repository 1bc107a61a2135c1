package rotation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
)

// AssumedRate is the re-wrap rate (DEKs per second) Plan assumes for a key
// that has no finished rotation to learn from. It is deliberately
// conservative: a remote KMS doing unwrap+wrap with 8 calls in flight
// manages a few thousand per second; the local backend is far faster.
const AssumedRate = 1000.0

// Plan is a dry run of the next cycle: what it would do to each key, with
// no writes and no backend calls.
type Plan struct {
	GeneratedAt time.Time `json:"generated_at"`
	Keys        []KeyPlan `json:"keys"`
}

// Plan actions for a key.
const (
	ActionNone      = "none"      // not due: nothing to rotate
	ActionRotate    = "rotate"    // due: a rotation starts
	ActionResume    = "resume"    // an open rotation continues
	ActionEmergency = "emergency" // the active version is compromised: an emergency rotation starts
	ActionMove      = "move"      // the configuration declares the key on another backend: a move starts
)

// KeyPlan is what the next cycle would do with one key.
type KeyPlan struct {
	Key           string `json:"key"`
	Backend       string `json:"backend"`
	ActiveVersion int    `json:"active_version"`
	// ExpiresAt is when the active version's period ends.
	ExpiresAt time.Time `json:"expires_at"`
	Due       bool      `json:"due"`
	Overdue   bool      `json:"overdue"`
	DueSoon   bool      `json:"due_soon"`
	// DueReason says why the key is due (rekey.RotationDue): scheduled
	// or usage; empty when it is not due.
	DueReason rekey.RotationReason `json:"due_reason,omitempty"`
	// Usage is the active version's wrap count against max_encryptions;
	// nil when nothing counts the backend's wraps.
	Usage *rekey.Usage `json:"usage,omitempty"`
	// UsageTooLow is set when the key is due by usage but no rotation
	// starts: its max_encryptions is too low for its DEKs, so a rotation
	// would make it due again (rekey.UsageRotationBlocked). It says the
	// minimum max_encryptions that works.
	UsageTooLow *rekey.UsageTooLow `json:"usage_too_low,omitempty"`
	Action      string             `json:"action"`
	// MoveTo is the backend the key is moving to: the open rotation's
	// target, or the backend the configuration declares it on (action
	// move). Empty when the key stays where it is.
	MoveTo string `json:"move_to,omitempty"`
	// Rotation is the open rotation, if any, with its progress.
	Rotation *RotationProgress `json:"rotation,omitempty"`
	// DEKsByVersion counts the key's DEKs per version.
	DEKsByVersion map[int]int64 `json:"deks_by_version"`
	// Sources counts the key's rows per version in each DEK source (the
	// application's own tables); DEKsByVersion includes them.
	Sources []SourceCount `json:"sources,omitempty"`
	// DEKsToRewrap is how many DEKs the cycle would re-wrap: those of the
	// rotation, plus those on versions whose retirement is due.
	DEKsToRewrap int64 `json:"deks_to_rewrap"`
	// BackendCalls is the expected number of backend calls per operation
	// (current_version, rotate_key, rewrap_batch, rewrap, unwrap, wrap,
	// retire_version, destroy_version). A backend that is already ahead
	// makes rotate_key unnecessary; lost races and retries add calls.
	BackendCalls map[string]int64 `json:"backend_calls"`
	// EstimatedSeconds is DEKsToRewrap at Rate.
	EstimatedSeconds float64 `json:"estimated_seconds"`
	// Rate is the re-wrap rate assumed (DEKs per second), and RateSource
	// where it comes from: "assumed" (AssumedRate), "rotation ID" (that
	// finished rotation's observed rate, which includes any pause between
	// cycles) or "rate limit N/s" (the backend's request rate limit divided
	// by the backend calls per DEK, when that is lower).
	Rate       float64       `json:"rate_deks_per_second"`
	RateSource string        `json:"rate_source"`
	Versions   []VersionPlan `json:"versions"`
	Error      string        `json:"error,omitempty"`
}

// EstimatedDuration is EstimatedSeconds as a time.Duration.
func (p KeyPlan) EstimatedDuration() time.Duration {
	return time.Duration(p.EstimatedSeconds * float64(time.Second))
}

// RotationProgress is an open rotation as Plan shows it.
type RotationProgress struct {
	ID          string               `json:"id"`
	State       rekey.RotationState  `json:"state"`
	Reason      rekey.RotationReason `json:"reason"`
	ToBackend   string               `json:"to_backend,omitempty"` // a move's target backend
	FromVersion int                  `json:"from_version"`
	ToVersion   int                  `json:"to_version"`
	Done        int64                `json:"deks_done"`
	Total       int64                `json:"deks_total"`
	Failed      int64                `json:"deks_failed"`
	Ratio       float64              `json:"progress_ratio"` // Rotation.Progress: (done+failed)/total, as status and metrics show it
	Owner       string               `json:"owner"`
	StartedAt   time.Time            `json:"started_at"`
	LastError   string               `json:"last_error,omitempty"`
}

// VersionPlan is what the next cycle would do with one version.
type VersionPlan struct {
	Version     int                `json:"version"`
	State       rekey.VersionState `json:"state"`
	Backend     string             `json:"backend"` // the backend the version lives on
	DEKs        int64              `json:"deks"`
	RetireAfter time.Time          `json:"retire_after,omitzero"`
	// Action is rekey.DecideVersion's answer for the version, as the
	// engine acts on it: keep, wait, retire, blocked, destroy or disable.
	Action rekey.VersionAction `json:"action"`
	Why    string              `json:"why,omitempty"`
}

// Plan computes what the next cycle would do, for every key, without
// writing anything and without calling any backend (a wrap count is read
// from the local keyring's file or from the store). A key that cannot be
// planned carries its error; Plan itself fails only when the keys cannot be
// listed.
func (e *Engine) Plan(ctx context.Context) (Plan, error) {
	now := e.now()
	keys, err := e.store.ListKeys(ctx)
	if err != nil {
		return Plan{}, fmt.Errorf("plan: list keys: %w", err)
	}
	p := Plan{GeneratedAt: now, Keys: make([]KeyPlan, 0, len(keys))}
	for _, k := range keys {
		kp, err := e.planKey(ctx, k, now)
		if err != nil {
			kp.Error = err.Error()
		}
		p.Keys = append(p.Keys, kp)
	}
	return p, nil
}

func (e *Engine) planKey(ctx context.Context, k rekey.Key, now time.Time) (KeyPlan, error) {
	kp := KeyPlan{
		Key: k.Name, Backend: k.Backend, ActiveVersion: k.ActiveVersion, ExpiresAt: k.ExpiresAt,
		Overdue: k.Overdue(now), DueSoon: k.DueSoon(now),
		Action: ActionNone, BackendCalls: map[string]int64{}, Rate: AssumedRate, RateSource: "assumed",
	}
	var wraps int64
	if u, ok := e.activeUsage(ctx, k); ok {
		kp.Usage, wraps = &u, u.Encryptions
	}
	kp.DueReason, kp.Due = rekey.RotationDue(k, now, wraps)
	vs, err := e.store.ListVersions(ctx, k.Name)
	if err != nil {
		return kp, err
	}
	// A per-row-key source that cannot be counted is left out here and
	// shows its error in Sources.
	counts, _, err := e.countDEKsAvail(ctx, k.Name, true)
	if err != nil {
		return kp, err
	}
	kp.DEKsByVersion = counts
	if kp.Due && kp.DueReason == rekey.ReasonUsage {
		rewrapped, err := rekey.LastRewrapped(ctx, e.store, k)
		if err != nil {
			return kp, err
		}
		kp.UsageTooLow = rekey.UsageRotationBlocked(k, kp.DueReason, sumCounts(counts), rewrapped)
	}
	kp.Sources = e.SourceCounts(ctx, k.Name)
	var open *rekey.Rotation
	r, err := e.store.OpenRotation(ctx, k.Name)
	switch {
	case err == nil:
		open = &r
		kp.Action = ActionResume
		kp.Rotation = &RotationProgress{
			ID: open.ID, State: open.State, Reason: open.Reason, ToBackend: open.ToBackend, FromVersion: open.FromVersion, ToVersion: open.ToVersion,
			Done: open.Done, Total: open.Total, Failed: open.Failed, Ratio: open.Progress(),
			Owner: open.Owner, StartedAt: open.StartedAt, LastError: open.LastError,
		}
	case !isNotFound(err):
		return kp, err
	}
	activeState := rekey.VersionState("")
	for _, v := range vs {
		if v.Version == k.ActiveVersion {
			activeState = v.State
		}
	}
	if kp.Action == ActionNone {
		switch {
		case activeState == rekey.VersionCompromised:
			kp.Action = ActionEmergency
		case e.declaredMove(k) != "":
			kp.Action, kp.MoveTo = ActionMove, e.declaredMove(k)
		case kp.Due && kp.UsageTooLow == nil:
			kp.Action = ActionRotate
		}
	}
	if open != nil && open.ToBackend != "" && open.ToBackend != k.Backend {
		kp.MoveTo = open.ToBackend
	}
	// A move creates the key on its target when no version of it lives
	// there yet (else rotates it there), and re-wraps across backends:
	// one unwrap on the old and one wrap on the new per DEK.
	onTarget := false
	for _, v := range vs {
		if kp.MoveTo != "" && rekey.PlacementOf(k, v).Backend == kp.MoveTo {
			onTarget = true
		}
	}

	var b *backend
	if bb, err := e.backendFor(k); err == nil {
		b = bb
	} else {
		kp.Error = err.Error()
	}
	// DEKs the rotation would re-wrap: every DEK not on its target version.
	if kp.Action != ActionNone {
		target := 0 // a version that does not exist yet
		if open != nil && open.ToVersion > 0 {
			target = open.ToVersion
		}
		switch {
		case open != nil && open.State != rekey.RotationClaimed:
		case kp.MoveTo != "" && !onTarget:
			kp.BackendCalls["create_key"] = 1
		default:
			kp.BackendCalls["current_version"] = 1
			kp.BackendCalls["rotate_key"] = 1
		}
		for v, n := range counts {
			if v != target {
				kp.DEKsToRewrap += n
			}
		}
	}
	// A rotation this cycle (open or starting) re-wraps every DEK not on
	// its target, those of old versions included: DecideVersion then says
	// wait for them. Without one, DEKs on a version whose retirement is
	// blocked are re-wrapped by the retirement sweep.
	rotating := kp.Action != ActionNone
	for _, v := range vs {
		dec := rekey.DecideVersion(rekey.VersionFacts{Key: k, Version: v, DEKs: dependents(counts, v.Version), RotationOpen: rotating}, now)
		vp := VersionPlan{Version: v.Version, State: v.State, Backend: rekey.PlacementOf(k, v).Backend, DEKs: counts[v.Version], RetireAfter: v.RetireAfter, Action: dec.Action, Why: dec.Why}
		switch dec.Action {
		case rekey.VersionBlocked:
			kp.DEKsToRewrap += vp.DEKs
		case rekey.VersionRetire, rekey.VersionDisable:
			if b != nil && b.retirer != nil {
				kp.BackendCalls["retire_version"]++
			}
		case rekey.VersionDestroy:
			if b != nil && b.retirer != nil {
				kp.BackendCalls["destroy_version"]++
			}
		}
		kp.Versions = append(kp.Versions, vp)
	}
	switch {
	case kp.MoveTo != "" && (open == nil || open.State != rekey.RotationCommitted):
		kp.BackendCalls["unwrap"] += kp.DEKsToRewrap
		kp.BackendCalls["wrap"] += kp.DEKsToRewrap
	case b != nil:
		e.addRewrapCalls(kp.BackendCalls, b, kp.DEKsToRewrap)
	}
	switch {
	case kp.MoveTo != "":
		// Earlier rotations ran on the old backend alone: a move's rate
		// is bounded by the target's rate limit (one wrap there per DEK).
		if rl, ok := e.cfg.Backends[kp.MoveTo].(rateLimiter); ok && rl.RateLimit() > 0 && kp.Rate > rl.RateLimit() {
			kp.Rate, kp.RateSource = rl.RateLimit(), fmt.Sprintf("rate limit of %s %g/s", kp.MoveTo, rl.RateLimit())
		}
	default:
		if rate, id := e.observedRate(ctx, k.Name); rate > 0 {
			kp.Rate, kp.RateSource = rate, "rotation "+id
		}
		if b != nil {
			if limit, perDEK := e.rateLimit(b); limit > 0 && perDEK > 0 && kp.Rate > limit/perDEK {
				kp.Rate, kp.RateSource = limit/perDEK, fmt.Sprintf("rate limit %g/s", limit)
			}
		}
	}
	kp.EstimatedSeconds = float64(kp.DEKsToRewrap) / kp.Rate
	for op, n := range kp.BackendCalls {
		if n == 0 {
			delete(kp.BackendCalls, op)
		}
	}
	return kp, nil
}

// addRewrapCalls adds the backend calls re-wrapping n DEKs takes.
func (e *Engine) addRewrapCalls(calls map[string]int64, b *backend, n int64) {
	if n == 0 {
		return
	}
	switch {
	case b.batch != nil:
		batch, conc := int64(e.cfg.BatchSize), int64(e.cfg.Concurrency)
		chunks := func(size int64) int64 {
			per := (size + conc - 1) / conc
			return (size + per - 1) / per
		}
		full, rest := n/batch, n%batch
		calls["rewrap_batch"] += full * chunks(batch)
		if rest > 0 {
			calls["rewrap_batch"] += chunks(rest)
		}
	case b.rewrapper != nil:
		calls["rewrap"] += n
	default:
		calls["unwrap"] += n
		calls["wrap"] += n
	}
}

// rateLimiter is a backend (as the engine is given it: kmsmw's wrapper)
// that holds its requests to a rate.
type rateLimiter interface{ RateLimit() float64 }

// rateLimit returns b's request rate limit (0: none) and the backend calls
// one DEK's re-wrap takes (a batch call counts once for its DEKs), so that
// limit/perDEK bounds the re-wrap rate.
func (e *Engine) rateLimit(b *backend) (limit, perDEK float64) {
	rl, ok := b.kms.(rateLimiter)
	if !ok {
		return 0, 0
	}
	const sample = 100_000
	calls := map[string]int64{}
	e.addRewrapCalls(calls, b, sample)
	var n int64
	for _, c := range calls {
		n += c
	}
	return rl.RateLimit(), float64(n) / sample
}

// observedRate is the re-wrap rate of key's last finished rotation that
// re-wrapped anything, from its record (Done over its wall time).
func (e *Engine) observedRate(ctx context.Context, key string) (float64, string) {
	rs, err := e.store.ListRotations(ctx, rekey.RotationQuery{Key: key, Limit: 20})
	if err != nil {
		return 0, ""
	}
	for _, r := range rs {
		if r.State != rekey.RotationDone || r.Done == 0 {
			continue
		}
		if secs := r.FinishedAt.Sub(r.StartedAt).Seconds(); secs > 0 {
			return float64(r.Done) / secs, r.ID
		}
	}
	return 0, ""
}

func isNotFound(err error) bool { return err != nil && errors.Is(err, rekey.ErrRotationNotFound) }

package rotation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
)

// Outcome says what a cycle did with one key.
type Outcome string

// Outcomes of KeyReport.
const (
	OutcomeIdle        Outcome = "idle"        // nothing was due; old versions were tended
	OutcomeRotated     Outcome = "rotated"     // a rotation reached done
	OutcomeSkipped     Outcome = "skipped"     // another worker holds the key's lease
	OutcomeShared      Outcome = "shared"      // another worker holds the key's lease; this one re-wrapped ranges of its rotation
	OutcomeFailed      Outcome = "failed"      // an error; logged, audited, retried next cycle
	OutcomeInterrupted Outcome = "interrupted" // graceful stop: checkpointed, resumes next run
	OutcomeLostLease   Outcome = "lost_lease"  // another worker took the key over mid-way
)

// CycleReport is what one cycle did, key by key.
type CycleReport struct {
	StartedAt   time.Time   `json:"started_at"`
	FinishedAt  time.Time   `json:"finished_at"`
	Keys        []KeyReport `json:"keys"`
	Failed      int         `json:"failed"`      // keys whose outcome is failed
	Interrupted bool        `json:"interrupted"` // the context ended during the cycle
	Error       string      `json:"error,omitempty"`
}

// OK reports whether no key failed and the keys could be listed.
func (r CycleReport) OK() bool { return r.Failed == 0 && r.Error == "" }

// KeyReport is what a cycle did with one key.
type KeyReport struct {
	Key         string           `json:"key"`
	Outcome     Outcome          `json:"outcome"`
	RotationID  string           `json:"rotation_id,omitempty"`
	FromVersion int              `json:"from_version,omitempty"`
	ToVersion   int              `json:"to_version,omitempty"`
	Rewrapped   int64            `json:"deks_rewrapped"`
	FailedDEKs  []string         `json:"failed_deks,omitempty"` // could not be unwrapped (first 100)
	Retired     []int            `json:"retired_versions,omitempty"`
	Destroyed   []int            `json:"destroyed_versions,omitempty"`
	Blocked     []BlockedVersion `json:"blocked_versions,omitempty"`
	// UsageTooLow is set when the key is due by usage but was not rotated:
	// its max_encryptions is too low for its DEKs (rekey.UsageRotationBlocked).
	UsageTooLow *rekey.UsageTooLow `json:"usage_too_low,omitempty"`
	Error       string             `json:"error,omitempty"`
	Err         error              `json:"-"`
}

// BlockedVersion is a version whose retirement is blocked by DEKs that
// still reference it.
type BlockedVersion struct {
	Version int   `json:"version"`
	DEKs    int64 `json:"deks"`
	// Reason is set when the count itself is incomplete: a DEK source
	// that may hold rows on the version cannot be counted.
	Reason string `json:"reason,omitempty"`
}

// RunCycle runs one cycle over every key (ListKeys): it resumes the key's
// open rotation if there is one, else starts one when the key is due (or
// its active version is compromised), then tends the old versions (retire,
// re-wrap-then-report-blocked, destroy). Each key is isolated (rule 6): a
// failure is logged, audited as rotation.failed, counted in the report, and
// the cycle goes on with the next key. When ctx ends, the key in progress
// stops after checkpointing its current batch and releasing its lease, and
// the cycle ends (Interrupted).
func (e *Engine) RunCycle(ctx context.Context) CycleReport {
	start := time.Now()
	rep := CycleReport{StartedAt: e.now()}
	keys, err := e.store.ListKeys(ctx)
	if err != nil {
		rep.Error = fmt.Sprintf("list keys: %v", err)
		rep.Interrupted = ctx.Err() != nil
		rep.FinishedAt = e.now()
		e.log.Error("rotation cycle failed", "error", err)
		e.obs.CycleDone(rep.FinishedAt, false)
		return rep
	}
	e.warnUnknownKeys(ctx, keys)
	for _, k := range keys {
		if ctx.Err() != nil {
			rep.Interrupted = true
			break
		}
		kr := e.cycleKey(ctx, k.Name)
		switch kr.Outcome {
		case OutcomeFailed:
			rep.Failed++
		case OutcomeInterrupted:
			rep.Interrupted = true
		}
		rep.Keys = append(rep.Keys, kr)
	}
	// Keys another worker was rotating: help re-wrap what is left of
	// them, range by range (after our own keys, so that every due key
	// has a worker first).
	for i := range rep.Keys {
		if ctx.Err() != nil {
			rep.Interrupted = true
			break
		}
		if rep.Keys[i].Outcome != OutcomeSkipped {
			continue
		}
		n, err := e.ShareRewrap(ctx, rep.Keys[i].Key)
		if n > 0 {
			rep.Keys[i].Outcome, rep.Keys[i].Rewrapped = OutcomeShared, n
		}
		if err != nil && ctx.Err() == nil {
			e.log.Warn("helping another worker's re-wrap failed; it finishes without us", "key_id", rep.Keys[i].Key, "error", err)
		}
	}
	rep.FinishedAt = e.now()
	e.obs.CycleDone(rep.FinishedAt, rep.OK())
	e.log.Info("rotation cycle done", "keys", len(rep.Keys), "failed", rep.Failed, "interrupted", rep.Interrupted,
		"duration_ms", time.Since(start).Milliseconds())
	return rep
}

// cycleKey is RunCycle's work on one key, under the key's lease.
func (e *Engine) cycleKey(ctx context.Context, name string) KeyReport {
	rep := KeyReport{Key: name, Outcome: OutcomeIdle}
	err := e.withKey(ctx, name, func(ctx context.Context, kl *keyLease) error {
		var (
			cur   *rekey.Rotation
			phase = "rotation"
		)
		err := func() error {
			k, err := e.getKey(ctx, name)
			if err != nil {
				return err
			}
			b, err := e.backendFor(k)
			if err != nil {
				return err
			}
			open, err := e.openRotation(ctx, name)
			if err != nil {
				return err
			}
			if open == nil {
				reason, compromised, due, tooLow, err := e.needsRotation(ctx, k)
				if err != nil {
					return err
				}
				rep.UsageTooLow = tooLow
				if to := e.declaredMove(k); to != "" && reason != rekey.ReasonEmergency {
					r, err := e.claimMove(ctx, kl, k, to, "declared in the configuration")
					if r.ID != "" {
						cur = &r
					}
					if err != nil {
						return err
					}
					open, due = &r, false
				}
				if due {
					r, err := e.claim(ctx, kl, k, b, reason, "", compromised)
					if r.ID != "" {
						cur = &r
					}
					if err != nil {
						return err
					}
					open = &r
				}
			}
			if open != nil {
				before := open.Done
				rep.RotationID, rep.FromVersion = open.ID, open.FromVersion
				r, err := e.drive(ctx, kl, k, b, *open)
				cur = &r
				rep.ToVersion, rep.Rewrapped, rep.FailedDEKs = r.ToVersion, r.Done-before, r.FailedDEKs
				if err != nil {
					return err
				}
				rep.Outcome = OutcomeRotated
				if k, err = e.getKey(ctx, name); err != nil {
					return err
				}
			}
			phase = "retirement"
			return e.tendVersions(ctx, kl, k, b, &rep)
		}()
		if err != nil && !isFenced(err) && ctx.Err() == nil {
			e.recordFailure(ctx, kl, name, cur, phase, err)
		}
		return err
	})
	switch {
	case err == nil:
	case errors.Is(err, rekey.ErrLeaseHeld):
		rep.Outcome = OutcomeSkipped
		e.log.Info("key skipped: another worker holds its lease", "key_id", name)
	case errors.Is(err, errStopped):
		rep.Outcome = OutcomeInterrupted
		e.log.Info("key work stopped; checkpointed, resumes on the next run", "key_id", name)
	case isFenced(err):
		rep.Outcome = OutcomeLostLease
		e.log.Warn("key work stopped: another worker took the lease over", "key_id", name, "error", err)
	default:
		rep.Outcome = OutcomeFailed
		e.log.Error("key rotation failed", "key_id", name, "rotation_id", rep.RotationID, "from_version", rep.FromVersion,
			"to_version", rep.ToVersion, "status", ResultFailure, "error", err)
	}
	if err != nil {
		rep.Err, rep.Error = err, err.Error()
	}
	return rep
}

// needsRotation says whether k should start a rotation now, and why: its
// active version is compromised (an emergency left unfinished), or it is
// due (rekey.RotationDue: by schedule, or by usage). A key due by usage
// whose max_encryptions is too low for its DEKs (rekey.UsageRotationBlocked:
// the rotation would make it due again) is not rotated: tooLow says why,
// and an ERROR line says it every cycle.
func (e *Engine) needsRotation(ctx context.Context, k rekey.Key) (reason rekey.RotationReason, compromised int, due bool, tooLow *rekey.UsageTooLow, err error) {
	state, err := e.versionState(ctx, k.Name, k.ActiveVersion)
	if err != nil {
		return "", 0, false, nil, err
	}
	if state == rekey.VersionCompromised {
		return rekey.ReasonEmergency, k.ActiveVersion, true, nil, nil
	}
	reason, due = rekey.RotationDue(k, e.now(), e.activeWraps(ctx, k))
	if !due {
		return rekey.ReasonScheduled, 0, false, nil, nil
	}
	if reason == rekey.ReasonUsage {
		if tooLow, err = e.usageTooLow(ctx, k); err != nil {
			return "", 0, false, nil, err
		}
		if tooLow != nil {
			e.log.Error("key not rotated by usage: max_encryptions is too low for its DEKs", "key_id", k.Name,
				"deks", tooLow.DEKs, "max_encryptions", tooLow.MaxEncryptions, "rotate_at_encryptions", tooLow.Threshold,
				"min_max_encryptions", tooLow.MinMaxEncryptions, "error", tooLow.String())
			return reason, 0, false, tooLow, nil
		}
	}
	return reason, 0, true, nil, nil
}

// Rotate rotates key now and runs the rotation to done. An open rotation of
// the key is finished first (there is only ever one), then a new one with
// reason (default manual) and note is started, so the key always gets a
// version created after the call. It returns an error matching
// rekey.ErrLeaseHeld while another worker works on the key, and
// rekey.ErrKeyNotFound for an unknown key.
func (e *Engine) Rotate(ctx context.Context, key string, reason rekey.RotationReason, note string) (rekey.Rotation, error) {
	switch reason {
	case "":
		reason = rekey.ReasonManual
	case rekey.ReasonManual, rekey.ReasonScheduled, rekey.ReasonEmergency:
	default:
		return rekey.Rotation{}, fmt.Errorf("%w: rotation reason %q: use manual, scheduled or emergency", rekey.ErrInvalidArgument, reason)
	}
	var out rekey.Rotation
	err := e.withKey(ctx, key, func(ctx context.Context, kl *keyLease) error {
		err := func() error {
			k, b, err := e.keyAndBackend(ctx, key)
			if err != nil {
				return err
			}
			if open, err := e.openRotation(ctx, key); err != nil {
				return err
			} else if open != nil {
				e.log.Info("finishing the key's open rotation before the requested one", "key_id", key, "rotation_id", open.ID)
				if out, err = e.drive(ctx, kl, k, b, *open); err != nil {
					return err
				}
				if k, err = e.getKey(ctx, key); err != nil {
					return err
				}
			}
			r, err := e.claim(ctx, kl, k, b, reason, note, 0)
			if r.ID != "" {
				out = r
			}
			if err != nil {
				return err
			}
			out, err = e.drive(ctx, kl, k, b, r)
			return err
		}()
		if err != nil && !isFenced(err) && ctx.Err() == nil {
			e.recordFailure(ctx, kl, key, rotationOrNil(out), "rotation", err)
		}
		return err
	})
	return out, err
}

// RotateCompromised handles a compromised version: it marks the version
// compromised (audit version.compromised; from then on the store state makes
// applications refuse it), rotates, re-wraps that version's DEKs first and
// then the rest, commits, and once no DEK references the version disables
// it at the backend. The version stays compromised in the store. DEKs that
// cannot be unwrapped stay on it and are reported (Rotation.FailedDEKs,
// retirement.blocked). It returns rekey.ErrVersionNotFound for an unknown
// version and an error matching rekey.ErrInvalidArgument for a destroyed
// one.
func (e *Engine) RotateCompromised(ctx context.Context, key string, version int) (rekey.Rotation, error) {
	var out rekey.Rotation
	err := e.withKey(ctx, key, func(ctx context.Context, kl *keyLease) error {
		err := func() error {
			k, b, err := e.keyAndBackend(ctx, key)
			if err != nil {
				return err
			}
			state, err := e.versionState(ctx, key, version)
			if err != nil {
				return err
			}
			if state == rekey.VersionDestroyed {
				return fmt.Errorf("%w: key %s version %d is destroyed: nothing is left to protect", rekey.ErrInvalidArgument, key, version)
			}
			open, err := e.openRotation(ctx, key)
			if err != nil {
				return err
			}
			if open != nil && open.ToVersion == version {
				// The version being rotated to is the compromised one: let
				// that rotation finish (it cannot be undone), then rotate
				// away from it.
				if out, err = e.drive(ctx, kl, k, b, *open); err != nil {
					return err
				}
				open = nil
				if k, err = e.getKey(ctx, key); err != nil {
					return err
				}
			}
			if state != rekey.VersionCompromised {
				if err := e.markCompromised(ctx, kl, key, version); err != nil {
					return err
				}
			}
			var r rekey.Rotation
			switch {
			case open != nil:
				r = *open
				if r.State != rekey.RotationCommitted && r.Compromised == 0 {
					// The open rotation becomes the emergency one: its
					// re-wrap takes the compromised version's DEKs first.
					nr := r
					nr.Compromised = version
					nr.Owner, nr.Epoch, nr.UpdatedAt = e.owner, kl.fence().Epoch, e.now()
					if err := e.advanceRotation(ctx, kl, rekey.RotationUpdate{Rotation: nr, FromState: r.State}); err != nil {
						return fmt.Errorf("mark rotation %s as emergency: %w", r.ID, err)
					}
					r = nr
				}
			default:
				if r, err = e.claim(ctx, kl, k, b, rekey.ReasonEmergency, fmt.Sprintf("version %d compromised", version), version); err != nil {
					if r.ID != "" {
						out = r
					}
					return err
				}
			}
			out = r
			if out, err = e.drive(ctx, kl, k, b, r); err != nil {
				return err
			}
			return e.settleCompromised(ctx, key, b, version)
		}()
		if err != nil && !isFenced(err) && ctx.Err() == nil {
			e.recordFailure(ctx, kl, key, rotationOrNil(out), "emergency rotation", err)
		}
		return err
	})
	return out, err
}

// settleCompromised does what rekey.DecideVersion decides for a
// compromised version after its emergency rotation: disabled at the
// backend once no DEK references it, else reported blocked (the DEKs left
// could not be unwrapped).
func (e *Engine) settleCompromised(ctx context.Context, key string, b *backend, version int) error {
	k, err := e.getKey(ctx, key)
	if err != nil {
		return err
	}
	vs, err := e.listVersions(ctx, key)
	if err != nil {
		return err
	}
	counts, err := e.countDEKs(ctx, key)
	if err != nil {
		return err
	}
	for _, v := range vs {
		if v.Version != version {
			continue
		}
		dec := rekey.DecideVersion(rekey.VersionFacts{Key: k, Version: v, DEKs: dependents(counts, version)}, e.now())
		switch {
		case dec.RetirementBlocked():
			var rep KeyReport
			e.reportBlocked(ctx, key, version, dependents(counts, version), &rep)
		case dec.Action == rekey.VersionDisable:
			return e.disableCompromised(ctx, k, b, version)
		}
		return nil
	}
	return fmt.Errorf("key %s version %d: %w", key, version, rekey.ErrVersionNotFound)
}

// markCompromised sets version of key compromised, with its audit event.
func (e *Engine) markCompromised(ctx context.Context, kl *keyLease, key string, version int) error {
	ev := e.event(rekey.AuditVersionCompromised, key)
	ev.FromVersion = version
	ev.Status = string(rekey.VersionCompromised)
	ev.Reason = string(rekey.ReasonEmergency)
	err := e.store.ChangeVersionState(ctx, rekey.VersionChange{
		Key: key, Version: version,
		From: []rekey.VersionState{rekey.VersionActive, rekey.VersionPendingRetirement, rekey.VersionRetired},
		To:   rekey.VersionCompromised, At: e.now(),
	}, kl.fencePtr(), ev)
	if err != nil {
		return fmt.Errorf("mark key %s version %d compromised: %w", key, version, err)
	}
	e.log.Warn("key version marked compromised", "key_id", key, "version", version, "status", "compromised")
	return nil
}

// Retire retires version of key before its grace has passed. It is refused
// with a *rekey.VersionInUseError (carrying the count) while any DEK
// references the version, and with rekey.ErrInvalidArgument for the active
// version or a version a rotation is creating. Retiring a retired or
// destroyed version is a no-op; a compromised version is disabled at the
// backend and stays compromised.
func (e *Engine) Retire(ctx context.Context, key string, version int) error {
	return e.withKey(ctx, key, func(ctx context.Context, kl *keyLease) error {
		k, b, err := e.keyAndBackend(ctx, key)
		if err != nil {
			return err
		}
		if version == k.ActiveVersion {
			return fmt.Errorf("%w: version %d is the active version of key %s: rotate first (rekey rotate %s)", rekey.ErrInvalidArgument, version, key, key)
		}
		state, err := e.versionState(ctx, key, version)
		if err != nil {
			return err
		}
		switch state {
		case rekey.VersionRetired, rekey.VersionDestroyed:
			return nil
		case rekey.VersionCreated, rekey.VersionActive:
			return fmt.Errorf("%w: version %d of key %s is being rotated to: let the rotation finish", rekey.ErrInvalidArgument, version, key)
		}
		// By the rows, not a store's counters (retireVersion counts again
		// right before the backend).
		if err := e.refuseInUse(ctx, key, version); err != nil {
			return err
		}
		if state == rekey.VersionCompromised {
			return e.disableCompromised(ctx, k, b, version)
		}
		return e.retireVersion(ctx, kl, k, b, version)
	})
}

func (e *Engine) keyAndBackend(ctx context.Context, name string) (rekey.Key, *backend, error) {
	k, err := e.getKey(ctx, name)
	if err != nil {
		return rekey.Key{}, nil, err
	}
	b, err := e.backendFor(k)
	if err != nil {
		return rekey.Key{}, nil, err
	}
	return k, b, nil
}

func rotationOrNil(r rekey.Rotation) *rekey.Rotation {
	if r.ID == "" {
		return nil
	}
	return &r
}

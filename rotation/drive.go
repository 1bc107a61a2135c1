package rotation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
)

// driver carries one rotation through its states. r is the last state the
// store accepted.
type driver struct {
	e     *Engine
	kl    *keyLease
	key   rekey.Key
	b     *backend
	r     rekey.Rotation
	start time.Time
}

// claim stores a new rotation of k in state claimed (rule 1: the store's
// one-open-rotation constraint decides). If another rotation of k is open
// already, that one is returned to be resumed instead.
func (e *Engine) claim(ctx context.Context, kl *keyLease, k rekey.Key, reason rekey.RotationReason, note string, compromised int) (rekey.Rotation, error) {
	now := e.now()
	r := rekey.Rotation{
		ID:          rekey.NewID(),
		Key:         k.Name,
		FromVersion: k.ActiveVersion,
		State:       rekey.RotationClaimed,
		Reason:      reason,
		Note:        note,
		Compromised: compromised,
		StartedAt:   now,
		UpdatedAt:   now,
		Owner:       e.owner,
		Epoch:       kl.fence().Epoch,
	}
	ev := e.rotationEvent(rekey.AuditRotationStarted, r)
	ev.Status = string(rekey.RotationClaimed)
	err := e.retry(ctx, func(ctx context.Context) error {
		return e.store.CreateRotation(ctx, r, kl.fence(), ev)
	})
	if errors.Is(err, rekey.ErrConflict) {
		// Someone opened one first (or our own earlier try did commit):
		// resume whatever is open, never open a second.
		open, oerr := e.store.OpenRotation(ctx, k.Name)
		if oerr != nil {
			return rekey.Rotation{}, fmt.Errorf("claim rotation of key %s: %w (and reading the open one: %v)", k.Name, err, oerr)
		}
		if open.ID != r.ID {
			e.log.Info("key already has an open rotation; resuming it", "key_id", k.Name, "rotation_id", open.ID, "state", open.State)
			return open, nil
		}
		err = nil
	}
	if err != nil {
		return rekey.Rotation{}, fmt.Errorf("claim rotation of key %s: %w", k.Name, err)
	}
	e.log.Info("rotation claimed", "key_id", k.Name, "rotation_id", r.ID, "from_version", r.FromVersion, "reason", r.Reason)
	if err := e.hit(failpoint.RotationAfterClaim); err != nil {
		return r, err
	}
	return r, nil
}

// drive carries r from whatever state it is in to done. It returns the last
// state the store accepted, also on error.
func (e *Engine) drive(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, r rekey.Rotation) (rekey.Rotation, error) {
	d := &driver{e: e, kl: kl, key: k, b: b, r: r, start: time.Now()}
	e.obs.RotationStarted(k.Name)
	err := d.run(ctx)
	dur := time.Since(d.start)
	switch {
	case err == nil:
		e.obs.RotationFinished(k.Name, ResultSuccess, dur)
		status := "success"
		if d.r.Failed > 0 {
			status = "completed_with_failures"
		}
		e.log.Info("key rotation complete", "key_id", k.Name, "rotation_id", d.r.ID,
			"from_version", d.r.FromVersion, "to_version", d.r.ToVersion, "deks_rotated", d.r.Done,
			"deks_failed", d.r.Failed, "status", status, "duration_ms", dur.Milliseconds())
	case isFenced(err) || ctx.Err() != nil:
		// Not a failure of the rotation: another worker has it, or we are
		// stopping. The state is checkpointed; it resumes.
	default:
		e.obs.RotationFinished(k.Name, ResultFailure, dur)
	}
	return d.r, err
}

func (d *driver) run(ctx context.Context) error {
	for {
		var err error
		switch d.r.State {
		case rekey.RotationClaimed:
			err = d.recordVersion(ctx)
		case rekey.RotationVersionCreated:
			err = d.startRewrap(ctx)
		case rekey.RotationRewrapping:
			err = d.rewrapAndCommit(ctx)
		case rekey.RotationCommitted:
			err = d.sweepAndFinish(ctx)
		case rekey.RotationDone:
			return nil
		default:
			return fmt.Errorf("rotation %s of key %s is in unknown state %q", d.r.ID, d.r.Key, d.r.State)
		}
		if err != nil {
			return err
		}
	}
}

// advance applies one guarded step (rule 8: state and audit events in one
// store transaction, fenced by the lease) and, on success, makes it the
// driver's state. Writes run on a context of their own so that a graceful
// stop never interrupts a checkpoint that has begun.
func (d *driver) advance(ctx context.Context, u rekey.RotationUpdate) error {
	u.Rotation.Owner = d.e.owner
	u.Rotation.Epoch = d.kl.fence().Epoch
	u.Rotation.UpdatedAt = d.e.now()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	if err := d.e.advanceRotation(wctx, d.kl, u); err != nil {
		return fmt.Errorf("rotation %s of key %s: %s → %s: %w", d.r.ID, d.r.Key, u.FromState, u.Rotation.State, err)
	}
	d.r = u.Rotation
	return nil
}

// advanceRotation is AdvanceRotation with retries. A retry that finds the
// row already moved checks whether an earlier try did commit (a transient
// error can hide a success) before reporting ErrStale or ErrConflict.
func (e *Engine) advanceRotation(ctx context.Context, kl *keyLease, u rekey.RotationUpdate) error {
	tries := 0
	return e.retry(ctx, func(ctx context.Context) error {
		tries++
		err := e.store.AdvanceRotation(ctx, u, kl.fence())
		if err != nil && tries > 1 && (errors.Is(err, rekey.ErrStale) || errors.Is(err, rekey.ErrConflict)) {
			got, gerr := e.store.GetRotation(ctx, u.Rotation.ID)
			if gerr == nil && got.State == u.Rotation.State && got.ToVersion == u.Rotation.ToVersion &&
				got.Cursor == u.Rotation.Cursor && got.Done == u.Rotation.Done {
				return nil
			}
		}
		return err
	})
}

// recordVersion is rule 2: exactly one new backend version per rotation.
// The backend's current version is compared with from_version first; if
// the backend is ahead (a crash after an earlier RotateKey, or the
// provider's own rotation), that version is adopted instead of rotating
// again. A RotateKey that fails transiently is retried only after looking
// again, since the failed call may have rotated. The lease is confirmed
// just before RotateKey. The new version is recorded (state
// version_created) before any DEK is touched.
func (d *driver) recordVersion(ctx context.Context) error {
	e, from := d.e, d.r.FromVersion
	var (
		to      int
		rotated bool
	)
	err := e.retry(ctx, func(ctx context.Context) error {
		var cur int
		if err := e.kmsCall(ctx, d.b, "current_version", func(ctx context.Context) (err error) {
			cur, err = d.b.kms.CurrentVersion(ctx, d.b.ref)
			return err
		}); err != nil {
			return err
		}
		switch {
		case cur > from:
			to, rotated = cur, false
			return nil
		case cur < from:
			return fmt.Errorf("backend %s reports version %d of key %s, behind the store's active version %d: refusing to rotate (was the backend restored from an old copy?)",
				d.b.name, cur, d.key.Name, from)
		}
		// Backends take no fence, so make sure the lease is still ours
		// right before the one call that cannot be undone: a worker that
		// was paused and lost the key stops here instead of rotating.
		l, err := e.store.RenewLease(ctx, d.kl.fence(), e.cfg.LeaseTTL, e.now())
		if err != nil {
			return fmt.Errorf("confirm lease before rotating: %w", err)
		}
		d.kl.set(l)
		// One try only: a retry must look at CurrentVersion again first.
		start := time.Now()
		v, err := d.b.kms.RotateKey(ctx, d.b.ref)
		result := ResultSuccess
		if err != nil {
			result = ResultFailure
		}
		e.obs.KMSCall(d.b.name, "rotate_key", result, time.Since(start))
		if err != nil {
			return fmt.Errorf("backend rotate: %w", err)
		}
		to, rotated = v, true
		return nil
	})
	if err != nil {
		return fmt.Errorf("create new version of key %s: %w", d.key.Name, err)
	}
	if to > from+1 {
		e.log.Warn("backend is more than one version ahead; adopting its newest version", "key_id", d.key.Name, "from_version", from, "to_version", to)
	}
	if rotated {
		e.log.Info("new key version created", "key_id", d.key.Name, "rotation_id", d.r.ID, "from_version", from, "to_version", to)
		if err := e.hit(failpoint.RotationAfterBackendRotate); err != nil {
			return err
		}
	} else {
		e.log.Info("backend already ahead; adopting its version instead of rotating", "key_id", d.key.Name, "rotation_id", d.r.ID, "from_version", from, "to_version", to)
	}
	now := e.now()
	nr := d.r
	nr.ToVersion = to
	nr.State = rekey.RotationVersionCreated
	typ := rekey.AuditVersionCreated
	if !rotated {
		typ = rekey.AuditVersionAdopted
	}
	ev := e.rotationEvent(typ, nr)
	ev.Status = string(rekey.VersionCreated)
	if err := d.advance(ctx, rekey.RotationUpdate{
		Rotation:   nr,
		FromState:  rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Key: d.key.Name, Version: to, State: rekey.VersionCreated, CreatedAt: now},
		Events:     []rekey.AuditEvent{ev},
	}); err != nil {
		return err
	}
	return e.hit(failpoint.RotationAfterVersionRecorded)
}

// startRewrap counts the DEKs to re-wrap and moves to rewrapping.
func (d *driver) startRewrap(ctx context.Context) error {
	counts, err := d.e.countDEKs(ctx, d.key.Name)
	if err != nil {
		return err
	}
	var total int64
	for v, n := range counts {
		if v != d.r.ToVersion {
			total += n
		}
	}
	nr := d.r
	nr.State = rekey.RotationRewrapping
	nr.Total = total
	nr.Cursor = ""
	// The state change is audited like every other (rule 8): a progress
	// event at zero that names the work ahead.
	ev := d.e.rotationEvent(rekey.AuditRewrapProgress, nr)
	ev.Status = string(rekey.RotationRewrapping)
	return d.advance(ctx, rekey.RotationUpdate{Rotation: nr, FromState: rekey.RotationVersionCreated, Events: []rekey.AuditEvent{ev}})
}

// rewrapAndCommit re-wraps every DEK not on to_version (the compromised
// version's first, in an emergency), then commits (rule 4).
func (d *driver) rewrapAndCommit(ctx context.Context) error {
	if d.r.Compromised > 0 {
		if err := d.compromisedPass(ctx); err != nil {
			return err
		}
	}
	if err := d.pass(ctx, rekey.RotationRewrapping); err != nil {
		return err
	}
	if err := d.e.hit(failpoint.RotationBeforeCommit); err != nil {
		return err
	}
	return d.commit(ctx)
}

// compromisedPass re-wraps the compromised version's DEKs before any other.
// It needs no durable cursor: it lists only DEKs still on that version, so
// a resumed pass finds just what is left. DEKs that cannot be unwrapped are
// not counted here; the main pass meets them again and counts them once.
func (d *driver) compromisedPass(ctx context.Context) error {
	cursor := ""
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		deks, err := d.e.listDEKs(ctx, rekey.DEKQuery{Key: d.key.Name, Version: d.r.Compromised, After: cursor, Limit: d.e.cfg.BatchSize})
		if err != nil {
			return err
		}
		if len(deks) == 0 {
			return nil
		}
		res, err := d.e.rewrapBatch(ctx, d.kl, d.b, deks, d.r.ToVersion)
		if err != nil {
			return err
		}
		cursor = deks[len(deks)-1].ID
		if err := d.checkpoint(ctx, d.r.State, d.r.Cursor, res.done, nil); err != nil {
			return err
		}
		if err := d.e.hit(failpoint.RewrapAfterBatchCommit); err != nil {
			return err
		}
	}
}

// pass streams the DEKs of the key that are not on to_version, in id order
// from the rotation's cursor, one checkpointed batch at a time (rule 3). It
// checks ctx between batches (rule 9): a stop abandons no more than the
// batch not yet written.
func (d *driver) pass(ctx context.Context, state rekey.RotationState) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		deks, err := d.e.listDEKs(ctx, rekey.DEKQuery{Key: d.key.Name, NotVersion: d.r.ToVersion, After: d.r.Cursor, Limit: d.e.cfg.BatchSize})
		if err != nil {
			return err
		}
		if len(deks) == 0 {
			d.e.log.Info("re-wrap pass done", "key_id", d.key.Name, "rotation_id", d.r.ID, "state", state,
				"to_version", d.r.ToVersion, "deks_rotated", d.r.Done, "deks_failed", d.r.Failed)
			return nil
		}
		res, err := d.e.rewrapBatch(ctx, d.kl, d.b, deks, d.r.ToVersion)
		if err != nil {
			return err
		}
		if err := d.checkpoint(ctx, state, deks[len(deks)-1].ID, res.done, res.failed); err != nil {
			return err
		}
		if err := d.e.hit(failpoint.RewrapAfterBatchCommit); err != nil {
			return err
		}
	}
}

// checkpoint records a batch: cursor, counters, failed ids, and one
// rewrap.progress event.
func (d *driver) checkpoint(ctx context.Context, state rekey.RotationState, cursor string, done int64, failed []string) error {
	nr := d.r
	nr.Cursor = cursor
	nr.Done += done
	nr.Failed += int64(len(failed))
	if room := maxFailedDEKs - len(nr.FailedDEKs); room > 0 && len(failed) > 0 {
		nr.FailedDEKs = append(append([]string(nil), nr.FailedDEKs...), failed[:min(room, len(failed))]...)
	}
	ev := d.e.rotationEvent(rekey.AuditRewrapProgress, nr)
	ev.Status = string(state)
	if len(failed) > 0 {
		ev.Error = fmt.Sprintf("%d DEK(s) in this batch could not be unwrapped", len(failed))
	}
	if err := d.advance(ctx, rekey.RotationUpdate{Rotation: nr, FromState: state, Events: []rekey.AuditEvent{ev}}); err != nil {
		return err
	}
	if done > 0 {
		d.e.obs.DEKsRewrapped(d.key.Name, int(done))
	}
	d.e.obs.Progress(d.key.Name, progress(nr))
	d.e.log.Debug("re-wrap batch committed", "key_id", d.key.Name, "rotation_id", nr.ID, "to_version", nr.ToVersion,
		"deks_rotated", nr.Done, "deks_total", nr.Total, "deks_failed", nr.Failed)
	return nil
}

func progress(r rekey.Rotation) float64 {
	if r.State == rekey.RotationDone || r.State == rekey.RotationCommitted {
		return 1
	}
	if r.Total <= 0 {
		return 0
	}
	return min(float64(r.Done)/float64(r.Total), 1)
}

// commit activates to_version (rule 4): expires_at = now + rotation_period,
// from_version → pending_retirement with retire_after = now + grace (unless
// it is compromised, which it stays). The cursor and failure counters are
// reset for the final sweep, which recounts the DEKs that cannot be
// unwrapped.
func (d *driver) commit(ctx context.Context) error {
	e := d.e
	now := e.now()
	key, err := e.getKey(ctx, d.key.Name)
	if err != nil {
		return fmt.Errorf("commit rotation %s: %w", d.r.ID, err)
	}
	fromState, err := e.versionState(ctx, d.key.Name, d.r.FromVersion)
	if err != nil {
		return fmt.Errorf("commit rotation %s: %w", d.r.ID, err)
	}
	act := &rekey.Activation{
		Version:     d.r.ToVersion,
		ExpiresAt:   now.Add(key.Policy.RotationPeriod),
		Previous:    d.r.FromVersion,
		RetireAfter: now.Add(key.Policy.Grace),
	}
	nr := d.r
	nr.State = rekey.RotationCommitted
	nr.Cursor = ""
	nr.Failed = 0
	nr.FailedDEKs = nil
	committed := e.rotationEvent(rekey.AuditRotationCommitted, d.r)
	committed.Status = string(rekey.RotationCommitted)
	if d.r.Failed > 0 {
		committed.Error = fmt.Sprintf("%d DEK(s) could not be unwrapped and stay on their version", d.r.Failed)
	}
	events := []rekey.AuditEvent{committed}
	if fromState != rekey.VersionCompromised {
		pending := e.rotationEvent(rekey.AuditVersionPendingRetirement, nr)
		pending.Status = "retire_after " + act.RetireAfter.Format(time.RFC3339)
		events = append(events, pending)
	}
	if err := d.advance(ctx, rekey.RotationUpdate{Rotation: nr, FromState: rekey.RotationRewrapping, Activate: act, Events: events}); err != nil {
		return err
	}
	d.key.ActiveVersion = act.Version
	d.key.ExpiresAt = act.ExpiresAt
	e.log.Info("rotation committed", "key_id", d.key.Name, "rotation_id", nr.ID, "from_version", nr.FromVersion,
		"to_version", nr.ToVersion, "deks_rotated", nr.Done, "expires_at", act.ExpiresAt, "retire_after", act.RetireAfter)
	return e.hit(failpoint.RotationAfterCommit)
}

// sweepAndFinish is the final sweep of rule 4 (every DEK still not on
// to_version, such as one written under the old version while the re-wrap
// ran) and then done.
func (d *driver) sweepAndFinish(ctx context.Context) error {
	if err := d.pass(ctx, rekey.RotationCommitted); err != nil {
		return err
	}
	nr := d.r
	nr.State = rekey.RotationDone
	nr.FinishedAt = d.e.now()
	nr.LastError = ""
	ev := d.e.rotationEvent(rekey.AuditRotationCompleted, nr)
	ev.Status = ResultSuccess
	if nr.Failed > 0 {
		ev.Status = "completed_with_failures"
		ev.Error = fmt.Sprintf("%d DEK(s) could not be unwrapped; retirement of their version is blocked", nr.Failed)
	}
	if err := d.advance(ctx, rekey.RotationUpdate{Rotation: nr, FromState: rekey.RotationCommitted, Events: []rekey.AuditEvent{ev}}); err != nil {
		return err
	}
	d.e.obs.Progress(d.key.Name, 1)
	return nil
}

// recordFailure audits a failed attempt on key (rule 6: rotation.failed with
// the error text, never key material). When a rotation is open, its
// last_error is set in the same transaction.
func (e *Engine) recordFailure(ctx context.Context, kl *keyLease, key string, r *rekey.Rotation, phase string, cause error) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	msg := truncate(cause.Error(), 2000)
	ev := e.event(rekey.AuditRotationFailed, key)
	ev.Status = ResultFailure
	ev.Error = msg
	ev.Reason = phase
	if r != nil && r.ID != "" {
		ev.RotationID, ev.FromVersion, ev.ToVersion, ev.DEKs = r.ID, r.FromVersion, r.ToVersion, r.Done
		ev.Reason = phase + " (" + reasonText(*r) + ")"
		// Re-read: the in-memory copy may lag a write whose outcome was
		// unknown.
		if got, err := e.store.GetRotation(wctx, r.ID); err == nil && got.State.Open() && kl != nil {
			got.LastError = msg
			got.UpdatedAt = e.now()
			got.Owner, got.Epoch = e.owner, kl.fence().Epoch
			if err := e.store.AdvanceRotation(wctx, rekey.RotationUpdate{Rotation: got, FromState: got.State, Events: []rekey.AuditEvent{ev}}, kl.fence()); err == nil {
				return
			}
		}
	}
	if err := e.store.AppendAudit(wctx, ev); err != nil {
		e.log.Error("writing rotation.failed audit event failed", "key_id", key, "error", err)
	}
}

// versionState returns the state of one version of key.
func (e *Engine) versionState(ctx context.Context, key string, version int) (rekey.VersionState, error) {
	vs, err := e.listVersions(ctx, key)
	if err != nil {
		return "", err
	}
	for _, v := range vs {
		if v.Version == version {
			return v.State, nil
		}
	}
	return "", fmt.Errorf("key %s version %d: %w", key, version, rekey.ErrVersionNotFound)
}

func (e *Engine) listVersions(ctx context.Context, key string) (vs []rekey.KeyVersion, err error) {
	err = e.retry(ctx, func(ctx context.Context) error {
		vs, err = e.store.ListVersions(ctx, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list versions of key %s: %w", key, err)
	}
	return vs, nil
}

func (e *Engine) countDEKs(ctx context.Context, key string) (c map[int]int64, err error) {
	err = e.retry(ctx, func(ctx context.Context) error {
		c, err = e.deks.CountDEKs(ctx, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("count DEKs of key %s: %w", key, err)
	}
	return c, nil
}

func (e *Engine) listDEKs(ctx context.Context, q rekey.DEKQuery) (deks []rekey.DEK, err error) {
	err = e.retry(ctx, func(ctx context.Context) error {
		deks, err = e.deks.ListDEKs(ctx, q)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list DEKs of key %s: %w", q.Key, err)
	}
	return deks, nil
}

// openRotation returns key's open rotation, or nil when there is none.
func (e *Engine) openRotation(ctx context.Context, key string) (*rekey.Rotation, error) {
	var r rekey.Rotation
	err := e.retry(ctx, func(ctx context.Context) (err error) {
		r, err = e.store.OpenRotation(ctx, key)
		return err
	})
	if errors.Is(err, rekey.ErrRotationNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read open rotation of key %s: %w", key, err)
	}
	return &r, nil
}

func (e *Engine) getKey(ctx context.Context, name string) (k rekey.Key, err error) {
	err = e.retry(ctx, func(ctx context.Context) error {
		k, err = e.store.GetKey(ctx, name)
		return err
	})
	if err != nil {
		return rekey.Key{}, fmt.Errorf("read key %s: %w", name, err)
	}
	return k, nil
}

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
	// srcAfter is, per DEK source split into ranges of the shared
	// re-wrap, the cursor after its last range: the rewrapping state's
	// source pass starts there (shareRewrap sets it).
	srcAfter map[string]string
}

// claim stores a new rotation of k in state claimed (rule 1: the store's
// one-open-rotation constraint decides). If another rotation of k is open
// already, that one is returned to be resumed instead.
//
// Nothing is written for a key whose backend does not answer: it is asked
// for its current version first, and an error there fails the claim
// before any rotation exists (the caller logs and audits the failure).
func (e *Engine) claim(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, reason rekey.RotationReason, note string, compromised int) (rekey.Rotation, error) {
	if _, err := b.kms.CurrentVersion(ctx, b.ref); err != nil {
		return rekey.Rotation{}, fmt.Errorf("key %s: backend %s did not answer, so no rotation was started: %w", k.Name, b.name, err)
	}
	return e.claimRotation(ctx, kl, k, rekey.Rotation{Reason: reason, Note: note, Compromised: compromised})
}

// claimRotation is claim for a rotation with r's reason, note, compromised
// version and target backend.
func (e *Engine) claimRotation(ctx context.Context, kl *keyLease, k rekey.Key, r rekey.Rotation) (rekey.Rotation, error) {
	now := e.now()
	r.ID = rekey.NewID()
	r.Key = k.Name
	r.FromVersion = k.ActiveVersion
	r.State = rekey.RotationClaimed
	r.StartedAt, r.UpdatedAt = now, now
	r.Owner, r.Epoch = e.owner, kl.fence().Epoch
	ev := e.rotationEvent(rekey.AuditRotationStarted, r)
	ev.Status = string(rekey.RotationClaimed)
	err := e.store.CreateRotation(ctx, r, kl.fence(), ev)
	if errors.Is(err, rekey.ErrConflict) {
		// Someone opened one first (or an earlier try of the store
		// middleware did commit):
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
	e.log.Info("rotation claimed", "key_id", k.Name, "rotation_id", r.ID, "from_version", r.FromVersion, "reason", r.Reason, "to_backend", r.ToBackend)
	if err := e.hit(failpoint.RotationAfterClaim); err != nil {
		return r, err
	}
	return r, nil
}

// drive carries r from whatever state it is in to done. It returns the last
// state the store accepted, also on error.
func (e *Engine) drive(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, r rekey.Rotation) (rekey.Rotation, error) {
	d := &driver{e: e, kl: kl, key: k, b: b, r: r, start: time.Now()}
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

// advanceRotation is AdvanceRotation. The store middleware retries
// transient errors, and a try whose success was hidden behind a transient
// error makes the next try find the row already moved: on ErrStale or
// ErrConflict the rotation is read back, and if it is exactly where u
// would have put it, the step did commit.
func (e *Engine) advanceRotation(ctx context.Context, kl *keyLease, u rekey.RotationUpdate) error {
	err := e.store.AdvanceRotation(ctx, u, kl.fence())
	if err != nil && (errors.Is(err, rekey.ErrStale) || errors.Is(err, rekey.ErrConflict)) && e.alreadyAt(ctx, u.Rotation) {
		return nil
	}
	return err
}

// alreadyAt reports whether the stored rotation r.ID is in r's state, with
// r's target version, cursor and counters.
func (e *Engine) alreadyAt(ctx context.Context, r rekey.Rotation) bool {
	got, err := e.store.GetRotation(ctx, r.ID)
	return err == nil && got.State == r.State && got.ToVersion == r.ToVersion &&
		got.Cursor == r.Cursor && got.Done == r.Done && got.Failed == r.Failed
}

// recordVersion is rule 2: exactly one new backend version per rotation.
// The new version goes on the key's backend, or for a move on the
// rotation's target backend (newVersionSite). The backend's current
// version is compared with the newest version the store has there first;
// if the backend is ahead (a crash after an earlier RotateKey, or the
// provider's own rotation) that version is adopted instead of rotating
// again. A move to a backend holding no version of the key creates the
// key there; a key an interrupted attempt created is found and adopted
// (createOnTarget). A RotateKey (or CreateKey) that fails transiently (the
// middleware tries it only once) is asked again only after a backoff and a
// new look at the backend, since the failed call may have done it;
// Config.RotateRetry bounds the rounds. Errors of CurrentVersion and of
// the lease are returned as they are: the middleware already retried
// them. The lease is confirmed just before the call that cannot be undone.
// The new version is recorded (state version_created), with its backend,
// reference and number there, before any DEK is touched; rekey numbers it
// after the key's newest version, as far ahead as the backend went.
func (d *driver) recordVersion(ctx context.Context) error {
	e, from := d.e, d.r.FromVersion
	site, err := d.newVersionSite(ctx)
	if err != nil {
		return fmt.Errorf("create new version of key %s: %w", d.key.Name, err)
	}
	tb := site.b
	var (
		bver    int // the new version's number at tb
		rotated bool
		final   error // ends the loop as it is: not retried here
	)
	// Backends take no fence, so make sure the lease is still ours right
	// before the one call that cannot be undone: a worker that was paused
	// and lost the key stops here instead of rotating.
	confirmLease := func(ctx context.Context) error {
		l, err := e.store.RenewLease(ctx, d.kl.fence(), e.cfg.LeaseTTL, e.now())
		if err != nil {
			return fmt.Errorf("confirm lease before rotating: %w", err)
		}
		d.kl.set(l)
		return nil
	}
	err = e.cfg.RotateRetry.Do(ctx, func(ctx context.Context) error {
		if tb.ref == "" {
			if final = confirmLease(ctx); final != nil {
				return nil
			}
			ref, v, created, err := d.createOnTarget(ctx, tb)
			if err != nil {
				if rekey.IsTransient(err) {
					e.log.Warn("creating the key on the move's target failed transiently; looking again before another try",
						"key_id", d.key.Name, "rotation_id", d.r.ID, "backend", tb.name, "error", err)
					return err
				}
				final = err
				return nil
			}
			if tb, final = d.b.rt.site(tb.name, ref); final != nil {
				return nil
			}
			bver, rotated = v, created
			return nil
		}
		cur, err := tb.kms.CurrentVersion(ctx, tb.ref)
		switch {
		case err != nil:
			final = fmt.Errorf("backend current version: %w", err)
			return nil
		case cur > site.baseline:
			bver, rotated = cur, false
			return nil
		case cur < site.baseline:
			final = fmt.Errorf("backend %s reports version %d of key %s, behind the store's version %d there: refusing to rotate (was the backend restored from an old copy?)",
				tb.name, cur, d.key.Name, site.baseline)
			return nil
		}
		if final = confirmLease(ctx); final != nil {
			return nil
		}
		v, err := tb.kms.RotateKey(ctx, tb.ref)
		if err != nil {
			if rekey.IsTransient(err) {
				e.log.Warn("backend rotate failed transiently; looking at its current version again before another try",
					"key_id", d.key.Name, "rotation_id", d.r.ID, "error", err)
			}
			return fmt.Errorf("backend rotate: %w", err)
		}
		bver, rotated = v, true
		return nil
	})
	if err == nil {
		err = final
	}
	if err != nil {
		return fmt.Errorf("create new version of key %s: %w", d.key.Name, err)
	}
	to := site.newest + bver - site.baseline
	if to > from+1 {
		e.log.Warn("backend is more than one version ahead; adopting its newest version", "key_id", d.key.Name, "from_version", from, "to_version", to)
	}
	if rotated {
		e.log.Info("new key version created", "key_id", d.key.Name, "rotation_id", d.r.ID, "from_version", from, "to_version", to,
			"backend", tb.name, "backend_version", bver)
		if err := e.hit(failpoint.RotationAfterBackendRotate); err != nil {
			return err
		}
	} else {
		e.log.Info("backend already ahead; adopting its version instead of rotating", "key_id", d.key.Name, "rotation_id", d.r.ID,
			"from_version", from, "to_version", to, "backend", tb.name, "backend_version", bver)
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
		Rotation:  nr,
		FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Key: d.key.Name, Version: to, State: rekey.VersionCreated, CreatedAt: now,
			Backend: tb.name, BackendRef: tb.ref, BackendVersion: bver},
		Events: []rekey.AuditEvent{ev},
	}); err != nil {
		return err
	}
	return e.hit(failpoint.RotationAfterVersionRecorded)
}

// startRewrap counts the DEKs to re-wrap and moves to rewrapping.
func (d *driver) startRewrap(ctx context.Context) error {
	// A per-row-key source that cannot be read is left out of the total
	// (its pass is skipped too, logged there).
	counts, _, err := d.e.countDEKsAvail(ctx, d.key.Name, true)
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
	if d.r.Compromised == 0 {
		// An emergency re-wraps the compromised version first, alone.
		if err := d.shareRewrap(ctx); err != nil {
			return err
		}
	}
	if err := d.pass(ctx, rekey.RotationRewrapping); err != nil {
		return err
	}
	if err := d.sourcePasses(ctx, rekey.RotationRewrapping); err != nil {
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
		deks, err := d.e.listDEKs(ctx, rekey.DEKQuery{Key: d.key.Name, Version: d.r.Compromised, After: cursor, Limit: d.e.cfg.BatchSize, Brief: true})
		if err != nil {
			return err
		}
		if len(deks) == 0 {
			return nil
		}
		ck := &batchCheckpoint{d: d, state: d.r.State, cursor: d.r.Cursor}
		if _, err := d.e.rewrapBatch(ctx, d.kl, d.b, deks, d.r.ToVersion, ck); err != nil {
			return err
		}
		cursor = deks[len(deks)-1].ID
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
	if isSourceCursor(d.r.Cursor) {
		return nil // rekey's own DEKs are done: the sources' passes resume
	}
	query := func(after string) rekey.DEKQuery {
		return rekey.DEKQuery{Key: d.key.Name, NotVersion: d.r.ToVersion, After: after, Limit: d.e.cfg.BatchSize, Brief: true}
	}
	var ahead *readAhead
	defer func() { ahead.stop() }()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, err := d.e.list(ctx, ahead, query(d.r.Cursor))
		ahead = nil
		if err != nil {
			return err
		}
		deks := p.deks
		if len(deks) == 0 {
			d.e.log.Info("re-wrap pass done", "key_id", d.key.Name, "rotation_id", d.r.ID, "state", state,
				"to_version", d.r.ToVersion, "deks_rotated", d.r.Done, "deks_failed", d.r.Failed)
			return nil
		}
		ck := &batchCheckpoint{d: d, state: state, cursor: deks[len(deks)-1].ID, countFailed: true}
		if len(deks) == d.e.cfg.BatchSize {
			ahead = d.e.listAhead(ctx, query(ck.cursor), "", d.b, d.r.ToVersion)
		}
		if _, err := d.e.rewrapPrepared(ctx, d.kl, d.b, p, d.r.ToVersion, ck, ahead); err != nil {
			return err
		}
		if err := d.e.hit(failpoint.RewrapAfterBatchCommit); err != nil {
			return err
		}
	}
}

// batchCheckpoint is how a rotation records one re-wrap batch: the state
// it stays in, the cursor after the batch, and whether DEKs that cannot be
// unwrapped are counted (the compromised pass leaves them to the main
// pass, which meets them again).
type batchCheckpoint struct {
	d           *driver
	state       rekey.RotationState
	cursor      string
	countFailed bool
}

// update is the checkpoint of one write: cursor, Done raised by done,
// failed ids added, and one rewrap.progress event.
func (c *batchCheckpoint) update(done int64, failed []string) rekey.RotationUpdate {
	d := c.d
	if !c.countFailed {
		failed = nil
	}
	nr := d.r
	nr.Cursor = c.cursor
	nr.Done += done
	nr.Failed += int64(len(failed))
	if room := maxFailedDEKs - len(nr.FailedDEKs); room > 0 && len(failed) > 0 {
		nr.FailedDEKs = append(append([]string(nil), nr.FailedDEKs...), failed[:min(room, len(failed))]...)
	}
	nr.Owner = d.e.owner
	nr.Epoch = d.kl.fence().Epoch
	nr.UpdatedAt = d.e.now()
	ev := d.e.rotationEvent(rekey.AuditRewrapProgress, nr)
	ev.Status = string(c.state)
	if len(failed) > 0 {
		ev.Error = fmt.Sprintf("%d DEK(s) in this batch could not be unwrapped", len(failed))
	}
	return rekey.RotationUpdate{Rotation: nr, FromState: c.state, Events: []rekey.AuditEvent{ev}}
}

// commitBatch writes swaps and the checkpoint in one transaction (rule 3
// with issue 7's "one transaction per batch"): the store adds the swaps
// it applied to Done and to the event's DEKs, so the checkpoint can never
// fall behind the DEKs it describes. done counts DEKs found already on the
// target version (not swapped by this call). It returns the ids of the
// swaps that lost.
func (c *batchCheckpoint) commitBatch(ctx context.Context, swaps []rekey.DEKSwap, done int64, failed []string) ([]string, error) {
	d := c.d
	bc := d.e.deks.(rekey.BatchCommitter) // oneTx said so
	u := c.update(done, failed)
	// A try of the store middleware whose success was hidden behind a
	// transient error makes the next try find every swap lost, and write
	// the checkpoint without them: rewrapBatch re-reads lost DEKs, finds
	// them on the target version and counts them in the next write.
	lost, err := bc.CommitBatch(ctx, swaps, d.kl.fence(), u)
	if err != nil {
		return nil, fmt.Errorf("rotation %s of key %s: write %d DEKs and checkpoint: %w", d.r.ID, d.r.Key, len(swaps), err)
	}
	applied := int64(len(swaps) - len(lost))
	u.Rotation.Done += applied
	d.r = u.Rotation
	c.recorded(done + applied)
	return lost, nil
}

// oneTx reports whether the DEK source is the store, which commits the
// swaps with the checkpoint.
func (c *batchCheckpoint) oneTx() bool {
	_, ok := c.d.e.deks.(rekey.BatchCommitter)
	return ok
}

// stay is c with the cursor where the rotation has it.
func (c *batchCheckpoint) stay() checkpointer {
	return &batchCheckpoint{d: c.d, state: c.state, cursor: c.d.r.Cursor}
}

// advance writes the checkpoint alone, after the swaps (a DEK source that
// is not the store cannot share a transaction with it).
func (c *batchCheckpoint) advance(ctx context.Context, done int64, failed []string) error {
	u := c.update(done, failed)
	if err := c.d.advance(ctx, u); err != nil {
		return err
	}
	c.recorded(done)
	return nil
}

func (c *batchCheckpoint) recorded(done int64) {
	d := c.d
	if done > 0 {
		d.e.obs.DEKsRewrapped(d.key.Name, int(done))
	}
	d.e.log.Debug("re-wrap batch committed", "key_id", d.key.Name, "rotation_id", d.r.ID, "to_version", d.r.ToVersion,
		"deks_rotated", d.r.Done, "deks_total", d.r.Total, "deks_failed", d.r.Failed)
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
	if err := d.sourcePasses(ctx, rekey.RotationCommitted); err != nil {
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

func (e *Engine) listVersions(ctx context.Context, key string) ([]rekey.KeyVersion, error) {
	vs, err := e.store.ListVersions(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("list versions of key %s: %w", key, err)
	}
	return vs, nil
}

func (e *Engine) countDEKs(ctx context.Context, key string) (map[int]int64, error) {
	c, _, err := e.countDEKsAvail(ctx, key, false)
	return c, err
}

// countDEKsAvail is countDEKs that, when lenient, leaves out a per-row-key
// source that cannot be counted and returns it in down (Source.PerRowKey):
// the counts are then a lower bound.
func (e *Engine) countDEKsAvail(ctx context.Context, key string, lenient bool) (map[int]int64, []*SourceError, error) {
	c, err := e.deks.CountDEKs(ctx, key)
	if err != nil {
		return nil, nil, fmt.Errorf("count DEKs of key %s: %w", key, err)
	}
	down, err := e.addSourceCounts(ctx, key, c, lenient)
	if err != nil {
		return nil, down, err
	}
	return c, down, nil
}

func (e *Engine) listDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	deks, err := e.deks.ListDEKs(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("list DEKs of key %s: %w", q.Key, err)
	}
	return deks, nil
}

// openRotation returns key's open rotation, or nil when there is none.
func (e *Engine) openRotation(ctx context.Context, key string) (*rekey.Rotation, error) {
	r, err := e.store.OpenRotation(ctx, key)
	if errors.Is(err, rekey.ErrRotationNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read open rotation of key %s: %w", key, err)
	}
	return &r, nil
}

func (e *Engine) getKey(ctx context.Context, name string) (rekey.Key, error) {
	k, err := e.store.GetKey(ctx, name)
	if err != nil {
		return rekey.Key{}, fmt.Errorf("read key %s: %w", name, err)
	}
	return k, nil
}

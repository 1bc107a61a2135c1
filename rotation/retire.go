package rotation

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
)

// tendVersions handles the old versions of key once no rotation of it is
// in flight (rule 5), doing what rekey.DecideVersion (the one home of the
// rule, which plan shows too) decides for each: a version whose retirement
// (or, compromised, disabling) is blocked by DEKs has them re-wrapped
// under the active version first and is decided again on a fresh count;
// if some remain (they cannot be unwrapped) retirement is reported
// blocked. A pending_retirement version past its grace with no DEK is
// retired; a compromised version that no DEK references any more is
// disabled at the backend (it stays compromised in the store); a retired
// version past destroy_after is destroyed when the policy says so.
func (e *Engine) tendVersions(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, rep *KeyReport) error {
	vs, err := e.listVersions(ctx, k.Name)
	if err != nil {
		return err
	}
	counts, down, err := e.countDEKsAvail(ctx, k.Name, true)
	if err != nil {
		return err
	}
	now := e.now()
	for _, v := range vs {
		facts := rekey.VersionFacts{Key: k, Version: v, DEKs: dependents(counts, v.Version)}
		dec := rekey.DecideVersion(facts, now)
		if len(down) > 0 && needsZeroCount(dec) {
			// A per-row-key source cannot be counted: it may hold rows on
			// this version. Re-wrap what can be reached, decide nothing.
			if dec.RetirementBlocked() {
				moved, err := e.sweepVersion(ctx, kl, k, b, v.Version)
				rep.Rewrapped += moved
				if err != nil {
					return err
				}
				moved, err = e.sweepSourcesVersion(ctx, kl, k, b, v.Version)
				rep.Rewrapped += moved
				if err != nil {
					return err
				}
			}
			e.reportSourceWait(k.Name, v.Version, counts[v.Version], down, rep)
			continue
		}
		if dec.RetirementBlocked() {
			n, err := e.clearVersion(ctx, kl, k, b, v.Version, facts.DEKs, rep)
			if err != nil {
				return err
			}
			facts.DEKs = n
			if dec = rekey.DecideVersion(facts, now); dec.RetirementBlocked() {
				e.reportBlocked(ctx, k.Name, v.Version, n, rep)
				continue
			}
		}
		switch dec.Action {
		case rekey.VersionRetire:
			err := e.retireVersion(ctx, kl, k, b, v.Version)
			var inUse *rekey.VersionInUseError
			if errors.As(err, &inUse) {
				// The rows disagree with the count (a DEK arrived since,
				// or a counter set wrong): refused before the backend.
				e.reportBlocked(ctx, k.Name, v.Version, inUse.DEKs, rep)
				continue
			}
			if err != nil {
				return err
			}
			rep.Retired = append(rep.Retired, v.Version)
		case rekey.VersionDisable:
			err := e.disableCompromised(ctx, k, b, v.Version)
			var inUse *rekey.VersionInUseError
			if errors.As(err, &inUse) {
				// The rows disagree with the count (a counter set wrong).
				e.reportBlocked(ctx, k.Name, v.Version, inUse.DEKs, rep)
				continue
			}
			if err != nil {
				return err
			}
		case rekey.VersionDestroy:
			err := e.destroyVersion(ctx, kl, k, b, v.Version)
			var inUse *rekey.VersionInUseError
			if errors.As(err, &inUse) {
				e.reportBlocked(ctx, k.Name, v.Version, inUse.DEKs, rep)
				continue
			}
			if errors.Is(err, errDestroyDeferred) {
				continue
			}
			if err != nil {
				return err
			}
			rep.Destroyed = append(rep.Destroyed, v.Version)
		}
	}
	return nil
}

// clearVersion re-wraps the DEKs still on version (n of them by the last
// count) under the active version, and returns how many are left after.
func (e *Engine) clearVersion(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, version int, n int64, rep *KeyReport) (int64, error) {
	if n == 0 {
		return 0, nil
	}
	moved, err := e.sweepVersion(ctx, kl, k, b, version)
	rep.Rewrapped += moved
	if err != nil {
		return 0, err
	}
	moved, err = e.sweepSourcesVersion(ctx, kl, k, b, version)
	rep.Rewrapped += moved
	if err != nil {
		return 0, err
	}
	counts, err := e.countDEKs(ctx, k.Name)
	if err != nil {
		return 0, err
	}
	return dependents(counts, version), nil
}

// sweepVersion re-wraps every DEK of k on version under k's active version
// (the "re-wrap them first" of rule 5). It needs no durable cursor: what it
// moved leaves the version, so a repeated sweep sees only what is left.
func (e *Engine) sweepVersion(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, version int) (int64, error) {
	to := k.ActiveVersion
	var (
		moved, failed int64
		cursor        string
	)
	defer func() {
		if moved == 0 && failed == 0 {
			return
		}
		ev := e.event(rekey.AuditRewrapProgress, k.Name)
		ev.FromVersion, ev.ToVersion, ev.DEKs = version, to, moved
		ev.Status = "retirement_sweep"
		ev.Reason = "retirement"
		if failed > 0 {
			ev.Error = fmt.Sprintf("%d DEK(s) could not be unwrapped", failed)
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
		defer cancel()
		if err := e.store.AppendAudit(wctx, ev); err != nil {
			e.log.Error("writing rewrap.progress audit event failed", "key_id", k.Name, "error", err)
		}
		e.log.Info("re-wrapped DEKs left on an old version", "key_id", k.Name, "from_version", version, "to_version", to, "deks_rotated", moved, "deks_failed", failed)
	}()
	for {
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		deks, err := e.listDEKs(ctx, rekey.DEKQuery{Key: k.Name, Version: version, After: cursor, Limit: e.cfg.BatchSize})
		if err != nil || len(deks) == 0 {
			return moved, err
		}
		res, err := e.rewrapBatch(ctx, kl, b, deks, to, nil)
		moved += res.done
		failed += int64(len(res.failed))
		if res.done > 0 {
			e.obs.DEKsRewrapped(k.Name, int(res.done))
		}
		if err != nil {
			return moved, err
		}
		cursor = deks[len(deks)-1].ID
	}
}

// retireVersion retires version of k: first at the backend (where it can),
// then in the store, guarded so that it applies only while the version is
// pending_retirement and no DEK references it (rule 5), with the
// version.retired event in the same transaction.
func (e *Engine) retireVersion(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, version int) error {
	// The store's guard counts only rekey's own DEKs, and only after the
	// backend's step: count them and the sources' right before the step
	// that cannot be undone.
	if err := e.refuseInUse(ctx, k.Name, version); err != nil {
		return err
	}
	p, err := b.at(ctx, version)
	if err != nil {
		return fmt.Errorf("retire key %s version %d: %w", k.Name, version, err)
	}
	leftEnabled := false
	if p.b.retirer != nil {
		if err := p.b.retirer.RetireVersion(ctx, p.b.ref, p.version); err != nil {
			if leftEnabled = e.newestLeftBehind(ctx, k, p, err); !leftEnabled {
				return fmt.Errorf("retire key %s version %d at backend %s: %w", k.Name, version, p.b.name, err)
			}
		}
	}
	if err := e.hit(failpoint.RetireAfterBackendDisable); err != nil {
		return err
	}
	now := e.now()
	ev := e.event(rekey.AuditVersionRetired, k.Name)
	ev.FromVersion = version
	ev.Status = string(rekey.VersionRetired)
	if movedAway(k, p) {
		ev.Reason = "on backend " + p.b.name // the key has moved away from it
	}
	if leftEnabled {
		ev.Reason += fmt.Sprintf("; version %d stays enabled there (the backend keeps a key's newest version usable) although nothing uses it: delete key %s on backend %s to remove it",
			p.version, k.Name, p.b.name)
	}
	err = e.store.ChangeVersionState(ctx, rekey.VersionChange{
		Key: k.Name, Version: version,
		From: []rekey.VersionState{rekey.VersionPendingRetirement},
		To:   rekey.VersionRetired, RequireUnused: true, At: now,
	}, kl.fencePtr(), ev)
	if err != nil {
		var inUse *rekey.VersionInUseError
		if errors.As(err, &inUse) {
			return err
		}
		return fmt.Errorf("retire key %s version %d: %w", k.Name, version, err)
	}
	e.unblock(k.Name, version)
	e.log.Info("key version retired", "key_id", k.Name, "version", version, "status", "retired")
	return nil
}

// destroyVersion destroys a retired version's material at the backend
// (where it can) and records the version destroyed.
func (e *Engine) destroyVersion(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, version int) error {
	p, err := b.at(ctx, version)
	if err != nil {
		return fmt.Errorf("destroy key %s version %d: %w", k.Name, version, err)
	}
	deleteKey, err := e.deleteOldKey(ctx, k, p, version)
	if err != nil {
		return err
	}
	if deleteKey || p.b.retirer != nil { // a step at the backend follows
		if err := e.refuseInUse(ctx, k.Name, version); err != nil {
			return err
		}
	}
	gone := false
	switch {
	case deleteKey:
		if err := e.deleteOldBackendKey(ctx, k, p, version); err != nil {
			return err
		}
	case p.b.retirer != nil:
		err := p.b.retirer.DestroyVersion(ctx, p.b.ref, p.version)
		if err != nil && movedAway(k, p) && errors.Is(err, rekey.ErrKeyNotFound) {
			// The key is gone from the backend it moved away from (deleted
			// there by the operator, as the version.retired event advised,
			// or by rekey before a crash): so is the version's material.
			e.log.Info("the old backend no longer has the moved key: version destroyed", "key_id", k.Name, "version", version, "backend", p.b.name)
			gone, err = true, nil
		}
		if err != nil {
			return fmt.Errorf("destroy key %s version %d at backend %s: %w", k.Name, version, p.b.name, err)
		}
	}
	ev := e.event(rekey.AuditVersionDestroyed, k.Name)
	ev.FromVersion = version
	ev.Status = string(rekey.VersionDestroyed)
	if movedAway(k, p) {
		ev.Reason = "on backend " + p.b.name // the key has moved away from it
	}
	if gone {
		ev.Reason += fmt.Sprintf("; the key (%s) is no longer there", p.b.ref)
	}
	if deleteKey {
		ev.Reason += fmt.Sprintf("; the key is deleted there (%s %s, every version: it was rekey's last version there)", k.Name, p.b.ref)
	}
	err = e.store.ChangeVersionState(ctx, rekey.VersionChange{
		Key: k.Name, Version: version,
		From: []rekey.VersionState{rekey.VersionRetired},
		To:   rekey.VersionDestroyed, RequireUnused: true, At: e.now(),
	}, kl.fencePtr(), ev)
	if err != nil {
		return fmt.Errorf("destroy key %s version %d: %w", k.Name, version, err)
	}
	e.log.Info("key version destroyed", "key_id", k.Name, "version", version, "status", "destroyed")
	return nil
}

// disableCompromised disables a compromised version at the backend once no
// DEK references it. The store keeps it compromised (so applications keep
// refusing it); RetireVersion is idempotent, and this process remembers the
// versions it did so as not to repeat the call every cycle.
func (e *Engine) disableCompromised(ctx context.Context, k rekey.Key, b *backend, version int) error {
	ref := versionRef{k.Name, version}
	e.mu.Lock()
	done := e.disabled[ref]
	e.mu.Unlock()
	if done {
		return nil
	}
	p, err := b.at(ctx, version)
	if err != nil {
		return fmt.Errorf("disable compromised key %s version %d: %w", k.Name, version, err)
	}
	if p.b.retirer == nil {
		return nil
	}
	if err := e.refuseInUse(ctx, k.Name, version); err != nil {
		return err
	}
	if err := p.b.retirer.RetireVersion(ctx, p.b.ref, p.version); err != nil {
		return fmt.Errorf("disable compromised key %s version %d at backend %s: %w", k.Name, version, p.b.name, err)
	}
	if err := e.hit(failpoint.RetireAfterBackendDisable); err != nil {
		return err
	}
	e.mu.Lock()
	e.disabled[ref] = true
	e.mu.Unlock()
	e.unblock(k.Name, version)
	e.log.Info("compromised key version disabled at the backend", "key_id", k.Name, "version", version, "status", "compromised")
	return nil
}

// reportBlocked records that version of key cannot retire because n DEKs
// still reference it: a log line every time, a
// retirement.blocked audit event when the count differs from the last one
// this process audited.
func (e *Engine) reportBlocked(ctx context.Context, key string, version int, n int64, rep *KeyReport) {
	rep.Blocked = append(rep.Blocked, BlockedVersion{Version: version, DEKs: n})
	e.log.Warn("retirement blocked: DEKs still reference the version", "key_id", key, "version", version, "deks", n, "status", "retirement_blocked")
	ref := versionRef{key, version}
	e.mu.Lock()
	last, seen := e.blocked[ref]
	e.blocked[ref] = n
	e.mu.Unlock()
	if seen && last == n {
		return
	}
	ev := e.event(rekey.AuditRetirementBlocked, key)
	ev.FromVersion = version
	ev.DEKs = n
	ev.Status = "retirement_blocked"
	ev.Error = fmt.Sprintf("%d DEK(s) still reference version %d", n, version)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	if err := e.store.AppendAudit(wctx, ev); err != nil {
		e.log.Error("writing retirement.blocked audit event failed", "key_id", key, "error", err)
	}
}

// needsZeroCount reports whether acting on dec needs a count of zero DEKs
// on the version (retire, disable, or a blocked one re-decided).
func needsZeroCount(dec rekey.VersionDecision) bool {
	return dec.Action == rekey.VersionRetire || dec.Action == rekey.VersionDisable || dec.RetirementBlocked()
}

// reportSourceWait reports a version whose retirement (or disabling) waits
// because DEK sources cannot be counted: n DEKs were counted without them.
func (e *Engine) reportSourceWait(key string, version int, n int64, down []*SourceError, rep *KeyReport) {
	names := make([]string, len(down))
	for i, d := range down {
		names[i] = d.Source
	}
	why := fmt.Sprintf("DEK source %s cannot be counted (%v): it may hold rows on this version; run rekey source check %s",
		strings.Join(names, ", "), down[0], names[0])
	rep.Blocked = append(rep.Blocked, BlockedVersion{Version: version, DEKs: n, Reason: why})
	e.log.Warn("retirement waits: a DEK source cannot be counted", "key_id", key, "version", version, "deks", n,
		"source", strings.Join(names, ","), "error", down[0], "status", "retirement_blocked")
}

func (e *Engine) unblock(key string, version int) {
	ref := versionRef{key, version}
	e.mu.Lock()
	delete(e.blocked, ref)
	e.mu.Unlock()
}

// newestLeftBehind reports whether err, a refused RetireVersion at p, is
// the refusal to disable a key's newest version on a backend the key has
// moved away from (rekey key move): no rotation will ever come after it
// there, so the version cannot be disabled through the version API. The
// version is then retired in the store alone (no DEK references it, and
// rekey refuses it from then on), with the audit event saying so.
func (e *Engine) newestLeftBehind(ctx context.Context, k rekey.Key, p place, err error) bool {
	if !movedAway(k, p) || !errors.Is(err, rekey.ErrInvalidArgument) {
		return false
	}
	cur, cerr := p.b.kms.CurrentVersion(ctx, p.b.ref)
	if cerr != nil || cur != p.version {
		return false
	}
	e.log.Warn("the old backend refuses to disable its newest version of a moved key; retiring it in the store only",
		"key_id", k.Name, "backend", p.b.name, "backend_ref", p.b.ref, "backend_version", p.version, "error", err)
	return true
}

// movedAway reports whether p is on another backend than k's (as read
// after any move of k committed).
func movedAway(k rekey.Key, p place) bool { return p.b.name != k.Backend || p.b.ref != k.BackendRef }

// refuseInUse returns a *rekey.VersionInUseError when a DEK references
// version of key, counted right before a step at the backend that cannot
// be taken back: rekey's own DEKs by their rows (rekey.DEKRowCounter:
// never a store's counters alone) and the sources'.
func (e *Engine) refuseInUse(ctx context.Context, key string, version int) error {
	n, err := e.sourceRowsOn(ctx, key, version)
	if err != nil {
		return err
	}
	own, err := e.ownRowsOn(ctx, key, version)
	if err != nil {
		return err
	}
	if n += own; n > 0 {
		return &rekey.VersionInUseError{Key: key, Version: version, DEKs: n}
	}
	return nil
}

// ownRowsOn returns the number of rekey's own DEKs of key on version: the
// rows counted when the store keeps counters (rekey.DEKRowCounter), else
// its CountDEKs, which then counts the rows.
func (e *Engine) ownRowsOn(ctx context.Context, key string, version int) (int64, error) {
	if rc, ok := e.deks.(rekey.DEKRowCounter); ok {
		n, err := rc.CountDEKRows(ctx, key, version)
		if err != nil {
			return 0, fmt.Errorf("count DEKs of key %s on version %d: %w", key, version, err)
		}
		return n, nil
	}
	c, err := e.deks.CountDEKs(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("count DEKs of key %s: %w", key, err)
	}
	return c[version], nil
}

package rotation

import (
	"context"
	"errors"
	"fmt"

	"github.com/rekeyhq/rekey"
)

// A key moved to another backend leaves its newest version there enabled:
// backends refuse to disable a key's newest version, and nothing rotates
// the key there again (newestLeftBehind retires it in the store only).
// When destroy_after is set, the destruction of that version deletes the
// whole key on the old backend (rekey.KeyDeleter), once every older
// version of the key there is destroyed; a backend that is no KeyDeleter
// destroys the version as usual (pkcs11 and awskms new-key can).

// errDestroyDeferred says a version due for destruction was not destroyed
// this cycle, for a reason already logged (and audited where the operator
// must act): tendVersions goes on with the next version.
var errDestroyDeferred = errors.New("destruction deferred")

// deleteOldKey reports whether destroying version (at p) means deleting
// the key on p's backend: k has moved away from it, the backend can delete
// keys, and version is the newest of k's versions there. It returns
// errDestroyDeferred while an older version there is not destroyed yet:
// deleting the key would destroy it before its time (those come first in
// tendVersions' order, so this is rare: a compromised or blocked one).
func (e *Engine) deleteOldKey(ctx context.Context, k rekey.Key, p place, version int) (bool, error) {
	if !movedAway(k, p) || p.b.deleter == nil {
		return false, nil
	}
	vs, err := e.listVersions(ctx, k.Name)
	if err != nil {
		return false, err
	}
	var older []int
	for _, v := range vs {
		if v.Version == version {
			continue
		}
		q, err := p.b.at(ctx, v.Version)
		if err != nil || q.b != p.b {
			continue // elsewhere (or on a backend no longer configured)
		}
		if q.version > p.version {
			return false, nil // not the newest there: destroyed as a version
		}
		if v.State != rekey.VersionDestroyed {
			older = append(older, v.Version)
		}
	}
	if len(older) > 0 {
		e.log.Info("the old backend's key is deleted once its older versions are destroyed",
			"key_id", k.Name, "version", version, "backend", p.b.name, "waiting_for", fmt.Sprint(older))
		return false, errDestroyDeferred
	}
	return true, nil
}

// deleteOldBackendKey deletes k on p's backend (DeleteKey is idempotent,
// so a crash before the store records the destruction only repeats it). A
// transient failure is returned (the cycle fails and is retried); a
// refusal only the operator can lift (Vault's deletion_allowed) is logged
// and audited as destroy.blocked, once per distinct refusal in this
// process, and returns errDestroyDeferred: rekey tries again next cycle.
func (e *Engine) deleteOldBackendKey(ctx context.Context, k rekey.Key, p place, version int) error {
	err := p.b.deleter.DeleteKey(ctx, p.b.ref)
	if err == nil {
		e.mu.Lock()
		delete(e.destroyBlocked, versionRef{k.Name, version})
		e.mu.Unlock()
		return nil
	}
	if rekey.IsTransient(err) || ctx.Err() != nil {
		return fmt.Errorf("destroy key %s version %d: delete the key on its old backend %s: %w", k.Name, version, p.b.name, err)
	}
	msg := fmt.Sprintf("key %s moved away from backend %s, whose version %d (rekey's version %d) is due for destruction, but deleting the key there failed: %v; once that is fixed rekey deletes it on its next cycle (or delete key %s (%s) on backend %s yourself)",
		k.Name, p.b.name, p.version, version, err, k.Name, p.b.ref, p.b.name)
	e.log.Warn("cannot delete a moved key on its old backend", "key_id", k.Name, "version", version, "backend", p.b.name,
		"backend_ref", p.b.ref, "status", "destroy_blocked", "error", msg)
	ref := versionRef{k.Name, version}
	e.mu.Lock()
	last, seen := e.destroyBlocked[ref]
	e.destroyBlocked[ref] = msg
	e.mu.Unlock()
	if seen && last == msg {
		return errDestroyDeferred
	}
	ev := e.event(rekey.AuditDestroyBlocked, k.Name)
	ev.FromVersion = version
	ev.Status = "destroy_blocked"
	ev.Reason = "on backend " + p.b.name
	ev.Error = msg
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	if err := e.store.AppendAudit(wctx, ev); err != nil {
		e.log.Error("writing destroy.blocked audit event failed", "key_id", k.Name, "error", err)
	}
	return errDestroyDeferred
}

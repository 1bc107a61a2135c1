package rotation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/rekeyhq/rekey"
)

// fallbackHost names the host in DefaultOwner when the host name cannot be
// read. Every such host has the same one, so an owner on it is never judged
// dead (see deadOwner).
const fallbackHost = "rekey"

// DefaultOwner returns the worker id an Engine uses when Config.Owner is
// empty: the host name, "-", and the process id ("db-1-4242"). The engine
// recognises owners of this exact form when a lease is held by a process of
// the same host, and takes over the leases of those that no longer exist
// (see Config.Owner).
func DefaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = fallbackHost
	}
	return formatOwner(host, os.Getpid())
}

func formatOwner(host string, pid int) string { return fmt.Sprintf("%s-%d", host, pid) }

// parseOwner is the inverse of formatOwner: ok only for an owner that
// formatOwner makes exactly (a non-empty host, a positive pid written in
// canonical decimal: no sign, no leading zero), so that a custom worker id
// that merely ends in digits after a dash is not taken for one unless it
// is spelled exactly like a default one.
func parseOwner(owner string) (host string, pid int, ok bool) {
	i := strings.LastIndexByte(owner, '-')
	if i <= 0 {
		return "", 0, false
	}
	host = owner[:i]
	pid, err := strconv.Atoi(owner[i+1:])
	if err != nil || pid <= 0 || formatOwner(host, pid) != owner {
		return "", 0, false
	}
	return host, pid, true
}

// deadOwner reports whether the worker named owner is provably dead, and
// its pid: owner has the DefaultOwner form, its host name is this host's
// (read now, and not the fallback), its pid is not this process's, and
// signalling that pid says it does not exist (ESRCH). Anything else —
// another host, a custom id, EPERM (a process of another user), nil (a
// process, or a zombie not yet reaped), an unsupported platform — counts as
// alive: the caller waits for the lease to expire, as without this check.
//
// Why this is safe:
//   - A lease is taken over only from a process that does not exist. The
//     only way to be wrong about that is a pid that was reused by another
//     process since the holder died, and that makes a dead worker look
//     alive, never a live one look dead: we then wait for the expiry, as
//     before. A live worker cannot look dead: while it runs, its pid is
//     taken.
//   - Host names must be unique among the workers that share a store (or
//     each worker sets its own REKEY_WORKER_ID / Config.Owner). Two hosts,
//     or two containers with separate pid namespaces, under one host name
//     could take each other's live workers for dead. Even then nothing is
//     corrupted: the broken holder's fence is dead, so its next write or
//     renewal fails with ErrFenced and it stops work on the key; it only
//     loses the work in flight.
//   - The break itself is a compare-and-swap on the exact lease that was
//     read (rekey.Store.BreakLease): if the holder renewed it, released it,
//     or someone else took it over meanwhile, nothing is broken.
func deadOwner(owner string) (pid int, dead bool) {
	host, pid, ok := parseOwner(owner)
	if !ok || pid == os.Getpid() {
		return pid, false
	}
	self, err := os.Hostname()
	if err != nil || self == "" || self == fallbackHost || host != self {
		return pid, false
	}
	return pid, processGone(pid)
}

// breakDeadHolder looks at the lease another worker holds on key and, if
// that worker is provably dead (deadOwner), breaks it. It reports whether
// acquiring again is worthwhile: the lease was broken, or it changed or
// went away since AcquireLease found it held.
func (e *Engine) breakDeadHolder(ctx context.Context, key string) (bool, error) {
	held, err := e.store.GetLease(ctx, key)
	switch {
	case errors.Is(err, rekey.ErrLeaseNotFound):
		return true, nil // released meanwhile
	case err != nil:
		return false, fmt.Errorf("read the lease of key %s: %w", key, err)
	case held.Owner == e.owner:
		return true, nil // ours (a re-acquire keeps the epoch)
	}
	pid, dead := deadOwner(held.Owner)
	if !dead {
		e.log.Debug("lease holder is alive or not provably dead; waiting for its lease to expire",
			"key_id", key, "lease_owner", held.Owner, "lease_epoch", held.Epoch, "lease_expires_at", held.ExpiresAt)
		return false, nil
	}
	err = e.store.BreakLease(ctx, held, e.now())
	switch {
	case errors.Is(err, rekey.ErrStale):
		return true, nil // renewed, released or taken over meanwhile: AcquireLease decides
	case err != nil:
		return false, fmt.Errorf("break the lease of key %s: %w", key, err)
	}
	e.log.Warn("taking over the lease of a dead worker", "key_id", key,
		"old_owner", held.Owner, "old_epoch", held.Epoch, "old_expires_at", held.ExpiresAt, "old_pid", pid)
	return true, nil
}

package rotation

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rekeyhq/rekey"
)

// keyLease is this worker's lease on one key, renewed in the background.
// Every write carries fence() so that the store refuses it once another
// worker took the key over.
type keyLease struct {
	mu    sync.Mutex
	lease rekey.Lease
	lost  error // set when a renewal was fenced
	// strict: a lease found expired at renewal time is given up instead
	// of renewed (range leases: expiry fences their writes, so a worker
	// paused past its lease stops instead of carrying on).
	strict bool
}

func (kl *keyLease) fence() rekey.Lease {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	return kl.lease
}

func (kl *keyLease) fencePtr() *rekey.Lease {
	l := kl.fence()
	return &l
}

func (kl *keyLease) set(l rekey.Lease) {
	kl.mu.Lock()
	kl.lease = l
	kl.mu.Unlock()
}

func (kl *keyLease) lose(err error) {
	kl.mu.Lock()
	if kl.lost == nil {
		kl.lost = err
	}
	kl.mu.Unlock()
}

func (kl *keyLease) lostErr() error {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	return kl.lost
}

// errStopped marks work abandoned because the caller's context ended (a
// graceful stop): nothing was half-written, and it is not a failure.
var errStopped = errors.New("stopped")

// acquireLease acquires the lease on key. When another worker holds it and
// that worker is provably dead (a process of this host that no longer
// exists, see deadOwner), its lease is broken and acquired at once rather
// than at its expiry; otherwise the result is rekey.ErrLeaseHeld, as
// before. A failure to check the holder is logged and leaves ErrLeaseHeld.
func (e *Engine) acquireLease(ctx context.Context, key string) (rekey.Lease, error) {
	acquire := func() (rekey.Lease, error) {
		return e.store.AcquireLease(ctx, key, e.owner, e.cfg.LeaseTTL, e.now())
	}
	l, err := acquire()
	if !errors.Is(err, rekey.ErrLeaseHeld) {
		return l, err
	}
	again, berr := e.breakDeadHolder(ctx, key)
	if berr != nil {
		e.log.Warn("could not check whether the lease holder is alive; waiting for its lease to expire",
			"key_id", key, "error", berr)
	}
	if !again {
		return l, err
	}
	return acquire()
}

// withKey acquires the lease on key (rekey.ErrLeaseHeld when another live
// worker has it, see acquireLease), renews it every LeaseTTL/3 while fn
// runs, and releases it after. fn's context is cancelled as soon as a
// renewal finds the lease taken over; withKey then returns an error
// matching rekey.ErrFenced. A write that returns ErrFenced ends fn the same
// way, by returning it.
func (e *Engine) withKey(ctx context.Context, key string, fn func(ctx context.Context, kl *keyLease) error) error {
	return e.withLease(ctx, key, false, fn)
}

// withLease is withKey for any lease key; with strict, a renewal that
// finds the lease expired gives it up (see keyLease.strict).
func (e *Engine) withLease(ctx context.Context, key string, strict bool, fn func(ctx context.Context, kl *keyLease) error) error {
	l, err := e.acquireLease(ctx, key)
	if err != nil {
		if errors.Is(err, rekey.ErrLeaseHeld) {
			return fmt.Errorf("key %s is busy (another worker holds its lease; try again when it is done): %w", key, err)
		}
		return fmt.Errorf("acquire lease on key %s: %w", key, err)
	}
	kl := &keyLease{lease: l, strict: strict}
	kctx, cancel := context.WithCancelCause(ctx)
	stop, done := make(chan struct{}), make(chan struct{})
	go e.renewLease(kctx, kl, cancel, stop, done)
	stopRenewal := func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-done
			cancel(nil)
		}
	}
	defer stopRenewal() // also on panic, so no goroutine outlives the call

	err = fn(kctx, kl)

	stopRenewal()
	lost := kl.lostErr()
	if err != nil && lost != nil && !isFenced(err) {
		err = fmt.Errorf("key %s: %w (work stopped: %v)", key, lost, err)
	}
	if lost == nil && !isFenced(err) {
		// Release even when ctx ended (graceful stop): a short write on a
		// context of its own.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
		if rerr := e.store.ReleaseLease(rctx, kl.fence()); rerr != nil {
			e.log.Warn("releasing lease failed; it expires on its own", "key_id", key, "error", rerr)
		}
		rcancel()
	}
	if err != nil && ctx.Err() != nil && !isFenced(err) {
		err = fmt.Errorf("key %s: %w: %w", key, errStopped, err)
	}
	return err
}

// renewLease renews kl every LeaseTTL/3 until stop closes. When the store
// says the lease is no longer ours it records that and cancels the work.
func (e *Engine) renewLease(ctx context.Context, kl *keyLease, cancel context.CancelCauseFunc, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(max(e.cfg.LeaseTTL/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, now := kl.fence(), e.now()
		if kl.strict && !cur.ExpiresAt.After(now) {
			err := fmt.Errorf("lease %q expired at %s before it was renewed (this worker was paused?): %w",
				cur.Key, cur.ExpiresAt.Format(time.RFC3339), rekey.ErrFenced)
			kl.lose(err)
			e.log.Warn("lease expired before renewal; stopping work on it", "lease", cur.Key)
			cancel(err)
			return
		}
		l, err := e.store.RenewLease(ctx, cur, e.cfg.LeaseTTL, now)
		switch {
		case err == nil:
			kl.set(l)
		case isFenced(err):
			kl.lose(err)
			e.log.Warn("lease lost: another worker took the key over; stopping work on it", "key_id", kl.fence().Key)
			cancel(err)
			return
		default:
			e.log.Warn("renewing lease failed; retrying", "key_id", kl.fence().Key, "error", err)
		}
	}
}

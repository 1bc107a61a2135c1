package rotation

import (
	"context"
	"errors"

	"github.com/rekeyhq/rekey"
)

// activeUsage reads the wrap count of k's active version against its limit
// (rekey.VersionUsage). ok is false when the count cannot be read (nothing
// counts the backend's wraps, or the read failed: logged); the key is then
// judged by its schedule alone.
func (e *Engine) activeUsage(ctx context.Context, k rekey.Key) (rekey.Usage, bool) {
	vs, err := e.store.ListVersions(ctx, k.Name)
	if err != nil {
		e.log.Warn("cannot read the key's versions for its wrap count", "key_id", k.Name, "error", err)
		return rekey.Usage{}, false
	}
	for _, v := range vs {
		if v.Version != k.ActiveVersion {
			continue
		}
		u, err := rekey.VersionUsage(ctx, e.cfg.Backends, k, v)
		if err != nil {
			if !errors.Is(err, rekey.ErrUnsupported) {
				e.log.Warn("cannot read the active version's wrap count: the key is judged by its schedule alone", "key_id", k.Name, "version", v.Version, "error", err)
			}
			return rekey.Usage{}, false
		}
		return u, true
	}
	return rekey.Usage{}, false
}

// activeWraps is the active version's wrap count, 0 when it cannot be read.
func (e *Engine) activeWraps(ctx context.Context, k rekey.Key) int64 {
	u, _ := e.activeUsage(ctx, k)
	return u.Encryptions
}

// usageTooLow says whether a rotation by usage of k would loop
// (rekey.UsageRotationBlocked), counting the DEKs a rotation would
// re-wrap: in rekey's store and in the DEK sources (a source that cannot
// be counted is left out: the count is then a lower bound, and a loop it
// shows is sure).
func (e *Engine) usageTooLow(ctx context.Context, k rekey.Key) (*rekey.UsageTooLow, error) {
	rewrapped, err := rekey.LastRewrapped(ctx, e.store, k)
	if err != nil || rewrapped < k.Policy.UsageThreshold() {
		return nil, err
	}
	counts, _, err := e.countDEKsAvail(ctx, k.Name, true)
	if err != nil {
		return nil, err
	}
	return rekey.UsageRotationBlocked(k, rekey.ReasonUsage, sumCounts(counts), rewrapped), nil
}

func sumCounts(counts map[int]int64) int64 {
	var n int64
	for _, c := range counts {
		n += c
	}
	return n
}

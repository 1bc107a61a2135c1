package kmsmw

import (
	"context"
	"fmt"
	"sync"

	"github.com/rekeyhq/rekey"
)

// DefaultUsageBlock is the default of UsageOptions.MaxBlock.
const DefaultUsageBlock = 1024

// UsageOptions makes the middleware count the wraps of a backend that does
// not count its own (one that is not a rekey.UsageCounter, such as the
// local keyring is) in rekey's store, and refuse wraps past the key's
// max_encryptions.
//
// Counts are reserved in the store before they are used, in blocks: the
// first reservation for a version is 1, each next one twice the last, up
// to MaxBlock. A count is therefore never lower than the wraps done, even
// after the process is killed; it is higher by the unused part of the
// blocks of processes that ended (at most one block per process and
// version). Every try of a retried call counts: a failed try may have
// encrypted at the backend.
type UsageOptions struct {
	// Counter is the store's wrap counter. Required.
	Counter rekey.WrapCounter
	// Limit returns the usage limit (max_encryptions) of the key with
	// reference ref at this backend; 0 means none. It is called once per
	// reservation. Nil means no limit.
	Limit func(ctx context.Context, ref string) (int64, error)
	// MaxBlock is the largest reservation; 0 means DefaultUsageBlock.
	MaxBlock int64
}

// usage counts wraps in the store: one entry per ref and version.
type usage struct {
	backend string
	o       UsageOptions
	mu      sync.Mutex
	entries map[usageKey]*usageEntry
}

type usageKey struct {
	ref     string
	version int
}

// usageEntry is this process's reserved, unused counts of one version:
// next up to (not including) limit; size is the last reservation's size.
type usageEntry struct {
	mu                sync.Mutex
	next, limit, size int64
}

func newUsage(backend string, o *UsageOptions) *usage {
	if o == nil || o.Counter == nil {
		return nil
	}
	u := &usage{backend: backend, o: *o, entries: map[usageKey]*usageEntry{}}
	if u.o.MaxBlock <= 0 {
		u.o.MaxBlock = DefaultUsageBlock
	}
	return u
}

// take uses n counts of version of ref, reserving in the store as needed.
// It returns a *rekey.UsageLimitError when the key's limit leaves fewer
// than n (counts reserved on the way stay reserved: over, never under).
func (u *usage) take(ctx context.Context, ref string, version int, n int64) error {
	u.mu.Lock()
	e := u.entries[usageKey{ref, version}]
	if e == nil {
		e = &usageEntry{}
		u.entries[usageKey{ref, version}] = e
	}
	u.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	for n > 0 {
		if have := e.limit - e.next; have > 0 {
			use := min(have, n)
			e.next += use
			n -= use
			continue
		}
		var limit int64
		if u.o.Limit != nil {
			l, err := u.o.Limit(ctx, ref)
			if err != nil {
				return fmt.Errorf("kms %s: key %q: usage limit: %w", u.backend, ref, err)
			}
			limit = l
		}
		size := max(1, min(e.size*2, u.o.MaxBlock))
		total, granted, err := u.o.Counter.ReserveWraps(ctx, rekey.WrapReservation{
			Backend: u.backend, Ref: ref, Version: version, N: max(size, n), Limit: limit,
		})
		if err != nil {
			return fmt.Errorf("kms %s: count wraps: %w", u.backend, err)
		}
		e.next, e.limit, e.size = total-granted, total, size
	}
	return nil
}

// Encryptions implements rekey.UsageCounter: the inner backend's count
// when it counts its own wraps, else the store's (with UsageOptions). It
// returns an error matching rekey.ErrUnsupported when nothing counts this
// backend's wraps.
func (k *KMS) Encryptions(ctx context.Context, ref string, version int) (int64, error) {
	if uc, ok := k.inner.(rekey.UsageCounter); ok {
		return uc.Encryptions(ctx, ref, version)
	}
	if k.usage == nil {
		return 0, k.unsupported("encryptions")
	}
	n, err := k.usage.o.Counter.WrapCount(ctx, k.name, ref, version)
	if err != nil {
		return 0, fmt.Errorf("kms %s: wrap count: %w", k.name, err)
	}
	return n, nil
}

// countWraps takes n counts of version of ref when the middleware counts
// this backend's wraps.
func (k *KMS) countWraps(ctx context.Context, ref string, version int, n int) error {
	if k.usage == nil || n == 0 {
		return nil
	}
	return k.usage.take(ctx, ref, version, int64(n))
}

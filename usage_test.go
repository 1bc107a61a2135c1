package rekey_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

func TestRotationDue(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	k := rekey.Key{Name: "k", ExpiresAt: now.Add(30 * rekey.Day), Policy: rekey.DefaultPolicy()}
	k.Policy.MaxEncryptions = 1000
	for _, c := range []struct {
		name   string
		key    rekey.Key
		wraps  int64
		due    bool
		reason rekey.RotationReason
	}{
		{"fresh", k, 0, false, ""},
		{"just below rotate_at", k, 799, false, ""},
		{"at rotate_at", k, 800, true, rekey.ReasonUsage},
		{"past the limit", k, 5000, true, rekey.ReasonUsage},
		{"schedule wins", rekey.Key{Name: "k", ExpiresAt: now, Policy: k.Policy}, 900, true, rekey.ReasonScheduled},
		{"zero policy fields: defaults", rekey.Key{Name: "k", ExpiresAt: now.Add(30 * rekey.Day), Policy: rekey.Policy{RotationPeriod: 90 * rekey.Day}}, 858993460, true, rekey.ReasonUsage},
		{"zero policy fields: below", rekey.Key{Name: "k", ExpiresAt: now.Add(30 * rekey.Day), Policy: rekey.Policy{RotationPeriod: 90 * rekey.Day}}, 858993459, false, ""},
	} {
		reason, due := rekey.RotationDue(c.key, now, c.wraps)
		if due != c.due || reason != c.reason {
			t.Errorf("%s: RotationDue = (%q, %v), want (%q, %v)", c.name, reason, due, c.reason, c.due)
		}
	}
	if u := rekey.UsageOf(k, 1000); !u.Exhausted() || u.Ratio() != 1 || u.Threshold != 800 {
		t.Errorf("UsageOf(k, 1000) = %+v, want exhausted, ratio 1, threshold 800", u)
	}
}

func TestPolicyValidateUsage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		max   int64
		at    float64
		field string
	}{
		{-1, 0.8, "max_encryptions"},
		{1<<32 + 1, 0.8, "max_encryptions"},
		{1000, -0.1, "rotate_at"},
		{1000, 1.01, "rotate_at"},
		{1000, math.NaN(), "rotate_at"},
	} {
		p := rekey.DefaultPolicy()
		p.MaxEncryptions, p.RotateAt = c.max, c.at
		err := p.Validate()
		if !errors.Is(err, rekey.ErrInvalidArgument) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Validate(max %d, rotate_at %g) = %v, want ErrInvalidArgument naming %s", c.max, c.at, err, c.field)
		}
	}
	p := rekey.DefaultPolicy()
	p.MaxEncryptions, p.RotateAt = 1, 1
	if err := p.Validate(); err != nil {
		t.Errorf("Validate(max 1, rotate_at 1) = %v, want nil", err)
	}
}

func TestUsageRotationBlocked(t *testing.T) {
	t.Parallel()
	k := rekey.Key{Name: "k", Policy: rekey.DefaultPolicy()}
	k.Policy.MaxEncryptions = 1000 // threshold 800
	for _, c := range []struct {
		reason          rekey.RotationReason
		deks, rewrapped int64
		blocked         bool
	}{
		{rekey.ReasonUsage, 0, 0, false},
		{rekey.ReasonUsage, 1000, 0, false},   // never rotated: the first rotation runs
		{rekey.ReasonUsage, 1000, 799, false}, // the last rotation left room
		{rekey.ReasonUsage, 799, 800, false},  // DEKs went below since: a rotation helps
		{rekey.ReasonUsage, 800, 800, true},
		{rekey.ReasonUsage, 1000, 1000, true},
		{rekey.ReasonScheduled, 1000, 1000, false},
		{"", 1000, 1000, false},
	} {
		got := rekey.UsageRotationBlocked(k, c.reason, c.deks, c.rewrapped)
		if (got != nil) != c.blocked {
			t.Errorf("UsageRotationBlocked(%q, %d DEKs, %d re-wrapped) = %+v, want blocked %v", c.reason, c.deks, c.rewrapped, got, c.blocked)
		}
	}
	tl := rekey.UsageRotationBlocked(k, rekey.ReasonUsage, 1000, 1000)
	// 2 × 1000 DEKs + 1 = 2001 at rotate_at 0.8: ceil(0.8 × 2502) = 2002, ceil(0.8 × 2501) = 2001.
	want := rekey.UsageTooLow{DEKs: 1000, Rewrapped: 1000, MaxEncryptions: 1000, Threshold: 800, MinMaxEncryptions: 2501}
	if *tl != want {
		t.Errorf("UsageRotationBlocked = %+v, want %+v", *tl, want)
	}
	for _, s := range []string{"max_encryptions 1000 is too low for the key's 1000 DEKs", "at least 2501", "--max-encryptions", "keys:"} {
		if !strings.Contains(tl.String(), s) {
			t.Errorf("message %q lacks %q", tl.String(), s)
		}
	}
}

func TestMinMaxEncryptions(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		rotateAt float64
		deks     int64
	}{{0.8, 0}, {0.8, 1}, {0.8, 1000}, {0.8, 12345}, {1, 7}, {0.3, 999}, {0.001, 5}, {0.8, 1 << 28}} {
		p := rekey.DefaultPolicy()
		p.RotateAt = c.rotateAt
		m := rekey.Policy.MinMaxEncryptions(p, c.deks)
		at := func(m int64) int64 { q := p; q.MaxEncryptions = m; return q.UsageThreshold() }
		if at(m) <= 2*c.deks || (m > 1 && at(m-1) > 2*c.deks) {
			t.Errorf("rotate_at %g, %d DEKs: MinMaxEncryptions = %d (threshold %d, one less: %d), want the smallest with threshold > %d",
				c.rotateAt, c.deks, m, at(m), at(m-1), 2*c.deks)
		}
		if rekey.CheckUsageLimit(func() rekey.Policy { q := p; q.MaxEncryptions = m; return q }(), c.deks) != nil {
			t.Errorf("rotate_at %g, %d DEKs: CheckUsageLimit at the minimum %d is not nil", c.rotateAt, c.deks, m)
		}
	}
	p := rekey.DefaultPolicy()
	if m := p.MinMaxEncryptions(1 << 32); m != 0 {
		t.Errorf("MinMaxEncryptions(2^32 DEKs) = %d, want 0 (none works)", m)
	}
	if s := rekey.CheckUsageLimit(p, 1<<32).String(); !strings.Contains(s, "spread the DEKs over more keys") {
		t.Errorf("message with no minimum = %q, want the advice to spread the DEKs", s)
	}
}

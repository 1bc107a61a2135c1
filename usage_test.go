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

package localkms

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
)

// TestCloseGivesBackUnusedCounts: a Client that closes gives back the
// counts it reserved and did not use, so that the keyring's count is the
// wraps done; one killed before Close leaves them counted (over, never
// under).
func TestCloseGivesBackUnusedCounts(t *testing.T) {
	t.Parallel()
	f := setup(t)
	limits := func(c *Config) { c.UsageLimit, c.CounterBlock = 1000, 64 }
	a := f.open(t, limits)
	ref := mustCreate(t, a, "payments")
	for i := range 5 {
		mustWrap(t, a, ref, 1, dek(i)) // blocks 1, 2, 4: reserves 7
	}
	n, err := a.Encryptions(t.Context(), ref, 1)
	if err != nil || n != 7 {
		t.Fatalf("Encryptions while a is open = (%d, %v), want 7 reserved", n, err)
	}
	// b reserves after a: a's unused counts are no longer on top.
	b := f.open(t, limits)
	mustWrap(t, b, ref, 1, dek(9))
	a.Close()
	if got := readFile(t, f).Keys[ref].Versions[0].Reserved; got != 8 {
		t.Errorf("after a closed under b's block: reserved %d, want 8 (a's 2 unused stay counted)", got)
	}
	mustWrap(t, b, ref, 1, dek(10)) // b's second block: 2 counts, 8..10, uses 1
	b.Close()
	if got := readFile(t, f).Keys[ref].Versions[0].Reserved; got != 9 {
		t.Errorf("after b closed on top: reserved %d, want 9 (7 wraps done, a's 2 unused lost, b's 1 given back)", got)
	}
	if _, err := a.Wrap(t.Context(), ref, 1, dek(1)); err == nil {
		t.Error("Wrap after Close succeeded")
	}
}

// TestKeyLimit: Config.KeyLimit stops a version at the key's own limit,
// across clients, with an error naming the limit.
func TestKeyLimit(t *testing.T) {
	t.Parallel()
	f := setup(t)
	limits := func(c *Config) {
		c.KeyLimit = func(_ context.Context, ref string) (int64, error) {
			if ref == "payments" {
				return 10, nil
			}
			return 0, nil
		}
	}
	a, b := f.open(t, limits), f.open(t, limits)
	ref := mustCreate(t, a, "payments")
	other := mustCreate(t, a, "other")
	done := 0
	for i := range 20 {
		c := a
		if i%3 == 0 {
			c = b
		}
		_, err := c.Wrap(t.Context(), ref, 1, dek(i))
		if errors.Is(err, rekey.ErrUsageLimit) {
			var ule *rekey.UsageLimitError
			if !errors.As(err, &ule) || ule.Limit != 10 || !strings.Contains(err.Error(), "max_encryptions=10") {
				t.Errorf("refusal = %v, want a *UsageLimitError naming max_encryptions=10", err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		done++
	}
	if done > 10 {
		t.Errorf("%d wraps under a key limited to 10", done)
	}
	for i := range 20 {
		mustWrap(t, a, other, 1, dek(i)) // no key limit: Config.UsageLimit only
	}
	a.Close()
	b.Close()
	c := f.open(t, limits)
	if n, err := c.Encryptions(t.Context(), ref, 1); err != nil || n != int64(done) || done < 8 {
		t.Errorf("Encryptions after both closed = (%d, %v), want the %d wraps done (at least 8 of 10)", n, err, done)
	}
	if _, err := c.Encryptions(t.Context(), ref, 2); !errors.Is(err, rekey.ErrVersionNotFound) {
		t.Errorf("Encryptions of a missing version = %v, want ErrVersionNotFound", err)
	}
}

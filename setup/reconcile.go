package setup

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/config"
)

// ReconcileKeys creates the keys declared in the configuration (keys:) that
// the store lacks and brings the policy of the others in line, recording
// each change (key.created, policy.changed with the active version's new
// expiry). A declared key on another backend than the stored one is not
// rewritten here: the worker moves it, as a move rotation that is logged,
// audited and shown by rekey plan first (rotation.Config.DeclaredBackends,
// filled from the same keys:), and this logs that the move is pending.
// Every key is tried; the errors are joined.
func (s *System) ReconcileKeys(ctx context.Context) error {
	var errs []error
	for i, kc := range s.Config.Keys {
		p := s.Config.Policy(kc)
		k, err := s.Store.GetKey(ctx, kc.Name)
		switch {
		case errors.Is(err, rekey.ErrKeyNotFound):
			if _, err := s.Keyring.CreateKey(ctx, kc.Name, kc.Backend, p); err != nil {
				errs = append(errs, fmt.Errorf("keys[%d] %s: create: %w", i, kc.Name, err))
				continue
			}
			s.Logger.Info("declared key created", "key_id", kc.Name, "backend", kc.Backend)
		case err != nil:
			errs = append(errs, fmt.Errorf("keys[%d] %s: %w", i, kc.Name, err))
		case k.Backend != kc.Backend && !reflect.DeepEqual(k.Policy.Normalized(), p.Normalized()):
			s.Logger.Warn("declared key is on another backend: the worker moves it (rekey plan shows the move; rekey key move does it now)",
				"key_id", kc.Name, "backend", k.Backend, "declared_backend", kc.Backend)
			if err := s.updatePolicy(ctx, k, p); err != nil {
				errs = append(errs, fmt.Errorf("keys[%d] %s: update policy: %w", i, kc.Name, err))
			}
		case k.Backend != kc.Backend:
			s.Logger.Warn("declared key is on another backend: the worker moves it (rekey plan shows the move; rekey key move does it now)",
				"key_id", kc.Name, "backend", k.Backend, "declared_backend", kc.Backend)
		case !reflect.DeepEqual(k.Policy.Normalized(), p.Normalized()):
			if err := s.updatePolicy(ctx, k, p); err != nil {
				errs = append(errs, fmt.Errorf("keys[%d] %s: update policy: %w", i, kc.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// declaredBackends maps each declared key to its declared backend.
func declaredBackends(c *config.Config) map[string]string {
	m := make(map[string]string, len(c.Keys))
	for _, kc := range c.Keys {
		m[kc.Name] = kc.Backend
	}
	return m
}

// updatePolicy brings k's policy in line with p, with its policy.changed
// event.
func (s *System) updatePolicy(ctx context.Context, k rekey.Key, p rekey.Policy) error {
	// The active version's period is measured from when it became active:
	// expiry moves with the period.
	activated := k.ExpiresAt.Add(-k.Policy.RotationPeriod)
	expires := activated.Add(p.RotationPeriod)
	now := rekey.NormalizeTime(s.now())
	ev := rekey.AuditEvent{Time: now, Type: rekey.AuditPolicyChanged, Key: k.Name, FromVersion: k.ActiveVersion, ToVersion: k.ActiveVersion,
		Status: "success", Actor: "config", Reason: PolicyDiff(k.Policy, p)}
	if err := s.Store.UpdateKeyPolicy(ctx, k.Name, p, expires, ev); err != nil {
		return err
	}
	s.Logger.Info("declared key policy changed", "key_id", k.Name, "change", ev.Reason, "expires_at", expires)
	s.warnUsageTooLow(ctx, k.Name, k.Policy, p)
	return nil
}

// warnUsageTooLow logs a warning when a policy change leaves the key's
// max_encryptions too low for the DEKs it has (rekey.CheckUsageLimit): a
// rotation by usage would make it due again, so the worker will not start
// one. A DEK count that cannot be read is skipped: it is only a warning.
func (s *System) warnUsageTooLow(ctx context.Context, key string, old, p rekey.Policy) {
	if old.UsageThreshold() == p.UsageThreshold() {
		return
	}
	counts, err := s.Store.CountDEKs(ctx, key)
	if err != nil {
		return
	}
	var deks int64
	for _, n := range counts {
		deks += n
	}
	if tl := rekey.CheckUsageLimit(p, deks); tl != nil {
		s.Logger.Warn("declared key's max_encryptions is too low for its DEKs: it will not be rotated by usage; raise max_encryptions in its keys: entry",
			"key_id", key, "deks", tl.DEKs, "max_encryptions", tl.MaxEncryptions, "rotate_at_encryptions", tl.Threshold,
			"min_max_encryptions", tl.MinMaxEncryptions)
	}
}

// PolicyDiff describes what changed between two policies, for the audit
// trail's reason ("rotation_period=90d->30d grace=7d->1d"). It is for
// people: the policy in force is a stored fact (Key.Policy and
// KeyVersion.ExpiresAt), never parsed back from this text.
func PolicyDiff(old, new rekey.Policy) string {
	var parts []string
	add := func(name string, a, b time.Duration) {
		if a != b {
			parts = append(parts, name+"="+rekey.FormatDuration(a)+"->"+rekey.FormatDuration(b))
		}
	}
	add("rotation_period", old.RotationPeriod, new.RotationPeriod)
	add("rotate_within", old.RotateWithin, new.RotateWithin)
	add("notify_within", old.NotifyWithin, new.NotifyWithin)
	add("grace", old.Grace, new.Grace)
	add("destroy_after", old.DestroyAfter, new.DestroyAfter)
	if a, b := old.EffectiveMaxEncryptions(), new.EffectiveMaxEncryptions(); a != b {
		parts = append(parts, fmt.Sprintf("max_encryptions=%d->%d", a, b))
	}
	if a, b := old.EffectiveRotateAt(), new.EffectiveRotateAt(); a != b {
		parts = append(parts, fmt.Sprintf("rotate_at=%g->%g", a, b))
	}
	return strings.Join(parts, " ")
}

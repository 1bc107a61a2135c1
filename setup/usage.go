package setup

import (
	"context"
	"fmt"

	"github.com/rekeyhq/rekey"
)

// usageLimit returns the max_encryptions lookup of the backend called
// backend: the policy of the key whose version lives at ref there (the
// key's own backend and reference, or, after a move, a version's). A ref
// no key in the store has (a key being created) has no limit: 0. The
// backend middleware and the local keyring call it once per reservation of
// wrap counts, not per wrap.
func usageLimit(st rekey.Store, backend string) func(ctx context.Context, ref string) (int64, error) {
	return func(ctx context.Context, ref string) (int64, error) {
		keys, err := st.ListKeys(ctx)
		if err != nil {
			return 0, fmt.Errorf("read the keys' max_encryptions: %w", err)
		}
		for _, k := range keys {
			if k.Backend == backend && k.BackendRef == ref {
				return k.Policy.EffectiveMaxEncryptions(), nil
			}
		}
		for _, k := range keys {
			vs, err := st.ListVersions(ctx, k.Name)
			if err != nil {
				return 0, fmt.Errorf("read the keys' max_encryptions: %w", err)
			}
			for _, v := range vs {
				if p := rekey.PlacementOf(k, v); p.Backend == backend && p.Ref == ref {
					return k.Policy.EffectiveMaxEncryptions(), nil
				}
			}
		}
		return 0, nil
	}
}

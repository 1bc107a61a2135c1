package localkms

import (
	"context"

	"github.com/rekeyhq/rekey"
)

var _ rekey.KeyDeleter = (*Client)(nil)

// DeleteKey implements rekey.KeyDeleter: ref and the key material of every
// version of it are removed from the keyring (the material is zeroed in
// this process, best effort). rekey calls it for a key that moved to
// another backend, whose newest version here the keyring keeps usable.
// A key the keyring does not have is nil (idempotent).
func (c *Client) DeleteKey(ctx context.Context, ref string) error {
	deleted := false
	err := c.change(ctx, func(d *keyringData) (bool, error) {
		k := d.Keys[ref]
		if k == nil {
			return false, nil
		}
		delete(d.Keys, ref)
		for _, v := range k.Versions {
			if v != nil {
				clear(v.Material)
				v.Material, v.aead = nil, nil
			}
		}
		deleted = true
		return true, nil
	}, nil)
	if err == nil && deleted {
		c.log.Info("localkms: deleted key", "keyring", c.path, "key", ref)
	}
	return err
}

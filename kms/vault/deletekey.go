package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/rekeyhq/rekey"
)

var _ rekey.KeyDeleter = (*Client)(nil)

// DeleteKey implements rekey.KeyDeleter with Transit's DELETE
// MOUNT/keys/NAME, which deletes every version of the key. Transit deletes
// only keys whose deletion_allowed is true, and rekey never sets it (the
// switch is the operator's): for a key without it, DeleteKey changes
// nothing and returns an error matching rekey.ErrUnsupported that gives
// the command to allow it. A key Transit does not have is nil
// (idempotent).
func (c *Client) DeleteKey(ctx context.Context, ref string) error {
	k, err := c.readKey(ctx, kmsOpDelete, ref)
	if errors.Is(err, rekey.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !k.DeletionAllowed {
		return fmt.Errorf("vault backend %s: cannot delete Transit key %s at mount %s: %w: its deletion_allowed is false; allow it with `vault write %s/keys/%s/config deletion_allowed=true`, or delete the key yourself",
			c.name, ref, c.mount, rekey.ErrUnsupported, c.mount, ref)
	}
	path, err := c.keyPath(kmsOpDelete, "keys", ref)
	if err != nil {
		return err
	}
	_, err = c.callMethod(ctx, kmsOpDelete, ref, http.MethodDelete, path, nil)
	if errors.Is(err, rekey.ErrKeyNotFound) {
		return nil // deleted meanwhile
	}
	if err == nil {
		c.log.Info("vault: deleted Transit key", "backend", c.name, "mount", c.mount, "key", ref)
	}
	return err
}

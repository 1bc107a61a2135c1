package keyprotect

import (
	"context"
	"fmt"
	"net/http"

	"github.com/rekeyhq/rekey"
)

var _ rekey.KeyFinder = (*Client)(nil)

// stateDestroyed is Key Protect's state of a deleted key.
const stateDestroyed = 5

// FindKey implements rekey.KeyFinder: the id of the key CreateKey(name)
// made, found through its alias AliasFor(name) (GET /api/v2/keys/{alias}/
// metadata: Key Protect takes an alias wherever it takes an id). Aliases
// are unique in an instance and are set in the same request that creates
// the key, so a key a crashed move created is always found, and found
// once; names are not unique there, which is why FindKey does not search
// by name. It returns ErrKeyNotFound when the instance has no such key
// (or only a deleted one), and an error naming both when the key behind
// the alias carries another name (made by something other than rekey).
func (c *Client) FindKey(ctx context.Context, name string) (string, error) {
	if err := rekey.ValidateKeyName(name); err != nil {
		return "", fmt.Errorf("keyprotect backend %s: find key: %w", c.name, err)
	}
	alias := AliasFor(name)
	var got keyCollection
	if _, err := c.do(ctx, "find key", name, http.MethodGet, keyPath(alias, "/metadata"), "", nil, &got, nil); err != nil {
		return "", err
	}
	if len(got.Resources) == 0 || got.Resources[0].ID == "" {
		return "", fmt.Errorf("keyprotect backend %s: find key %s: the reply for alias %s names no key id", c.name, name, alias)
	}
	k := got.Resources[0]
	if k.State == stateDestroyed {
		return "", fmt.Errorf("keyprotect backend %s: key %s (alias %s) was deleted: %w", c.name, name, alias, rekey.ErrKeyNotFound)
	}
	if k.Name != name {
		return "", fmt.Errorf("keyprotect backend %s: alias %s belongs to key %s named %q, not %q: rekey did not make it; remove the alias from that key or use another key name",
			c.name, alias, k.ID, k.Name, name)
	}
	ks := c.state(k.ID)
	ks.mu.Lock()
	ks.name = name
	ks.mu.Unlock()
	return k.ID, nil
}

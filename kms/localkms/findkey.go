package localkms

import (
	"context"

	"github.com/rekeyhq/rekey"
)

var _ rekey.KeyFinder = (*Client)(nil)

// FindKey implements rekey.KeyFinder: the reference is the name, once the
// keyring has a key by it (else ErrKeyNotFound).
func (c *Client) FindKey(ctx context.Context, name string) (string, error) {
	if _, err := c.CurrentVersion(ctx, name); err != nil {
		return "", err
	}
	return name, nil
}

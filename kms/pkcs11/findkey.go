//go:build cgo

package pkcs11

import (
	"context"

	"github.com/rekeyhq/rekey"
)

var _ rekey.KeyFinder = (*Client)(nil)

// FindKey implements rekey.KeyFinder: the reference is the name (the
// objects' label), once the token holds a version of it (else
// ErrKeyNotFound).
func (c *Client) FindKey(ctx context.Context, name string) (string, error) {
	if _, err := c.CurrentVersion(ctx, name); err != nil {
		return "", err
	}
	return name, nil
}

package awskms

import (
	"context"

	"github.com/rekeyhq/rekey"
)

var _ rekey.KeyFinder = (*Client)(nil)

// FindKey implements rekey.KeyFinder: the reference is the alias
// ALIAS_PREFIX+name, once its version aliases exist (else
// ErrKeyNotFound).
func (k *Client) FindKey(ctx context.Context, name string) (string, error) {
	if err := rekey.ValidateKeyName(name); err != nil {
		return "", err
	}
	ref := k.ref(name)
	if _, err := k.CurrentVersion(ctx, ref); err != nil {
		return "", err
	}
	return ref, nil
}

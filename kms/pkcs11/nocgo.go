//go:build !cgo

package pkcs11

import (
	"context"

	"github.com/rekeyhq/rekey"
)

// Client is the pkcs11 backend. This build has no cgo: New always fails
// with ErrNeedsCgo, and every method does too.
type Client struct{}

var _ rekey.KMS = (*Client)(nil)

// New returns ErrNeedsCgo: the pkcs11 backend needs a cgo build.
func New(ctx context.Context, cfg Config) (*Client, error) { return nil, ErrNeedsCgo }

// CreateKey returns ErrNeedsCgo.
func (*Client) CreateKey(context.Context, string) (string, error) { return "", ErrNeedsCgo }

// CurrentVersion returns ErrNeedsCgo.
func (*Client) CurrentVersion(context.Context, string) (int, error) { return 0, ErrNeedsCgo }

// RotateKey returns ErrNeedsCgo.
func (*Client) RotateKey(context.Context, string) (int, error) { return 0, ErrNeedsCgo }

// Wrap returns ErrNeedsCgo.
func (*Client) Wrap(context.Context, string, int, []byte) ([]byte, error) { return nil, ErrNeedsCgo }

// Unwrap returns ErrNeedsCgo.
func (*Client) Unwrap(context.Context, string, int, []byte) ([]byte, error) { return nil, ErrNeedsCgo }

// Close does nothing.
func (*Client) Close() error { return nil }

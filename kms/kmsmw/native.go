package kmsmw

import (
	"context"

	"github.com/rekeyhq/rekey"
)

var _ rekey.NativeRewrapper = (*KMS)(nil)

// RewrapNative implements rekey.NativeRewrapper, retrying transient
// failures. It is one request like Rewrap and is counted under the op
// label OpRewrap (a re-wrap of one DEK either way). It returns an error
// matching rekey.ErrUnsupported when the inner backend is not a
// NativeRewrapper.
func (k *KMS) RewrapNative(ctx context.Context, ref string, wrapped []byte, encryptionContext map[string]string, toVersion int) ([]byte, int, error) {
	nr, ok := k.inner.(rekey.NativeRewrapper)
	if !ok || !k.caps.NativeRewrap {
		return nil, 0, k.unsupported(OpRewrap + " (native)")
	}
	var (
		out  []byte
		from int
	)
	err := k.retried(ctx, OpRewrap, func(ctx context.Context) (err error) {
		out, from, err = nr.RewrapNative(ctx, ref, wrapped, encryptionContext, toVersion)
		return err
	})
	return out, from, err
}

package awskms

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/rekeyhq/rekey"
)

var _ rekey.NativeRewrapper = (*Client)(nil)

// RewrapNative implements rekey.NativeRewrapper for CiphertextBlobs the
// application made itself with the AWS SDK (GenerateDataKey or Encrypt
// under the key's main alias or any version's KMS key), with its own
// encryption context ec (nil: none) instead of rekey's. It is one
// ReEncrypt to the KMS key of toVersion with ec on both sides, so the
// application's plain SDK Decrypt (with ec) keeps working; the plaintext
// never leaves KMS.
//
// SourceKeyId is not sent: the blob names its own KMS key, and rekey does
// not know which version the application used. The key KMS reports
// having decrypted with (the reply's SourceKeyId) is then checked against
// the key's versions: in new-key mode the version whose KMS key it is
// comes back; in on-demand mode it must be the one KMS key and the
// version is 0 (KMS picks the key material; ReEncrypt to the same key
// moves the blob to the newest). A blob under any other KMS key is
// ErrWrongVersion and its re-encrypted bytes are discarded (the IAM
// policy can forbid kms:ReEncryptFrom on other keys: AWS then refuses,
// which is ErrWrongVersion too).
func (k *Client) RewrapNative(ctx context.Context, ref string, wrapped []byte, ec map[string]string, toVersion int) ([]byte, int, error) {
	if _, err := k.keyName(ref); err != nil {
		return nil, 0, err
	}
	if len(wrapped) == 0 || len(wrapped) > maxCiphertext {
		return nil, 0, fmt.Errorf("awskms backend %s: native re-wrap under %s: %d bytes is not a KMS ciphertext: %w", k.name, ref, len(wrapped), rekey.ErrInvalidCiphertext)
	}
	toARN, err := k.versionARN(ctx, ref, toVersion)
	if err != nil {
		return nil, 0, err
	}
	if len(ec) == 0 {
		ec = nil
	}
	out, err := k.api.ReEncrypt(ctx, &kms.ReEncryptInput{
		CiphertextBlob: wrapped, DestinationKeyId: aws.String(toARN),
		SourceEncryptionContext: ec, DestinationEncryptionContext: ec,
	})
	if err != nil {
		return nil, 0, k.nativeErr(ctx, err, ref, toVersion, toARN)
	}
	if out.KeyId == nil || *out.KeyId != toARN {
		clear(out.CiphertextBlob)
		return nil, 0, fmt.Errorf("awskms backend %s: native re-wrap to %s version %d: KMS used another key than %s", k.name, ref, toVersion, toARN)
	}
	if out.SourceKeyId == nil {
		return nil, 0, fmt.Errorf("awskms backend %s: native re-wrap under %s: ReEncrypt did not say which KMS key decrypted the blob", k.name, ref)
	}
	from, err := k.versionOfARN(ctx, ref, *out.SourceKeyId, toVersion)
	if err != nil {
		clear(out.CiphertextBlob)
		return nil, 0, err
	}
	return out.CiphertextBlob, from, nil
}

// nativeErr maps a failed ReEncrypt of a native blob towards toARN
// (version v of ref). Whose fault it is, the blob's key or the target's,
// is told by looking at the target: a target that is fine makes it the
// row's problem (a DEK failure the engine reports), anything else is the
// backend's.
func (k *Client) nativeErr(ctx context.Context, err error, ref string, v int, toARN string) error {
	where := fmt.Sprintf("native re-wrap to %s version %d", ref, v)
	switch code := apiCode(err); code {
	case "InvalidCiphertextException", "ValidationException", "InvalidKeyUsageException":
		return fmt.Errorf("awskms backend %s: %s: the blob does not decrypt (corrupt, or made with another encryption context than the source's encryption_context): %w (%s)",
			k.name, where, rekey.ErrInvalidCiphertext, code)
	case "IncorrectKeyException":
		return fmt.Errorf("awskms backend %s: %s: %w", k.name, where, rekey.ErrWrongVersion)
	case "NotFoundException", "DisabledException", "KMSInvalidStateException", "AccessDeniedException":
		md, derr := k.describe(ctx, toARN)
		if derr != nil {
			return derr
		}
		if md == nil || !md.Enabled {
			return fmt.Errorf("awskms backend %s: %s: its KMS key is %s: %w", k.name, where, keyState(md), rekey.ErrVersionDisabled)
		}
		if code == "AccessDeniedException" && strings.Contains(errMessage(err), "ReEncryptTo") {
			return k.mapErr(err, where) // rekey's own permission on the target: not the row's fault
		}
		if code == "DisabledException" || code == "KMSInvalidStateException" {
			return fmt.Errorf("awskms backend %s: %s: the blob's KMS key is disabled or pending deletion (a retired version, or a key rekey does not manage): %w", k.name, where, rekey.ErrVersionDisabled)
		}
		return fmt.Errorf("awskms backend %s: %s: the blob names a KMS key that does not exist or that rekey may not use (kms:ReEncryptFrom): it is not under a version of this key: %w (%s)",
			k.name, where, rekey.ErrWrongVersion, code)
	}
	return k.mapErr(err, where)
}

// versionOfARN returns the version of ref whose KMS key is arn (0 in
// on-demand mode, where the one key holds every version), or
// ErrWrongVersion when arn is no version's key. Versions up to hint are
// looked at first, newest first (their aliases are cached), then those
// up to the current one.
func (k *Client) versionOfARN(ctx context.Context, ref, arn string, hint int) (int, error) {
	if k.mode == ModeOnDemand {
		one, err := k.versionARN(ctx, ref, 1)
		if err != nil {
			return 0, err
		}
		if one != arn {
			return 0, k.foreign(ref, arn)
		}
		return 0, nil
	}
	// Newest first: a blob that re-encrypted is under an enabled key, and
	// the newest versions are the enabled ones (an old, destroyed
	// version's alias is gone and would cost a DescribeKey each time).
	search := func(lo, hi int) (int, error) {
		for v := hi; v >= lo; v-- {
			a, err := k.versionARN(ctx, ref, v)
			if errors.Is(err, rekey.ErrVersionNotFound) {
				continue // a destroyed version: its alias went with its key
			}
			if err != nil {
				return 0, err
			}
			if a == arn {
				return v, nil
			}
		}
		return 0, nil
	}
	if v, err := search(1, hint); v > 0 || err != nil {
		return v, err
	}
	cur, err := k.CurrentVersion(ctx, ref)
	if err != nil {
		return 0, err
	}
	if v, err := search(hint+1, cur); v > 0 || err != nil {
		return v, err
	}
	return 0, k.foreign(ref, arn)
}

func (k *Client) foreign(ref, arn string) error {
	return fmt.Errorf("awskms backend %s: native re-wrap under %s: the blob was made under KMS key %s, which is no version of this key: %w (left unchanged)",
		k.name, ref, arn, rekey.ErrWrongVersion)
}

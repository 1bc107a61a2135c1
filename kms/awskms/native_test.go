package awskms_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/awskms"
	"github.com/rekeyhq/rekey/kms/kmsmw"
)

// sdkDataKey is what an application does without rekey: the AWS SDK's
// GenerateDataKey under keyID (an alias or a key), with ec.
func sdkDataKey(t *testing.T, api *kms.Client, keyID string, ec map[string]string) (plain, blob []byte) {
	t.Helper()
	out, err := api.GenerateDataKey(t.Context(), &kms.GenerateDataKeyInput{KeyId: aws.String(keyID), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	return out.Plaintext, out.CiphertextBlob
}

// sdkDecrypt is the application's own Decrypt: it returns the plaintext
// and the ARN of the KMS key KMS used.
func sdkDecrypt(t *testing.T, api *kms.Client, blob []byte, ec map[string]string) ([]byte, string) {
	t.Helper()
	out, err := api.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("the application's SDK Decrypt fails after the re-wrap: %v", err)
	}
	return out.Plaintext, aws.ToString(out.KeyId)
}

// TestRewrapNative: blobs made by the AWS SDK's own GenerateDataKey (under
// the main alias or a version's key, with no context or the
// application's) are re-wrapped under the new version by RewrapNative,
// which says which version they were under; the SDK still decrypts them,
// with the same context, to the same key. Blobs under a KMS key that is
// no version of the key, corrupt blobs and a wrong context are refused
// with the errors the engine reports per row. Through kmsmw too.
func TestRewrapNative(t *testing.T) {
	ctx := t.Context()
	api := kmsAPI(t)
	k := newClient(t, awskms.ModeNewKey)
	var nr rekey.NativeRewrapper = k
	if !rekey.CapabilitiesOf(k).NativeRewrap || !rekey.CapabilitiesOf(kmsmw.Wrap(k, kmsmw.Options{Name: "aws"})).NativeRewrap {
		t.Fatal("NativeRewrap capability not reported")
	}
	ref, err := k.CreateKey(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	appCtx := map[string]string{"app": "orders", "table": "order_keys"}
	p1, b1 := sdkDataKey(t, api, ref, nil) // the main alias: version 1 now
	p1c, b1c := sdkDataKey(t, api, ref, appCtx)
	if v, err := k.RotateKey(ctx, ref); err != nil || v != 2 {
		t.Fatalf("rotate: %d, %v", v, err)
	}
	p2, b2 := sdkDataKey(t, api, ref, nil) // the alias moved: version 2
	if v, err := k.RotateKey(ctx, ref); err != nil || v != 3 {
		t.Fatalf("rotate: %d, %v", v, err)
	}
	v3, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ref + "/v3")})
	if err != nil {
		t.Fatal(err)
	}
	arn3 := aws.ToString(v3.KeyMetadata.Arn)

	for _, tc := range []struct {
		name     string
		nr       rekey.NativeRewrapper
		plain    []byte
		blob     []byte
		ec       map[string]string
		fromWant int
	}{
		{"no context, version 1", nr, p1, b1, nil, 1},
		{"application context, version 1", nr, p1c, b1c, appCtx, 1},
		{"version 2, through kmsmw", kmsmw.Wrap(k, kmsmw.Options{Name: "aws"}), p2, b2, nil, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, from, err := tc.nr.RewrapNative(ctx, ref, tc.blob, tc.ec, 3)
			if err != nil {
				t.Fatal(err)
			}
			if from != tc.fromWant {
				t.Errorf("from version = %d, want %d", from, tc.fromWant)
			}
			pt, keyARN := sdkDecrypt(t, api, out, tc.ec)
			if !bytes.Equal(pt, tc.plain) {
				t.Error("the re-wrapped blob decrypts to another data key")
			}
			if keyARN != arn3 {
				t.Errorf("re-wrapped under %s, want version 3's key %s", keyARN, arn3)
			}
		})
	}

	// A KMS key rekey does not manage for this key: another key's, and a
	// plain one the application made.
	other, err := k.CreateKey(ctx, "invoices")
	if err != nil {
		t.Fatal(err)
	}
	_, bOther := sdkDataKey(t, api, other, nil)
	ck, err := api.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("not rekey's")})
	if err != nil {
		t.Fatal(err)
	}
	_, bForeign := sdkDataKey(t, api, aws.ToString(ck.KeyMetadata.Arn), nil)
	corrupt := bytes.Clone(b1)
	corrupt[len(corrupt)-3] ^= 0x40
	for _, tc := range []struct {
		name string
		blob []byte
		ec   map[string]string
		want error
	}{
		{"another rekey key's blob", bOther, nil, rekey.ErrWrongVersion},
		{"a foreign KMS key's blob", bForeign, nil, rekey.ErrWrongVersion},
		{"corrupt", corrupt, nil, rekey.ErrInvalidCiphertext},
		{"wrong context", b1c, map[string]string{"app": "billing"}, rekey.ErrInvalidCiphertext},
		{"context missing", b1c, nil, rekey.ErrInvalidCiphertext},
		{"empty", nil, nil, rekey.ErrInvalidCiphertext},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := nr.RewrapNative(ctx, ref, tc.blob, tc.ec, 3)
			if !errors.Is(err, tc.want) || out != nil {
				t.Fatalf("RewrapNative = %d bytes, %v; want nothing and %v", len(out), err, tc.want)
			}
		})
	}

	// A retired (disabled) version cannot be re-wrapped from: the row is
	// reported, not lost.
	if err := k.RetireVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := nr.RewrapNative(ctx, ref, b1, nil, 3); !errors.Is(err, rekey.ErrVersionDisabled) && !errors.Is(err, rekey.ErrWrongVersion) {
		t.Fatalf("re-wrap from a disabled version: %v; want a per-row error", err)
	}
	if _, _, err := nr.RewrapNative(ctx, ref, b2, nil, 1); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Fatalf("re-wrap to a disabled version: %v; want ErrVersionDisabled", err)
	}
}

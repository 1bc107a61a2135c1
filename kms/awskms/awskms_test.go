package awskms_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/awskms"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kmstest"
)

// EndpointEnv names the local-kms emulator the tests use (started by
// scripts/test, or by hand with `eval "$(scripts/localkms start)"`).
const endpointEnv = "REKEY_TEST_AWSKMS_ENDPOINT"

// testEndpoint returns the emulator's endpoint. Without one the test fails
// under CI (CI or REKEY_REQUIRE_PEERS set: scripts/test starts it) and is
// skipped otherwise, naming the command that starts one.
func testEndpoint(t testing.TB) string {
	t.Helper()
	ep := os.Getenv(endpointEnv)
	if ep == "" {
		const how = endpointEnv + " is not set: start local-kms with `eval \"$(scripts/localkms start)\"` (stop it with `scripts/localkms stop`), or run scripts/test, which does both"
		if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	if !strings.HasPrefix(ep, "http://127.0.0.1:") {
		t.Fatalf("%s=%q: the tests only talk to an emulator on 127.0.0.1", endpointEnv, ep)
	}
	return ep
}

// dummyCreds are the emulator's credentials (it checks none).
var dummyCreds = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
	return aws.Credentials{AccessKeyID: "AKIDREKEYTEST", SecretAccessKey: "rekey-test-not-a-secret", Source: "test"}, nil
})

// newClient returns a backend on the emulator whose aliases are under a
// prefix of their own, so that runs never meet.
func newClient(t testing.TB, mode string) *awskms.Client {
	t.Helper()
	k, err := awskms.New(t.Context(), awskms.Config{
		Name: "aws", Region: "us-east-1", Endpoint: testEndpoint(t), Mode: mode, Credentials: dummyCreds,
		AliasPrefix: "alias/rekey-test-" + strings.ToLower(rekey.NewID()) + "/",
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// emulatorGuard passes every call to local-kms except the Decrypt and
// ReEncrypt of a blob too short for local-kms's own format (a length
// byte, the key id, a 4-byte backing-key version, a 12-byte nonce, a
// 16-byte tag): local-kms panics on those (an uint8 overflow in its length
// check, an unchecked nonce slice) and drops the connection, where AWS
// answers InvalidCiphertextException. The guard answers that, as AWS
// would, without sending them. It is test-only: it makes kmstest's
// malformed-ciphertext table test the backend's error mapping instead of
// the emulator's crash.
type emulatorGuard struct{ *kms.Client }

func tooShortForLocalKMS(b []byte) bool {
	return len(b) < 1 || len(b) < 1+int(b[0])+4+12+16
}

var errGuardInvalid = &smithy.OperationError{ServiceID: "KMS", Err: &smithy.GenericAPIError{Code: "InvalidCiphertextException", Message: "(test guard) too short for local-kms"}}

func (g emulatorGuard) Decrypt(ctx context.Context, in *kms.DecryptInput, o ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	if tooShortForLocalKMS(in.CiphertextBlob) {
		return nil, errGuardInvalid
	}
	return g.Client.Decrypt(ctx, in, o...)
}

func (g emulatorGuard) ReEncrypt(ctx context.Context, in *kms.ReEncryptInput, o ...func(*kms.Options)) (*kms.ReEncryptOutput, error) {
	if tooShortForLocalKMS(in.CiphertextBlob) {
		return nil, errGuardInvalid
	}
	return g.Client.ReEncrypt(ctx, in, o...)
}

// newGuardedClient is newClient on an emulatorGuard.
func newGuardedClient(t *testing.T) *awskms.Client {
	t.Helper()
	k, err := awskms.New(t.Context(), awskms.Config{
		Name: "aws", Client: emulatorGuard{kmsAPI(t)},
		AliasPrefix: "alias/rekey-test-" + strings.ToLower(rekey.NewID()) + "/",
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestConformance(t *testing.T) {
	k := newGuardedClient(t)
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return k })
}

// Through the middleware, as setup opens it: the same suite, with the
// capabilities the wrapper reports.
func TestConformanceWrapped(t *testing.T) {
	w := kmsmw.Wrap(newGuardedClient(t), kmsmw.Options{Name: "aws"})
	if c := w.Capabilities(); !c.Rewrap || !c.RetireVersion || !c.Ping || !c.MAC || c.BatchRewrap {
		t.Fatalf("capabilities through kmsmw = %+v, want rewrap, retire, ping, mac and no batch", c)
	}
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return w })
}

// kmsAPI is a raw client on the emulator, to look behind the backend.
func kmsAPI(t *testing.T) *kms.Client {
	return kms.New(kms.Options{Region: "us-east-1", BaseEndpoint: aws.String(testEndpoint(t)), Credentials: dummyCreds, Retryer: aws.NopRetryer{}})
}

func TestNewKeyLayout(t *testing.T) {
	ctx := t.Context()
	k := newClient(t, awskms.ModeNewKey)
	ref, err := k.CreateKey(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(ref, "/payments") || !strings.HasPrefix(ref, "alias/rekey-test-") {
		t.Fatalf("ref = %q, want the alias prefix + payments", ref)
	}
	dek := []byte("0123456789abcdef0123456789abcdef")
	w1, err := k.Wrap(ctx, ref, 1, dek)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := k.RotateKey(ctx, ref)
	if err != nil || v2 != 2 {
		t.Fatalf("RotateKey = %d, %v; want 2", v2, err)
	}
	api := kmsAPI(t)
	describe := func(id string) *types.KeyMetadata {
		t.Helper()
		out, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatalf("DescribeKey(%s): %v", id, err)
		}
		return out.KeyMetadata
	}
	k1, k2, main := describe(ref+"/v1"), describe(ref+"/v2"), describe(ref)
	if *k1.Arn == *k2.Arn || *main.Arn != *k2.Arn {
		t.Fatalf("v1 %s, v2 %s, main alias %s: want two KMS keys and the main alias on v2", *k1.Arn, *k2.Arn, *main.Arn)
	}
	// An application decrypts the native blob with the context alone.
	out, err := api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: w1, EncryptionContext: map[string]string{awskms.ContextKey: "payments"}})
	if err != nil || !bytes.Equal(out.Plaintext, dek) || *out.KeyId != *k1.Arn {
		t.Fatalf("Decrypt of the stored bytes by an application: %v", err)
	}
	// A data key the application made itself (GenerateDataKey under the
	// alias with the context) is re-wrapped like rekey's own.
	gdk, err := api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(ref + "/v1"), KeySpec: types.DataKeySpecAes256,
		EncryptionContext: map[string]string{awskms.ContextKey: "payments"}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := k.Rewrap(ctx, ref, 1, gdk.CiphertextBlob, 2)
	if err != nil {
		t.Fatalf("Rewrap of an application's GenerateDataKey blob: %v", err)
	}
	if pt, err := k.Unwrap(ctx, ref, 2, w); err != nil || !bytes.Equal(pt, gdk.Plaintext) {
		t.Fatalf("Unwrap after re-wrap: %v", err)
	}

	// Retire disables the KMS key; destroy schedules its deletion with the
	// configured waiting period (default 30 days).
	if err := k.RetireVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	if md := describe(*k1.Arn); md.KeyState != types.KeyStateDisabled {
		t.Fatalf("v1's key state after RetireVersion = %s, want Disabled", md.KeyState)
	}
	before := time.Now()
	if err := k.DestroyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	md := describe(*k1.Arn)
	if md.KeyState != types.KeyStatePendingDeletion || md.DeletionDate == nil {
		t.Fatalf("v1's key after DestroyVersion: state %s, deletion date %v; want PendingDeletion with a date", md.KeyState, md.DeletionDate)
	}
	if wait := md.DeletionDate.Sub(before); wait < 29*24*time.Hour || wait > 31*24*time.Hour {
		t.Fatalf("deletion in %v, want the default 30 days", wait)
	}
	if d, err := k.DeletionDate(ctx, ref, 1); err != nil || !d.Equal(*md.DeletionDate) {
		t.Fatalf("DeletionDate = %v, %v; want %v", d, err, *md.DeletionDate)
	}
	if d, err := k.DeletionDate(ctx, ref, 2); err != nil || !d.IsZero() {
		t.Fatalf("DeletionDate(v2) = %v, %v; want zero", d, err)
	}
}

func TestDeletionWindowConfigured(t *testing.T) {
	ctx := t.Context()
	k, err := awskms.New(ctx, awskms.Config{
		Region: "us-east-1", Endpoint: testEndpoint(t), Credentials: dummyCreds, DeletionWindowDays: 7,
		AliasPrefix: "alias/rekey-test-" + strings.ToLower(rekey.NewID()) + "/",
	})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := k.CreateKey(ctx, "short")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := k.DestroyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	d, err := k.DeletionDate(ctx, ref, 1)
	if err != nil {
		t.Fatal(err)
	}
	if wait := d.Sub(before); wait < 7*24*time.Hour-time.Minute || wait > 8*24*time.Hour {
		t.Fatalf("deletion in %v, want 7 days", wait)
	}
	if _, err := awskms.New(ctx, awskms.Config{Region: "us-east-1", Credentials: dummyCreds, DeletionWindowDays: 3}); err == nil ||
		!strings.Contains(err.Error(), "deletion_window_days") {
		t.Fatalf("New with a 3-day window: %v, want a refusal naming deletion_window_days", err)
	}
}

// local-kms does not implement RotateKeyOnDemand nor ListKeyRotations
// (HTTP 501): on-demand mode fails there with a clear error and changes
// nothing.
func TestOnDemandOnEmulator(t *testing.T) {
	ctx := t.Context()
	k := newClient(t, awskms.ModeOnDemand)
	if c := k.Capabilities(); c.RetireVersion || !c.Rewrap {
		t.Fatalf("on-demand capabilities = %+v, want no RetireVersion, Rewrap", c)
	}
	ref, err := k.CreateKey(ctx, "od")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.CreateKey(ctx, "od"); !errors.Is(err, rekey.ErrKeyExists) {
		t.Fatalf("second CreateKey = %v, want ErrKeyExists", err)
	}
	api := kmsAPI(t)
	before, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ref)})
	if err != nil {
		t.Fatal(err)
	}
	dek := []byte("on-demand dek")
	w, err := k.Wrap(ctx, ref, 1, dek)
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"RotateKey":      func() error { _, err := k.RotateKey(ctx, ref); return err },
		"CurrentVersion": func() error { _, err := k.CurrentVersion(ctx, ref); return err },
	} {
		err := call()
		if !errors.Is(err, rekey.ErrUnsupported) || rekey.IsTransient(err) {
			t.Fatalf("%s on local-kms = %v, want ErrUnsupported, not transient", name, err)
		}
		for _, want := range []string{"aws", "new-key", "on-demand"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s error %q does not say %q", name, err, want)
			}
		}
	}
	after, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ref)})
	if err != nil {
		t.Fatal(err)
	}
	if *after.KeyMetadata.Arn != *before.KeyMetadata.Arn || after.KeyMetadata.KeyState != types.KeyStateEnabled {
		t.Fatal("the failed rotation changed the key")
	}
	if pt, err := k.Unwrap(ctx, ref, 1, w); err != nil || !bytes.Equal(pt, dek) {
		t.Fatalf("Unwrap after the failed rotation: %v", err)
	}
	if err := k.RetireVersion(ctx, ref, 1); !errors.Is(err, rekey.ErrUnsupported) {
		t.Fatalf("RetireVersion in on-demand mode = %v, want ErrUnsupported", err)
	}
}

// faultAPI is an in-process fake of the KMS API for fault injection only:
// each method not set fails the test.
type faultAPI struct {
	awskms.API
	listRotations func() (*kms.ListKeyRotationsOutput, error)
	rotateCalls   atomic.Int32
	encrypt       func() error
	describe      func() (*kms.DescribeKeyOutput, error)
}

func (f *faultAPI) DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, _ ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	return f.describe()
}

func (f *faultAPI) ListKeyRotations(context.Context, *kms.ListKeyRotationsInput, ...func(*kms.Options)) (*kms.ListKeyRotationsOutput, error) {
	return f.listRotations()
}

func (f *faultAPI) RotateKeyOnDemand(context.Context, *kms.RotateKeyOnDemandInput, ...func(*kms.Options)) (*kms.RotateKeyOnDemandOutput, error) {
	f.rotateCalls.Add(1)
	return &kms.RotateKeyOnDemandOutput{}, nil
}

func (f *faultAPI) Encrypt(context.Context, *kms.EncryptInput, ...func(*kms.Options)) (*kms.EncryptOutput, error) {
	return nil, f.encrypt()
}

func describeOK() (*kms.DescribeKeyOutput, error) {
	return &kms.DescribeKeyOutput{KeyMetadata: &types.KeyMetadata{Arn: aws.String("arn:aws:kms:us-east-1:111122223333:key/k"), KeyId: aws.String("k"), Enabled: true}}, nil
}

// The 10 on-demand rotations AWS allows per key are counted: the 11th is
// refused with ErrUsageLimit before RotateKeyOnDemand is called.
func TestOnDemandLimit(t *testing.T) {
	ctx := t.Context()
	entries := func(n int) []types.RotationsListEntry {
		var out []types.RotationsListEntry
		for range n {
			out = append(out, types.RotationsListEntry{RotationType: types.RotationTypeOnDemand})
		}
		return out
	}
	n := 9
	f := &faultAPI{describe: describeOK, listRotations: func() (*kms.ListKeyRotationsOutput, error) {
		// One automatic rotation too: it does not count against the limit.
		return &kms.ListKeyRotationsOutput{Rotations: append(entries(n), types.RotationsListEntry{RotationType: types.RotationTypeAutomatic})}, nil
	}}
	k, err := awskms.New(ctx, awskms.Config{Client: f, Mode: awskms.ModeOnDemand})
	if err != nil {
		t.Fatal(err)
	}
	ref := awskms.DefaultAliasPrefix + "od"
	if v, err := k.CurrentVersion(ctx, ref); err != nil || v != 11 {
		t.Fatalf("CurrentVersion = %d, %v; want 11 (1 + 10 rotations)", v, err)
	}
	if v, err := k.RotateKey(ctx, ref); err != nil || v != 12 {
		t.Fatalf("RotateKey after 9 on-demand rotations = %d, %v; want 12", v, err)
	}
	n = 10
	_, err = k.RotateKey(ctx, ref)
	if !errors.Is(err, rekey.ErrUsageLimit) || !strings.Contains(err.Error(), "new-key") {
		t.Fatalf("RotateKey after 10 on-demand rotations = %v, want ErrUsageLimit suggesting new-key", err)
	}
	if c := f.rotateCalls.Load(); c != 1 {
		t.Fatalf("RotateKeyOnDemand called %d times, want 1 (the refused one must not reach AWS)", c)
	}
}

// apiErr is an AWS API error as the SDK returns it.
func apiErr(code, msg string) error {
	return &smithy.OperationError{ServiceID: "KMS", OperationName: "Encrypt", Err: &smithy.GenericAPIError{Code: code, Message: msg}}
}

func TestErrorMapping(t *testing.T) {
	ctx := t.Context()
	cases := []struct {
		err       error
		want      error
		transient bool
	}{
		{apiErr("ThrottlingException", "Rate exceeded"), awskms.ErrThrottled, true},
		{apiErr("KMSInternalException", "oops"), nil, true},
		{apiErr("DependencyTimeoutException", ""), nil, true},
		{apiErr("DisabledException", "key is disabled"), rekey.ErrVersionDisabled, false},
		{apiErr("KMSInvalidStateException", "pending deletion"), rekey.ErrVersionDisabled, false},
		{apiErr("LimitExceededException", ""), rekey.ErrUsageLimit, false},
		{apiErr("ValidationException", "bad"), rekey.ErrInvalidArgument, false},
	}
	for _, c := range cases {
		f := &faultAPI{describe: describeOK, encrypt: func() error { return c.err }}
		k, err := awskms.New(ctx, awskms.Config{Client: f, Name: "aws-prod"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = k.Wrap(ctx, awskms.DefaultAliasPrefix+"k", 1, []byte("dek"))
		if rekey.IsTransient(err) != c.transient {
			t.Errorf("%v: transient = %v, want %v (%v)", c.err, rekey.IsTransient(err), c.transient, err)
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%v: error %v does not match %v", c.err, err, c.want)
		}
		if errors.Is(err, rekey.ErrThrottled) != (c.want == awskms.ErrThrottled) {
			t.Errorf("%v: errors.Is(%v, rekey.ErrThrottled) = %v", c.err, err, errors.Is(err, rekey.ErrThrottled))
		}
		if !strings.Contains(err.Error(), "aws-prod") {
			t.Errorf("error %q does not name the backend", err)
		}
		if c.transient {
			var u *rekey.UnreachableError
			if errors.As(err, &u); u == nil || u.Service != "kms:aws-prod" {
				t.Errorf("%v: unreachable error service = %+v, want kms:aws-prod", c.err, u)
			}
		}
	}
	// An HTTP 429 without a code is throttling too.
	f := &faultAPI{describe: describeOK, encrypt: func() error {
		return &smithy.OperationError{Err: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: http.StatusTooManyRequests}}, Err: errors.New("slow down")}}
	}}
	k, _ := awskms.New(ctx, awskms.Config{Client: f})
	if _, err := k.Wrap(ctx, awskms.DefaultAliasPrefix+"k", 1, []byte("dek")); !errors.Is(err, awskms.ErrThrottled) || !rekey.IsTransient(err) {
		t.Errorf("HTTP 429: %v, want a transient ErrThrottled", err)
	}
}

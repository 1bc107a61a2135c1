package rekey_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/rotation"
)

func TestAEADRoundTripAndKeyBinding(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.kr.CreateKey(ctx, "orders", "mem", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	pay, orders := b.kr.AEAD("payments"), b.kr.AEAD("orders")
	msg, ad := []byte("card 4111 1111 1111 1111"), []byte("invoice-42")

	ct1, err := pay.Encrypt(ctx, msg, ad)
	if err != nil {
		t.Fatal(err)
	}
	ct2, err := pay.Encrypt(ctx, msg, ad)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ct1, ct2) {
		t.Error("two encryptions of one message are equal")
	}
	if bytes.Contains(ct1, msg) {
		t.Error("ciphertext holds the plaintext")
	}
	got, err := pay.Decrypt(ctx, ct1, ad)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Decrypt = %q, %v", got, err)
	}

	// Another key's AEAD refuses it, naming the reason.
	if _, err := orders.Decrypt(ctx, ct1, ad); !errors.Is(err, rekey.ErrWrongKey) {
		t.Errorf("orders.Decrypt(payments ciphertext) = %v, want ErrWrongKey", err)
	}
	// Keyring.Open, not bound to a key, still opens it.
	if got, err := b.kr.Open(ctx, ct1, ad); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("Keyring.Open = %q, %v", got, err)
	}
	// Wrong associated data and a flipped bit fail.
	if _, err := pay.Decrypt(ctx, ct1, []byte("invoice-43")); !errors.Is(err, rekey.ErrInvalidCiphertext) {
		t.Errorf("wrong associated data: %v", err)
	}
	bad := bytes.Clone(ct1)
	bad[len(bad)-1] ^= 1
	if _, err := pay.Decrypt(ctx, bad, ad); !errors.Is(err, rekey.ErrInvalidCiphertext) {
		t.Errorf("flipped bit: %v", err)
	}
	if _, err := b.kr.AEAD("nosuch").Encrypt(ctx, msg, ad); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("unknown key: %v", err)
	}
}

func TestGenerateDataKeySurvivesRotation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	dk, err := b.kr.GenerateDataKey(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	if len(dk.Plaintext) != rekey.DEKSize || dk.Version != 1 || len(dk.Wrapped) == 0 || bytes.Contains(dk.Wrapped, dk.Plaintext) {
		t.Fatalf("data key: version %d, %d plaintext bytes, %d wrapped bytes", dk.Version, len(dk.Plaintext), len(dk.Wrapped))
	}
	// Nothing is stored.
	if n, err := b.store.CountDEKs(ctx, "payments"); err != nil || len(n) != 0 {
		t.Fatalf("CountDEKs after GenerateDataKey = %v, %v; want none", n, err)
	}

	eng, err := rotation.New(rotation.Config{Store: b.store, Backends: map[string]rekey.KMS{"mem": b.kms}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Rotate(ctx, "payments", rekey.ReasonManual, "test"); err != nil {
		t.Fatal(err)
	}
	dk2, err := b.kr.GenerateDataKey(ctx, "payments")
	if err != nil || dk2.Version != 2 {
		t.Fatalf("after rotation: version %d, %v", dk2.Version, err)
	}
	for _, d := range []rekey.DataKey{dk, dk2} {
		pt, err := b.kr.DecryptDataKey(ctx, "payments", d.Wrapped)
		if err != nil || !bytes.Equal(pt, d.Plaintext) {
			t.Errorf("DecryptDataKey(v%d) = %v", d.Version, err)
		}
	}
	bad := bytes.Clone(dk.Wrapped)
	bad[len(bad)-1] ^= 1
	if _, err := b.kr.DecryptDataKey(ctx, "payments", bad); !errors.Is(err, rekey.ErrInvalidCiphertext) {
		t.Errorf("corrupt wrapped key: %v", err)
	}
	if _, err := b.kr.DecryptDataKey(ctx, "nosuch", dk.Wrapped); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("unknown key: %v", err)
	}
}

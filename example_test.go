package rekey_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

// exampleKeyring is a Keyring over in-memory fakes with a key "payments";
// an application gets its Keyring from setup.Open.
func exampleKeyring() *rekey.Keyring {
	kr := rekey.NewKeyring(memstore.New(), map[string]rekey.KMS{"local": memkms.New()})
	if _, err := kr.CreateKey(context.Background(), "payments", "local", rekey.DefaultPolicy()); err != nil {
		log.Fatal(err)
	}
	return kr
}

// An AEAD is bound to one root key: it refuses another key's ciphertext.
func ExampleKeyring_AEAD() {
	ctx := context.Background()
	kr := exampleKeyring()
	if _, err := kr.CreateKey(ctx, "orders", "local", rekey.DefaultPolicy()); err != nil {
		log.Fatal(err)
	}
	ct, err := kr.AEAD("payments").Encrypt(ctx, []byte("hello"), []byte("row 7"))
	if err != nil {
		log.Fatal(err)
	}
	pt, err := kr.AEAD("payments").Decrypt(ctx, ct, []byte("row 7"))
	fmt.Println(string(pt), err)
	_, err = kr.AEAD("orders").Decrypt(ctx, ct, []byte("row 7"))
	fmt.Println(errors.Is(err, rekey.ErrWrongKey))
	// Output:
	// hello <nil>
	// true
}

// GenerateDataKey is for applications that keep wrapped keys in their own
// tables: nothing is stored, and DecryptDataKey opens the wrapped bytes
// under whichever version of the key wrapped them.
func ExampleKeyring_GenerateDataKey() {
	ctx := context.Background()
	kr := exampleKeyring()
	dk, err := kr.GenerateDataKey(ctx, "payments")
	if err != nil {
		log.Fatal(err)
	}
	defer clear(dk.Plaintext)
	// Store dk.Wrapped (and dk.Version) beside the data; encrypt with
	// dk.Plaintext. Later:
	pt, err := kr.DecryptDataKey(ctx, "payments", dk.Wrapped)
	if err != nil {
		log.Fatal(err)
	}
	defer clear(pt)
	fmt.Println(dk.Version, len(pt), bytes.Equal(pt, dk.Plaintext))
	// Output: 1 32 true
}

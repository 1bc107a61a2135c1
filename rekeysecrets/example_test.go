package rekeysecrets_test

import (
	"context"
	"fmt"
	"log"
	"net/url"
	"os"

	"gocloud.dev/secrets"

	"github.com/rekeyhq/rekey"
	_ "github.com/rekeyhq/rekey/rekeysecrets"
	"github.com/rekeyhq/rekey/setup"
)

// Example opens a go-cloud keeper on the root key "payments" of an embedded
// default: one blank import, one URL.
func Example() {
	ctx := context.Background()
	home, err := os.MkdirTemp("", "rekey-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(home)

	// What `rekey init` and `rekey key create payments` do.
	sys, err := setup.Open(ctx, setup.Options{Home: home})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sys.Keyring.CreateKey(ctx, "payments", "local", rekey.DefaultPolicy()); err != nil {
		log.Fatal(err)
	}
	if err := sys.Close(); err != nil {
		log.Fatal(err)
	}

	keeper, err := secrets.OpenKeeper(ctx, "rekey://payments?home="+url.QueryEscape(home))
	if err != nil {
		log.Fatal(err)
	}
	defer keeper.Close()

	ciphertext, err := keeper.Encrypt(ctx, []byte("card 4111 1111 1111 1111"))
	if err != nil {
		log.Fatal(err)
	}
	plaintext, err := keeper.Decrypt(ctx, ciphertext)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(plaintext))
	// Output: card 4111 1111 1111 1111
}

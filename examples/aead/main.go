// Command aead encrypts and decrypts one message under the root key
// "payments" of the rekey setup the CLI would use (run `rekey init` and
// `rekey key create payments` first). README.md shows this program.
package main

import (
	"context"
	"fmt"
	"log"

	"github.com/rekeyhq/rekey/setup"
)

func main() {
	ctx := context.Background()
	sys, err := setup.Open(ctx, setup.Options{}) // --config, $REKEY_CONFIG, ./rekey.yaml, $REKEY_HOME: as the CLI
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	ct, err := sys.Keyring.AEAD("payments").Encrypt(ctx, []byte("card 4111 1111 1111 1111"), []byte("invoice-42"))
	if err != nil {
		log.Fatal(err)
	}
	pt, err := sys.Keyring.AEAD("payments").Decrypt(ctx, ct, []byte("invoice-42")) // another key's ciphertext: rekey.ErrWrongKey
	fmt.Println(string(pt), err)
}

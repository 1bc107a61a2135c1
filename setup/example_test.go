package setup_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// exampleHome makes what `rekey init` and `rekey key create payments`
// make, in a new directory, and returns it.
func exampleHome() string {
	home, err := os.MkdirTemp("", "rekey-example-")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	sys, err := setup.Open(ctx, setup.Options{Home: home})
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	if _, err := sys.Keyring.CreateKey(ctx, "payments", "local", rekey.DefaultPolicy()); err != nil {
		log.Fatal(err)
	}
	return home
}

// Open the embedded default, encrypt and decrypt a message under the root
// key "payments", close. With Options{} the setup is found as the rekey
// command finds it; here Home names it.
func Example() {
	ctx := context.Background()
	sys, err := setup.Open(ctx, setup.Options{Home: exampleHome()})
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	aead := sys.Keyring.AEAD("payments")
	ct, err := aead.Encrypt(ctx, []byte("card 4111 1111 1111 1111"), []byte("invoice-42"))
	if err != nil {
		log.Fatal(err)
	}
	pt, err := aead.Decrypt(ctx, ct, []byte("invoice-42"))
	fmt.Println(string(pt), err)
	// Output: card 4111 1111 1111 1111 <nil>
}

// Run the rotation worker in-process, as `rekey run` does, until the
// application stops it.
func ExampleSystem_worker() {
	ctx := context.Background()
	sys, err := setup.Open(ctx, setup.Options{Home: exampleHome()})
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	rep := sys.Worker.RunOnce(ctx) // or sys.Worker.Start(ctx) ... sys.Worker.Stop(ctx)
	fmt.Println(rep.OK(), len(rep.Keys), rep.Keys[0].Outcome)
	// Output: true 1 idle
}

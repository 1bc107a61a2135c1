package kmsmw_test

import (
	"context"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/retry"
)

// printObserver prints each backend request.
type printObserver struct{}

func (printObserver) KMSCall(backend, op, result string, _ time.Duration) {
	fmt.Println(backend, op, result)
}

// A backend is wrapped once, where it is opened; every caller then uses
// the wrapped value.
func ExampleWrap() {
	ctx := context.Background()
	k := kmsmw.Wrap(memkms.New(), kmsmw.Options{
		Name:      "primary",
		RateLimit: 100, // requests per second
		Retry:     retry.Policy{Attempts: 3},
		Observer:  printObserver{},
	})
	defer k.Close()

	ref, _ := k.CreateKey(ctx, "payments")
	wrapped, _ := k.Wrap(ctx, ref, 1, []byte("a 32-byte data encryption key..."))
	dek, _ := k.Unwrap(ctx, ref, 1, wrapped)
	fmt.Println(len(dek), k.Capabilities().BatchRewrap)
	// Output:
	// primary create_key success
	// primary wrap success
	// primary unwrap success
	// 32 true
}

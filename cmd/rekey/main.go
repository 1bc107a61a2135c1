// Command rekey rotates root keys for envelope encryption: the worker
// daemon (`rekey run`) and the command line for keys, DEKs, data, plans,
// rotations, audit and reports. See `rekey --help` and the README.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

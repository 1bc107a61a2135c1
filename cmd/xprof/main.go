package main

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/setup"
)

func main() {
	ctx := context.Background()
	sys, err := setup.Open(ctx, setup.Options{ConfigPath: os.Args[1]})
	if err != nil {
		panic(err)
	}
	f, _ := os.Create("/tmp/xprof.cpu")
	pprof.StartCPUProfile(f)
	t := time.Now()
	r, err := audit.Verify(ctx, sys.Store, sys.Audit.MACer, audit.Purpose)
	fmt.Println("verify", time.Since(t), r.Valid, r.Events, r.Checkpoints, err)
	t = time.Now()
	p, err := audit.CrossCheck(ctx, sys.Store)
	fmt.Println("crosscheck", time.Since(t), p, err)
	t = time.Now()
	_, err = sys.Audit.Verify(ctx)
	fmt.Println("keeper verify", time.Since(t), err)
	pprof.StopCPUProfile()
}

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey/rotation"
)

// worker is `rekey run`: the engine on a timer, with declared keys
// reconciled at start.
type worker struct {
	c        *cli
	a        *app
	eng      *rotation.Engine
	interval time.Duration
}

func (c *cli) newWorker(ctx context.Context, a *app, listen string, once bool) (*worker, error) {
	w := &worker{c: c, a: a, interval: a.cfg.Worker.CheckInterval}
	eng, err := c.engine(a, nil)
	if err != nil {
		return nil, err
	}
	w.eng = eng
	return w, nil
}

// cycle runs one engine cycle and logs it.
func (w *worker) cycle(ctx context.Context) rotation.CycleReport {
	return w.eng.RunCycle(ctx)
}

func (w *worker) run(ctx context.Context, once bool) error {
	l := w.a.logger
	l.Info("rotation worker starting", "owner", w.eng.Owner(), "config", w.a.configPath,
		"check_interval", w.interval.String(), "once", once)
	if err := w.c.reconcileKeys(ctx, w.a); err != nil {
		// A declared key that cannot be reconciled is that key's problem:
		// the others still rotate.
		l.Error("reconciling declared keys", "error", err.Error())
	}
	if once {
		r := w.cycle(ctx)
		if ctx.Err() != nil {
			return nil // stopped by a signal: checkpointed, leases released
		}
		if !r.OK() {
			return exitError{code: exitFailure, msg: fmt.Sprintf("%d key(s) failed this cycle: see the log above", r.Failed)}
		}
		return nil
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.Info("rotation worker stopped")
			return nil
		case <-t.C:
			w.cycle(ctx)
			t.Reset(w.interval)
		}
	}
}

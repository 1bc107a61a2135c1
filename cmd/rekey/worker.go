package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/httpapi"
	"github.com/rekeyhq/rekey/metrics"
	"github.com/rekeyhq/rekey/rotation"
)

// worker is `rekey run`: the engine on a timer, with declared keys
// reconciled at start, metrics read from the store at scrape time, and the
// HTTP endpoints.
type worker struct {
	c        *cli
	a        *app
	eng      *rotation.Engine
	reg      *prometheus.Registry
	metrics  *metrics.Metrics
	listen   string
	interval time.Duration
	// auditSeq is the last audit event forwarded to the log.
	auditSeq   int64
	lastVerify time.Time
}

// auditVerifyEvery is how often the worker re-verifies the whole audit
// chain (and sets rekey_audit_chain_valid); also once at start.
const auditVerifyEvery = time.Hour

func (c *cli) newWorker(ctx context.Context, a *app, listen string, once bool) (*worker, error) {
	w := &worker{c: c, a: a, interval: a.cfg.Worker.CheckInterval, listen: listen, reg: prometheus.NewRegistry()}
	w.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	backends := make([]string, 0, len(a.cfg.Backends))
	for name := range a.cfg.Backends {
		backends = append(backends, name)
	}
	m, err := metrics.New(w.reg, metrics.Options{Store: a.store, Now: a.now, Backends: backends, Logger: a.logger})
	if err != nil {
		return nil, err
	}
	w.metrics = m
	eng, err := c.engine(a, engineObserver{m: m})
	if err != nil {
		return nil, err
	}
	w.eng = eng
	return w, nil
}

// engineObserver passes the engine's events that metrics counts on to it;
// the state gauges are read from the store at scrape time, so the others
// are dropped. (Stopgap until rotation.Observer has the new shape.)
type engineObserver struct {
	rotation.NopObserver
	m *metrics.Metrics
}

func (o engineObserver) RotationFinished(key, result string, d time.Duration) {
	o.m.RotationFinished(key, result, d)
}
func (o engineObserver) DEKsRewrapped(key string, n int) { o.m.DEKsRewrapped(key, n) }
func (o engineObserver) KMSCall(backend, op, result string, d time.Duration) {
	o.m.KMSCall(backend, op, result, d)
}
func (o engineObserver) CycleDone(at time.Time, ok bool) { o.m.CycleDone(at, ok) }

// cycle runs one engine cycle, forwards the audit events it wrote to the
// log and checkpoints the audit trail (the gauges are read at scrape time).
func (w *worker) cycle(ctx context.Context) rotation.CycleReport {
	r := w.eng.RunCycle(ctx)
	// Bookkeeping runs even when a signal ended the cycle: it is short, and
	// the events of the interrupted rotation deserve their checkpoint.
	bctx := context.WithoutCancel(ctx)
	w.auditBookkeeping(bctx)
	return r
}

// auditBookkeeping sends new audit events to the JSON log (for a SIEM),
// checkpoints the chain head, and re-verifies the chain when due.
func (w *worker) auditBookkeeping(ctx context.Context) {
	l := w.a.logger
	if seq, err := audit.LogSince(ctx, l, w.a.store, w.auditSeq); err != nil {
		l.Error("forwarding audit events to the log", "error", err.Error())
	} else {
		w.auditSeq = seq
	}
	if err := w.a.checkpointAudit(ctx); err != nil {
		l.Error("audit checkpoint refused", "error", err.Error())
		if errors.Is(err, audit.ErrInvalidChain) {
			w.metrics.SetAuditChainValid(false)
		}
	}
	if w.a.now().Sub(w.lastVerify) >= auditVerifyEvery {
		w.verifyAudit(ctx)
	}
}

func (w *worker) verifyAudit(ctx context.Context) {
	res, err := w.a.verifyAudit(ctx)
	if err != nil {
		w.a.logger.Error("verifying the audit chain", "error", err.Error())
		return
	}
	w.lastVerify = w.a.now()
	w.metrics.SetAuditChainValid(res.Valid)
	if !res.Valid {
		w.a.logger.Error("audit chain INVALID", "first_bad", res.FirstBad.String())
		return
	}
	w.a.logger.Info("audit chain verified", "events", res.Events, "checkpoints", res.Checkpoints)
}

// serveHTTP starts the endpoints on w.listen; the listener is bound before
// it returns, so a taken port is a start-up error, not a log line.
func (w *worker) serveHTTP(ctx context.Context, wg *sync.WaitGroup) error {
	srv, err := httpapi.New(httpapi.Config{Store: w.a.store, Backends: w.a.backends, Gatherer: w.reg, Logger: w.a.logger, Now: w.a.now})
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", w.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w (choose another address with --listen or http.listen, or --listen \"\" to serve nothing)", w.listen, err)
	}
	w.a.logger.Info("serving /metrics, /healthz, /readyz, /api/v1/status and the status page", "address", ln.Addr().String())
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, ln); err != nil {
			w.a.logger.Error("http server stopped", "error", err.Error())
		}
	}()
	return nil
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
	w.auditSeq = w.a.auditHead
	w.verifyAudit(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // the HTTP server shuts down when ctx ends
	httpCtx, stopHTTP := context.WithCancel(ctx)
	defer stopHTTP()
	if w.listen != "" {
		if err := w.serveHTTP(httpCtx, &wg); err != nil {
			return err
		}
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

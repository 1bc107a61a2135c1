package bench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/faultkms"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/setup"
)

// EngineRun says what the engine phase runs on.
type EngineRun struct {
	// ConfigPath is the bench's temporary configuration.
	ConfigPath string
	// Backend is the configured backend the key lives on (BackendLocal or
	// BackendAWSKMS).
	Backend string
	// ThrottleAt is Options.ThrottleAt: above 0, Backend is wrapped in
	// kms/faultkms throttling data requests above this rate.
	ThrottleAt float64
}

// throttledOps are the ops the bench's throttling refuses: the
// cryptographic requests, which share an account's request quota in AWS
// KMS (key creation and rotation have quotas of their own).
var throttledOps = []string{kmsmw.OpWrap, kmsmw.OpUnwrap, kmsmw.OpRewrap, kmsmw.OpRewrapBatch}

// RunEngine opens rekey on run.ConfigPath, as `rekey run` does, rotates
// KeyName with the engine (claim, new version, re-wrap of every DEK,
// commit) and reports its speed, the process's peak RSS (VmHWM) and the
// backend requests per DEK counted by the middleware's observer; with
// run.ThrottleAt, also what the throttling did. Run it in a process of its
// own for a fair peak RSS (`rekey bench` does).
func RunEngine(ctx context.Context, run EngineRun) (EngineResult, error) {
	if run.ThrottleAt < 0 || math.IsNaN(run.ThrottleAt) || math.IsInf(run.ThrottleAt, 0) {
		return EngineResult{}, fmt.Errorf("throttle rate %v: give 0 (none) or a positive rate per second", run.ThrottleAt)
	}
	reg := prometheus.NewRegistry()
	so := setup.Options{ConfigPath: run.ConfigPath, Registerer: reg, NoCreate: true}
	var fault *faultkms.KMS
	if run.ThrottleAt > 0 {
		so.WrapBackend = func(name string, inner rekey.KMS) rekey.KMS {
			if name != run.Backend {
				return inner
			}
			fault = faultkms.Wrap(inner, faultkms.Config{ThrottleAbove: run.ThrottleAt, Ops: throttledOps})
			return fault
		}
	}
	sys, err := setup.Open(ctx, so)
	if err != nil {
		return EngineResult{}, fmt.Errorf("open %s: %w", run.ConfigPath, err)
	}
	defer sys.Close()
	before, err := kmsRequests(reg)
	if err != nil {
		return EngineResult{}, err
	}
	start := time.Now()
	r, err := sys.Engine.Rotate(ctx, KeyName, rekey.ReasonManual, "rekey bench")
	took := time.Since(start)
	if err != nil {
		return EngineResult{}, fmt.Errorf("rotate %s: %w", KeyName, err)
	}
	after, err := kmsRequests(reg)
	if err != nil {
		return EngineResult{}, err
	}
	var thr *ThrottleResult
	if fault != nil {
		// The metrics count a throttled request as a failure: the
		// throttles are the fault wrapper's own count (it throttled
		// nothing before the rotation).
		thr = &ThrottleResult{ThrottleAt: run.ThrottleAt}
		thr.Requests = int64(after.total - before.total)
		for _, st := range fault.Stats() {
			thr.Throttled += st.Throttled
		}
		if thr.Requests > 0 {
			thr.ThrottledShare = float64(thr.Throttled) / float64(thr.Requests)
		}
		thr.SustainedReqPerS = (after.success - before.success) / took.Seconds()
		if mw, ok := sys.Backends[run.Backend].(*kmsmw.KMS); ok {
			thr.FinalRate = mw.CurrentRate()
		}
	}
	rss, err := PeakRSS()
	if err != nil {
		return EngineResult{}, err
	}
	res := EngineResult{Seconds: took.Seconds(), PeakRSSBytes: rss, DEKs: int(r.Done), Throttle: thr, RangeWorkers: sys.Engine.RangeWorkers()}
	if r.Done > 0 {
		res.DEKsPerS = float64(r.Done) / took.Seconds()
		res.BackendCallsPerDEK = (after.total - before.total) / float64(r.Done)
	}
	return res, nil
}

// requestCounts are sums of rekey_kms_requests_total.
type requestCounts struct {
	total, success float64
}

// kmsRequests sums rekey_kms_requests_total over every label, and by
// result.
func kmsRequests(g prometheus.Gatherer) (requestCounts, error) {
	mfs, err := g.Gather()
	if err != nil {
		return requestCounts{}, fmt.Errorf("read the metrics: %w", err)
	}
	var n requestCounts
	for _, mf := range mfs {
		if mf.GetName() != "rekey_kms_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue()
			n.total += v
			for _, l := range m.GetLabel() {
				if l.GetName() != "result" {
					continue
				}
				if l.GetValue() == kmsmw.ResultSuccess {
					n.success += v
				}
			}
		}
	}
	return n, nil
}

// PeakRSS returns this process's peak resident set size in bytes (VmHWM
// of /proc/self/status; Linux only).
func PeakRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("peak RSS: %w (it is read from /proc, on Linux)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmHWM:") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, "VmHWM:"))
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("peak RSS: unexpected line %q in /proc/self/status", line)
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("peak RSS: %q: %w", line, err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("peak RSS: %w", err)
	}
	return 0, fmt.Errorf("peak RSS: no VmHWM line in /proc/self/status")
}

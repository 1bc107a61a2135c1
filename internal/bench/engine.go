package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// RunEngine opens rekey on configPath, as `rekey run` does, rotates
// KeyName with the engine (claim, new version, re-wrap of every DEK,
// commit) and reports its speed, the process's peak RSS (VmHWM) and the
// backend requests per DEK counted by the middleware's observer. Run it in
// a process of its own for a fair peak RSS (`rekey bench` does).
func RunEngine(ctx context.Context, configPath string) (EngineResult, error) {
	reg := prometheus.NewRegistry()
	sys, err := setup.Open(ctx, setup.Options{ConfigPath: configPath, Registerer: reg, NoCreate: true})
	if err != nil {
		return EngineResult{}, fmt.Errorf("open %s: %w", configPath, err)
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
	rss, err := PeakRSS()
	if err != nil {
		return EngineResult{}, err
	}
	res := EngineResult{Seconds: took.Seconds(), PeakRSSBytes: rss, DEKs: int(r.Done)}
	if r.Done > 0 {
		res.DEKsPerS = float64(r.Done) / took.Seconds()
		res.BackendCallsPerDEK = (after - before) / float64(r.Done)
	}
	return res, nil
}

// kmsRequests sums rekey_kms_requests_total over every label.
func kmsRequests(g prometheus.Gatherer) (float64, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, fmt.Errorf("read the metrics: %w", err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "rekey_kms_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += m.GetCounter().GetValue()
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

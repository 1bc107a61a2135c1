package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rekeyhq/rekey"
)

// readyCheck is one component /readyz asks: the store, a backend or a
// DEK source.
type readyCheck struct {
	component string // "store", "backend:NAME" or "source:NAME"
	ping      func(context.Context) error
	sourceKey string // a source's one key ("" with a key column)
}

// newReadyChecks returns the store's check and one per backend that
// implements rekey.Pinger, ordered by backend name.
func newReadyChecks(store rekey.Store, backends map[string]rekey.KMS) ([]readyCheck, error) {
	checks := []readyCheck{{component: "store", ping: store.Ping}}
	names := make([]string, 0, len(backends))
	for name := range backends {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b := backends[name]
		if b == nil {
			return nil, rekey.Invalidf("httpapi: Config.Backends[%q] is nil", name)
		}
		if p, ok := b.(rekey.Pinger); ok && rekey.CapabilitiesOf(b).Ping {
			checks = append(checks, readyCheck{component: "backend:" + name, ping: p.Ping})
		}
	}
	return checks, nil
}

// checkResult is the outcome of one readiness check, as ?format=json shows it.
type checkResult struct {
	Component string `json:"component"`
	OK        bool   `json:"ok"`
	Error     string `json:"error,omitempty"`
	// Keys are the keys on a failing backend.
	Keys    []string `json:"keys,omitempty"`
	Seconds float64  `json:"duration_seconds"`
}

// readyReport is the JSON body of /readyz?format=json.
type readyReport struct {
	Ready  bool          `json:"ready"`
	Checks []checkResult `json:"checks"`
}

// checkReady runs every check at once, each bounded by the ready timeout,
// and returns their results in check order. Nothing is cached: a store that
// went away a moment ago fails now.
func (s *Server) checkReady(ctx context.Context) readyReport {
	results := make([]checkResult, len(s.checks))
	var wg sync.WaitGroup
	for i, c := range s.checks {
		wg.Go(func() { results[i] = s.runCheck(ctx, c) })
	}
	wg.Wait()
	rep := readyReport{Ready: true, Checks: results}
	for _, r := range results {
		rep.Ready = rep.Ready && r.OK
	}
	s.nameKeys(ctx, rep.Checks)
	s.nameSourceKeys(rep.Checks)
	return rep
}

// nameSourceKeys adds to each failing source's error the keys it concerns
// and what waits for it: a source with one key fails that key's rotations;
// a source whose rows name their keys may hold rows of any key, so no old
// version of any key retires while it is down (rotations go on).
func (s *Server) nameSourceKeys(results []checkResult) {
	for i, r := range results {
		if r.OK || !strings.HasPrefix(r.Component, "source:") {
			continue
		}
		if key := s.checks[i].sourceKey; key != "" {
			results[i].Keys = []string{key}
			results[i].Error += " (key " + key + ": its rotations fail until the source answers)"
		} else {
			results[i].Error += " (its rows name their keys: no old version of any key retires until the source answers)"
		}
	}
}

// nameKeys adds to each failing backend's error the keys that live on it
// (the keys whose rotations wait for it), when the store can say.
func (s *Server) nameKeys(ctx context.Context, results []checkResult) {
	var failing bool
	for _, r := range results {
		failing = failing || !r.OK && strings.HasPrefix(r.Component, "backend:")
	}
	if !failing {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	keys, err := s.store.ListKeys(ctx)
	if err != nil {
		return
	}
	for i, r := range results {
		name, ok := strings.CutPrefix(r.Component, "backend:")
		if !ok || r.OK {
			continue
		}
		var on []string
		for _, k := range keys {
			if k.Backend == name {
				on = append(on, k.Name)
			}
		}
		if len(on) > 0 {
			results[i].Keys = on
			results[i].Error += " (keys on it: " + strings.Join(on, ", ") + ")"
		}
	}
}

// runCheck runs one check within the ready timeout. A Ping that ignores its
// context is abandoned (it finishes in the background) rather than waited
// for: the probe must answer in time.
func (s *Server) runCheck(ctx context.Context, c readyCheck) checkResult {
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("ping panicked: %v", p)
			}
		}()
		done <- c.ping(ctx)
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	res := checkResult{Component: c.component, OK: err == nil, Seconds: time.Since(start).Seconds()}
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			res.Error = fmt.Sprintf("no answer within %s", s.readyTimeout)
			if err != context.DeadlineExceeded {
				res.Error += ": " + cleanError(err)
			}
		} else {
			res.Error = cleanError(err)
		}
	}
	return res
}

// serveReadyz answers 200 when every check passes and 503 otherwise, in
// plain text (one line per failing component) or, with ?format=json, as a
// readyReport listing every check.
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	rep := s.checkReady(r.Context())
	s.readiness.record(s.log, rep)
	code := http.StatusOK
	if !rep.Ready {
		code = http.StatusServiceUnavailable
	}
	if r.URL.Query().Get("format") == "json" {
		body, _ := json.MarshalIndent(rep, "", "  ")
		writeBody(w, code, "application/json", append(body, '\n'))
		return
	}
	var b strings.Builder
	if rep.Ready {
		b.WriteString("ready\n")
		for _, c := range rep.Checks {
			fmt.Fprintf(&b, "ok %s\n", c.Component)
		}
	} else {
		b.WriteString("not ready\n")
		for _, c := range rep.Checks {
			if !c.OK {
				fmt.Fprintf(&b, "FAIL %s: %s\n", c.Component, c.Error)
			}
		}
	}
	writeBody(w, code, "text/plain; charset=utf-8", []byte(b.String()))
}

// readinessLog logs changes of readiness, not every probe: a probe every
// few seconds during an outage would otherwise flood the log.
type readinessLog struct {
	last atomic.Int32 // 0 unknown, 1 ready, 2 not ready
}

func (l *readinessLog) record(log *slog.Logger, rep readyReport) {
	now := int32(1)
	if !rep.Ready {
		now = 2
	}
	if l.last.Swap(now) == now {
		return
	}
	if rep.Ready {
		log.Info("ready: the store, every pingable backend and every DEK source answer")
		return
	}
	var failing []string
	for _, c := range rep.Checks {
		if !c.OK {
			failing = append(failing, c.Component+": "+c.Error)
		}
	}
	log.Warn("not ready", "failing", failing)
}

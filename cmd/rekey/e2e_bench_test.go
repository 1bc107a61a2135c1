package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestE2EBench runs `rekey bench` on a small N: the --json shape of the
// contract, the engine phase in its child process, the user's home
// untouched, and a usage error for a bad flag.
func TestE2EBench(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	out := h.must("bench", "--deks", "1500", "--json")
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, out)
	}
	for _, k := range []string{"deks", "store", "backend", "engine", "naive", "floor", "ratios"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("bench --json lacks %q:\n%s", k, out)
		}
	}
	var res struct {
		DEKs   int `json:"deks"`
		Engine struct {
			DEKsPerS     float64 `json:"deks_per_s"`
			Seconds      float64 `json:"seconds"`
			PeakRSSBytes int64   `json:"peak_rss_bytes"`
			Calls        float64 `json:"backend_calls_per_dek"`
		} `json:"engine"`
		Naive struct {
			DEKs     int     `json:"deks"`
			DEKsPerS float64 `json:"deks_per_s"`
		} `json:"naive"`
		Floor struct {
			Crypto  float64 `json:"crypto_deks_per_s"`
			Store   float64 `json:"store_rows_per_s"`
			Minimal float64 `json:"minimal_store_rows_per_s"`
		} `json:"floor"`
		Ratios struct {
			Naive   float64 `json:"engine_vs_naive"`
			Floor   float64 `json:"engine_vs_floor"`
			Minimal float64 `json:"engine_vs_minimal"`
		} `json:"ratios"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.DEKs != 1500 || res.Naive.DEKs != 1500 || res.Engine.DEKsPerS <= 0 || res.Engine.PeakRSSBytes < 1<<20 ||
		res.Floor.Crypto <= 0 || res.Floor.Store <= 0 || res.Floor.Minimal <= 0 || res.Ratios.Naive <= 0 || res.Ratios.Minimal <= 0 {
		t.Errorf("bench --json figures: %+v", res)
	}
	// The user's home is not the bench's: it still has no key.
	if list := h.must("key", "list"); strings.Contains(list, "bench") {
		t.Errorf("key list of the user's home after bench:\n%s", list)
	}
	text := h.must("bench", "--deks", "300")
	for _, want := range []string{"engine (full rotation)", "naive (300 DEKs)", "floor: minimal table", "engine/naive"} {
		if !strings.Contains(text, want) {
			t.Errorf("bench table lacks %q:\n%s", want, text)
		}
	}
	if r := h.run("bench", "--deks", "0"); r.code != 2 || !strings.Contains(r.stderr, "--deks") {
		t.Errorf("bench --deks 0: %v", r)
	}
	if r := h.run("bench", "--store", "mysql"); r.code != 2 || !strings.Contains(r.stderr, "--store") {
		t.Errorf("bench --store mysql: %v", r)
	}
}

// TestE2EBenchWriters runs `rekey bench --with-writers`: rekey dek create
// and rekey decrypt, each a process of the same binary, keep working on
// the bench's SQLite store during the engine phase, with no "database is
// locked"; and the new flags' usage errors.
func TestE2EBenchWriters(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	out := h.must("bench", "--deks", "2000", "--with-writers", "--json")
	var res struct {
		Engine struct {
			DEKs int `json:"rewrapped"`
		} `json:"engine"`
		Writers *struct {
			Ops        int     `json:"ops"`
			DEKCreates int     `json:"dek_creates"`
			Decrypts   int     `json:"decrypts"`
			P50Ms      float64 `json:"p50_ms"`
			P99Ms      float64 `json:"p99_ms"`
			Locked     int     `json:"database_locked_errors"`
			Other      int     `json:"other_errors"`
			FirstError string  `json:"first_error"`
		} `json:"writers"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, out)
	}
	w := res.Writers
	if w == nil {
		t.Fatalf("bench --with-writers --json has no writers:\n%s", out)
	}
	t.Logf("writers: %+v", *w)
	if w.Ops < 1 || w.DEKCreates < 1 || w.P50Ms <= 0 || w.P99Ms < w.P50Ms {
		t.Errorf("writers %+v: want at least one dek create and ordered latencies", *w)
	}
	if w.Locked != 0 || w.Other != 0 {
		t.Errorf("writers failed: %d database is locked, %d others; first: %s", w.Locked, w.Other, w.FirstError)
	}
	if res.Engine.DEKs < 2000 {
		t.Errorf("the rotation re-wrapped %d DEKs, want at least 2000", res.Engine.DEKs)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--throttle-at", "-5"}, "--throttle-at"},
		{[]string{"--endpoint", "http://127.0.0.1:1"}, "--endpoint"},
		{[]string{"--backend", "awskms"}, "--endpoint"},
		{[]string{"--backend", "awskms", "--endpoint", "127.0.0.1:4599"}, "--endpoint"},
		{[]string{"--backend", "vault"}, "--backend"},
	} {
		if r := h.run(append([]string{"bench", "--deks", "10"}, c.args...)...); r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("bench %v: %v, want exit 2 naming %s", c.args, r, c.want)
		}
	}
}

// TestE2EBenchAWSKMS runs `rekey bench --backend awskms --throttle-at` on
// local-kms: the engine phase's child gets the throttle, the table shows
// the raw ReEncrypt and the throttling.
func TestE2EBenchAWSKMS(t *testing.T) {
	endpoint := awsEndpoint(t)
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	out := h.must("bench", "--deks", "2000", "--backend", "awskms", "--endpoint", endpoint, "--throttle-at", "400")
	for _, want := range []string{"raw ReEncrypt of the endpoint", "engine/raw", "throttled above 400 requests/s: the engine sustained"} {
		if !strings.Contains(out, want) {
			t.Errorf("bench table lacks %q:\n%s", want, out)
		}
	}
}

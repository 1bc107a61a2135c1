package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// e2eUsageKey is the usage part of `key show --json`.
type e2eUsageKey struct {
	ActiveVersion int    `json:"active_version"`
	DEKs          int64  `json:"deks"`
	Due           bool   `json:"due"`
	DueReason     string `json:"due_reason"`
	Policy        struct {
		MaxEncryptions int64   `json:"max_encryptions"`
		RotateAt       float64 `json:"rotate_at"`
	} `json:"policy"`
	Usage *struct {
		Encryptions int64 `json:"encryptions"`
		Max         int64 `json:"max_encryptions"`
	} `json:"usage"`
	Versions []struct {
		Version     int    `json:"version"`
		Encryptions *int64 `json:"encryptions"`
	} `json:"versions"`
}

func (h *e2eHome) usageOf(key string) e2eUsageKey {
	h.t.Helper()
	var k e2eUsageKey
	h.mustJSON(&k, "key", "show", key)
	if k.Usage == nil {
		h.t.Fatalf("key show %s --json has no usage", key)
	}
	return k
}

// e2eUsagePlan is the usage part of `plan --json`.
type e2eUsagePlan struct {
	Keys []struct {
		Key       string `json:"key"`
		Due       bool   `json:"due"`
		DueReason string `json:"due_reason"`
		Action    string `json:"action"`
	} `json:"keys"`
}

// TestE2E_UsageRotation is issue 14's must-hold: a key with
// --max-encryptions 1000 is due by usage after 900 DEKs, `run --once`
// rotates it with reason usage, and DEKs past 1000 on one version are
// refused, naming the limit, while no rotation runs.
func TestE2E_UsageRotation(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "u", "--max-encryptions", "1000")
	if r := h.run("key", "create", "bad", "--max-encryptions", "0"); r.code != 2 || !strings.Contains(r.stderr, "--max-encryptions") {
		t.Errorf("key create --max-encryptions 0: %v; want a usage error naming the flag", r)
	}
	if r := h.run("key", "create", "bad", "--rotate-at", "1.5"); r.code != 2 || !strings.Contains(r.stderr, "--rotate-at") {
		t.Errorf("key create --rotate-at 1.5: %v; want a usage error naming the flag", r)
	}

	h.createDEKs("u", 700)
	k := h.usageOf("u")
	if k.Policy.MaxEncryptions != 1000 || k.Policy.RotateAt != 0.8 {
		t.Errorf("policy = %+v, want max_encryptions 1000, rotate_at 0.8", k.Policy)
	}
	// One process that closed cleanly: its unused counts were given back.
	if k.Usage.Encryptions != 700 || k.Due {
		t.Fatalf("after 700 DEKs: usage %d, due %v; want exactly 700 and not due", k.Usage.Encryptions, k.Due)
	}
	planOf := func() e2eUsagePlan {
		t.Helper()
		var p e2eUsagePlan
		h.mustJSON(&p, "plan")
		return p
	}
	if p := planOf(); p.Keys[0].Due || p.Keys[0].Action != "none" {
		t.Errorf("plan after 700 wraps: %+v, want not due", p.Keys[0])
	}

	h.createDEKs("u", 200)
	p := planOf()
	if !p.Keys[0].Due || p.Keys[0].DueReason != "usage" || p.Keys[0].Action != "rotate" {
		t.Fatalf("plan after 900 wraps: %+v, want due by usage, action rotate", p.Keys[0])
	}
	if out := h.must("plan"); !strings.Contains(out, "due by usage") || !strings.Contains(out, "900 of max_encryptions 1000") {
		t.Errorf("plan text does not say due by usage with 900 of 1000:\n%s", out)
	}
	if out := h.must("key", "show", "u"); !strings.Contains(out, "900 of max_encryptions 1000") {
		t.Errorf("key show does not show the usage:\n%s", out)
	}

	h.must("run", "--once")
	st := h.status()
	var usage *e2eRotation
	for _, r := range st.Recent {
		if r.Key == "u" {
			usage = &r
			break
		}
	}
	if usage == nil || usage.Reason != "usage" || usage.State != "done" || usage.ToVersion != 2 {
		t.Fatalf("after run --once the key's last rotation is %+v, want a done rotation to v2 with reason usage", usage)
	}
	audit := h.must("audit", "list", "--key", "u", "--json")
	if !strings.Contains(audit, `"type":"rotation.started"`) || !strings.Contains(audit, `"reason":"usage"`) {
		t.Errorf("audit trail has no rotation.started with reason usage:\n%s", audit)
	}
	h.assertAllOn("u", 2, 900)

	// A second key, no rotation running: DEKs past 1000 are refused.
	h.must("key", "create", "lim", "--max-encryptions", "1000")
	h.createDEKs("lim", 1000)
	r := h.run("dek", "create", "--key", "lim")
	if r.code == 0 || !strings.Contains(r.stderr, "max_encryptions=1000") || !strings.Contains(r.stderr, "rotate") {
		t.Fatalf("dek create past the limit: %v; want a failure naming max_encryptions=1000 and what to do", r)
	}
	if k := h.usageOf("lim"); k.DEKs != 1000 || k.Usage.Encryptions != 1000 {
		t.Errorf("after the refusal: %d DEKs, usage %d; want 1000 and 1000", k.DEKs, k.Usage.Encryptions)
	}
}

// TestE2E_UsageCountSurvivesKill: processes creating DEKs are killed with
// SIGKILL at random moments; the keyring's count of the version never
// reads lower than the DEKs that exist nor than those acknowledged.
func TestE2E_UsageCountSurvivesKill(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "k9", "--max-encryptions", "10000000")
	const loops = 3
	deadline := time.Now().Add(8 * time.Second)
	var (
		mu                   sync.Mutex
		acknowledged, killed int
		wg                   sync.WaitGroup
	)
	for i := range loops {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			// The kill lands at a random moment of a run as long as the
			// last one that finished (a quarter to 1.75 of it), so that
			// about half the runs are killed however fast the machine.
			last := 300 * time.Millisecond
			for time.Now().Before(deadline) {
				cmd := h.command(nil, "dek", "create", "--key", "k9", "--count", "200", "--json")
				var out bytes.Buffer
				cmd.Stdout = &out
				started := time.Now()
				if err := cmd.Start(); err != nil {
					t.Error(err)
					return
				}
				timer := time.AfterFunc(last/4+time.Duration(rng.Int64N(int64(last*3/2))), func() { cmd.Process.Kill() })
				err := cmd.Wait()
				if timer.Stop() && err == nil {
					last = time.Since(started)
				}
				mu.Lock()
				if err == nil {
					var res struct {
						Created int `json:"created"`
					}
					if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
						t.Errorf("dek create --json: %v: %q", jerr, out.String())
					}
					acknowledged += res.Created
				} else {
					killed++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if killed == 0 || acknowledged == 0 {
		t.Fatalf("%d processes killed, %d DEKs acknowledged: the test needs both to prove anything", killed, acknowledged)
	}
	k := h.usageOf("k9")
	t.Logf("%d DEKs exist (%d acknowledged), %d processes killed, count %d", k.DEKs, acknowledged, killed, k.Usage.Encryptions)
	if k.DEKs < int64(acknowledged) {
		t.Errorf("%d DEKs exist, fewer than the %d acknowledged", k.DEKs, acknowledged)
	}
	if k.Usage.Encryptions < k.DEKs || k.Usage.Encryptions < int64(acknowledged) {
		t.Errorf("usage count %d is lower than the %d DEKs that exist (%d acknowledged): a wrap was not counted", k.Usage.Encryptions, k.DEKs, acknowledged)
	}
	// The count goes on from there: a clean process adds exactly its wraps.
	before := k.Usage.Encryptions
	h.createDEKs("k9", 10)
	if after := h.usageOf("k9").Usage.Encryptions; after != before+10 {
		t.Errorf("count after 10 more wraps = %d, want %d", after, before+10)
	}
}

package main

import (
	"os"
	"strings"
	"testing"
)

// e2eTooLow is the usage_too_low part of plan --json and status --json.
type e2eTooLow struct {
	DEKs              int64 `json:"deks"`
	Rewrapped         int64 `json:"rewrapped_by_last_rotation"`
	MaxEncryptions    int64 `json:"max_encryptions"`
	Threshold         int64 `json:"rotate_at_encryptions"`
	MinMaxEncryptions int64 `json:"min_max_encryptions"`
}

// TestE2E_UsageRotationNeverLoops is issue 14's leftover: a key with 1000
// DEKs and max_encryptions 1000 is due by usage; its rotation re-wraps
// 1000 DEKs, counted under the new version, so it is due again at once.
// Further run --once cycles do not rotate it by usage again (a rotation
// by schedule still runs, and after it neither), each logs an ERROR, and
// plan and status say why and the minimum max_encryptions that works. A
// config change that leaves max_encryptions below the DEKs warns.
func TestE2E_UsageRotationNeverLoops(t *testing.T) {
	t.Parallel()
	h := newE2EHome(t, e2eOpts{})
	h.must("key", "create", "lim", "--max-encryptions", "1000")
	h.createDEKs("lim", 1000)

	want := e2eTooLow{DEKs: 1000, Rewrapped: 1000, MaxEncryptions: 1000, Threshold: 800, MinMaxEncryptions: 2501}
	explained := func(when string) {
		t.Helper()
		var p struct {
			Keys []struct {
				Due         bool       `json:"due"`
				DueReason   string     `json:"due_reason"`
				Action      string     `json:"action"`
				UsageTooLow *e2eTooLow `json:"usage_too_low"`
			} `json:"keys"`
		}
		h.mustJSON(&p, "plan")
		if k := p.Keys[0]; !k.Due || k.DueReason != "usage" || k.Action != "none" || k.UsageTooLow == nil || *k.UsageTooLow != want {
			t.Errorf("%s: plan --json = %+v (too low %+v), want due by usage, action none, usage_too_low %+v", when, k, k.UsageTooLow, want)
		}
		for _, cmd := range [][]string{{"plan"}, {"status"}, {"key", "show", "lim"}} {
			out := h.must(cmd...)
			for _, s := range []string{"due by usage, max_encryptions too low", "max_encryptions 1000 is too low for the key's 1000 DEKs", "at least 2501", "--max-encryptions"} {
				if !strings.Contains(out, s) {
					t.Errorf("%s: rekey %s does not say %q:\n%s", when, strings.Join(cmd, " "), s, out)
				}
			}
		}
		var st struct {
			Keys []struct {
				UsageTooLow *e2eTooLow `json:"usage_too_low"`
			} `json:"keys"`
		}
		h.mustJSON(&st, "status")
		if tl := st.Keys[0].UsageTooLow; tl == nil || *tl != want {
			t.Errorf("%s: status --json usage_too_low = %+v, want %+v", when, tl, want)
		}
	}
	cycles := func(when string, n int) {
		t.Helper()
		for i := range n {
			r := h.run("run", "--once")
			if r.code != 0 {
				t.Fatalf("%s: run --once %d: %v", when, i+1, r)
			}
			if !strings.Contains(r.stderr, `"level":"ERROR"`) || !strings.Contains(r.stderr, "max_encryptions is too low for its DEKs") || !strings.Contains(r.stderr, `"min_max_encryptions":2501`) {
				t.Errorf("%s: run --once %d logged no ERROR naming the limit:\n%s", when, i+1, r.stderr)
			}
		}
	}

	// The first rotation by usage runs: nothing shows yet that it loops.
	if out := h.must("plan"); !strings.Contains(out, "next cycle: rotate") || strings.Contains(out, "too low") {
		t.Errorf("plan before any rotation: want a rotation, no complaint:\n%s", out)
	}
	h.must("run", "--once")
	h.assertAllOn("lim", 2, 1000)
	if st := h.status(); len(st.Recent) != 1 || st.Recent[0].Reason != "usage" {
		t.Fatalf("after the first cycle: rotations %+v, want one, by usage", st.Recent)
	}
	explained("after the rotation by usage")
	cycles("after the rotation by usage", 3)
	if st := h.status(); len(st.Recent) != 1 {
		t.Fatalf("cycles after the rotation by usage rotated again: %+v", st.Recent)
	}
	h.assertAllOn("lim", 2, 1000)

	// A rotation by schedule is never held back: it runs, its re-wrap
	// counts 1000 under v3, and the cycles after it do not rotate again.
	h.makeDue("lim")
	h.must("run", "--once")
	h.assertAllOn("lim", 3, 1000)
	if st := h.status(); len(st.Recent) != 2 || st.Recent[0].Reason != "scheduled" {
		t.Fatalf("after the key's expiry: rotations %+v, want a second one, scheduled", st.Recent)
	}
	explained("after the rotation by schedule")
	cycles("after the rotation by schedule", 2)
	if st := h.status(); len(st.Recent) != 2 {
		t.Fatalf("cycles after the scheduled rotation rotated again: %+v", st.Recent)
	}

	// The config declares the key with a max_encryptions still too low: a
	// warning names the numbers.
	cfg, err := os.ReadFile(h.configPath())
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(cfg), "keys: []", "keys:\n  - {name: lim, max_encryptions: 1100}\n", 1)
	if s == string(cfg) {
		t.Fatal("the config has no 'keys: []' to replace")
	}
	if err := os.WriteFile(h.configPath(), []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	r := h.run("run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, `"level":"WARN"`) || !strings.Contains(r.stderr, "declared key's max_encryptions is too low") ||
		!strings.Contains(r.stderr, `"deks":1000`) || !strings.Contains(r.stderr, `"max_encryptions":1100`) {
		t.Errorf("run --once after max_encryptions 1100 in the config: %v; want a warning naming 1000 DEKs and 1100", r)
	}
	// Raised to the minimum named: due no longer, nothing to explain.
	if err := os.WriteFile(h.configPath(), []byte(strings.Replace(s, "1100", "2501", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := h.run("run", "--once"); r.code != 0 || strings.Contains(r.stderr, "too low") {
		t.Errorf("run --once with max_encryptions 2501: %v; want no complaint", r)
	}
	if out := h.must("plan"); strings.Contains(out, "too low") || strings.Contains(out, "due by usage") {
		t.Errorf("plan with max_encryptions 2501 still complains:\n%s", out)
	}
}

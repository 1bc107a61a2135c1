package report_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/report"
	"github.com/rekeyhq/rekey/store/memstore"
)

// countingKMS is a backend whose wrap counts are set by the test.
type countingKMS struct {
	*memkms.KMS
	counts map[string]int64 // by ref
}

func (c countingKMS) Encryptions(_ context.Context, ref string, _ int) (int64, error) {
	n, ok := c.counts[ref]
	if !ok {
		return 0, rekey.ErrKeyNotFound
	}
	return n, nil
}

// TestReportUsage: with backends, the report has a usage line per key
// (the active version's wraps against max_encryptions, "usage high" from
// 90%), a key due by usage counts as due, and a key whose max_encryptions
// is too low for its DEKs (its last rotation re-wrapped at least the
// threshold) is an open problem naming the minimum.
func TestReportUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := memstore.New()
	limited := func(p rekey.Policy) rekey.Policy { p.MaxEncryptions = 1000; return p }
	createKey(t, s, "calm", limited(policy(90*rekey.Day)), at(60*rekey.Day))
	createKey(t, s, "busy", limited(policy(90*rekey.Day)), at(60*rekey.Day))
	createKey(t, s, "stuck", limited(policy(90*rekey.Day)), at(60*rekey.Day))
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "dek-" + string(rune('a'+i%26)) + time.Duration(i).String()
	}
	insertDEKs(t, s, "stuck", 1, ids...)
	// Its last rotation re-wrapped its 1000 DEKs: 1000 wraps under v2.
	rotate(t, s, "stuck", rot{id: "r-stuck", reason: rekey.ReasonUsage, start: at(65 * rekey.Day), commit: at(65 * rekey.Day),
		finish: at(65 * rekey.Day), rewrap: ids})
	kms := countingKMS{KMS: memkms.New(), counts: map[string]int64{
		backendRefPrefix + "calm": 120, backendRefPrefix + "busy": 905, backendRefPrefix + "stuck": 1000}}
	rep, err := report.BuildWith(ctx, s, time.Time{}, now, report.ChainCheck{Valid: true, CheckedAt: now},
		report.Options{Backends: map[string]rekey.KMS{"local": kms}})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]report.Key{}
	for _, k := range rep.Keys {
		byName[k.Name] = k
	}
	for _, c := range []struct {
		key  string
		high bool
		due  bool
		text string
	}{
		{"calm", false, false, "v1 did 120 of max_encryptions 1000 wraps (12.0%); due by usage from 800 wraps"},
		{"busy", true, true, "v1 did 905 of max_encryptions 1000 wraps (90.5%): usage high; due by usage (from 800 wraps"},
		{"stuck", true, true, "v2 did 1000 of max_encryptions 1000 wraps (100.0%): limit reached, new wraps are refused"},
	} {
		k := byName[c.key]
		if k.Usage == nil {
			t.Fatalf("key %s has no usage", c.key)
		}
		if k.Usage.High != c.high || k.Due != c.due || !strings.Contains(k.Usage.Text, c.text) {
			t.Errorf("key %s: usage %+v, due %v; want high %v, due %v, text with %q", c.key, *k.Usage, k.Due, c.high, c.due, c.text)
		}
		if (k.Usage.TooLow != nil) != (c.key == "stuck") {
			t.Errorf("key %s: too low = %+v", c.key, k.Usage.TooLow)
		}
	}
	var tooLow []report.Problem
	for _, p := range rep.Problems {
		if p.Kind == report.ProblemUsageLimitTooLow {
			tooLow = append(tooLow, p)
		}
	}
	if len(tooLow) != 1 || tooLow[0].Key != "stuck" || !strings.Contains(tooLow[0].Text, "at least 2501") {
		t.Errorf("usage_limit_too_low problems = %+v, want one for stuck naming 2501", tooLow)
	}

	var md, js, html bytes.Buffer
	if err := rep.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := rep.JSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := rep.HTML(&html); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"markdown": md.String(), "html": html.String()} {
		for _, w := range []string{"Usage:", "905 of max_encryptions 1000 wraps (90.5%): usage high", "Not rotated: due by usage, but max_encryptions 1000 is too low"} {
			if !strings.Contains(out, w) {
				t.Errorf("%s report lacks %q", name, w)
			}
		}
	}
	var decoded struct {
		Keys []struct {
			Name  string `json:"name"`
			Usage *struct {
				Encryptions int64   `json:"encryptions"`
				Max         int64   `json:"max_encryptions"`
				Ratio       float64 `json:"ratio"`
				High        bool    `json:"high"`
			} `json:"usage"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(js.Bytes(), &decoded); err != nil {
		t.Fatal(err)
	}
	for _, k := range decoded.Keys {
		if k.Name == "busy" && (k.Usage == nil || k.Usage.Encryptions != 905 || k.Usage.Max != 1000 || !k.Usage.High) {
			t.Errorf("JSON usage of busy = %+v", k.Usage)
		}
	}

	// Without backends (report.Build) there is no usage, and no guess.
	plain, err := report.Build(ctx, s, time.Time{}, now, report.ChainCheck{Valid: true, CheckedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range plain.Keys {
		if k.Usage != nil {
			t.Errorf("report.Build: key %s has a usage %+v", k.Name, *k.Usage)
		}
	}
}

package httpapi

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/status"
)

// renderPage lays d out with the page's template.
func renderPage(t *testing.T, d pageData) string {
	t.Helper()
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, d); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// card returns the HTML of key's card on the page.
func card(t *testing.T, page, key string) string {
	t.Helper()
	i := strings.Index(page, `<section class="card`)
	for i >= 0 {
		end := strings.Index(page[i:], "</section>")
		if end < 0 {
			t.Fatalf("unclosed card on the page")
		}
		if c := page[i : i+end]; strings.Contains(c, `id="key-`+key+`"`) {
			return c
		}
		next := strings.Index(page[i+end:], `<section class="card`)
		if next < 0 {
			break
		}
		i += end + next
	}
	t.Fatalf("no card for key %s on the page", key)
	return ""
}

// TestStatusPageUsage: the page shows each key's active-version usage as
// count / max and a percentage, a "usage high" badge from 90%, and why a
// key due by usage is not rotated when its max_encryptions is too low.
func TestStatusPageUsage(t *testing.T) {
	t.Parallel()
	exp := testNow.Add(60 * rekey.Day)
	key := func(name string, n, max int64) status.KeyView {
		p := rekey.DefaultPolicy()
		p.MaxEncryptions = max
		k := rekey.Key{Name: name, ActiveVersion: 2, ExpiresAt: exp, Policy: p}
		u := rekey.UsageOf(k, n)
		return status.KeyView{Name: name, ActiveVersion: 2, ExpiresAt: exp, Policy: status.NewPolicyView(p), Usage: &u,
			Versions: []status.VersionView{{Version: 2, State: rekey.VersionActive}}}
	}
	low := key("low", 120, 1000)
	edge := key("edge", 899, 1000)
	high := key("high", 900, 1000)
	stuck := key("stuck", 1000, 1000)
	stuck.Due, stuck.DueReason, stuck.DEKs = true, rekey.ReasonUsage, 1000
	stuck.UsageTooLow = rekey.UsageRotationBlocked(rekey.Key{Policy: rekey.Policy{MaxEncryptions: 1000}}, rekey.ReasonUsage, 1000, 1000)
	uncounted := status.KeyView{Name: "uncounted", ActiveVersion: 1, ExpiresAt: exp, Policy: status.NewPolicyView(rekey.DefaultPolicy())}
	st := status.Status{Time: testNow, Keys: []status.KeyView{low, edge, high, stuck, uncounted}}

	d := buildPage(st, nil, false)
	page := renderPage(t, d)
	for _, c := range []struct {
		key       string
		wants     []string
		high      bool
		cardLevel string
	}{
		{"low", []string{"Usage (v2)", "120 / 1,000 wraps (12.0%)", `aria-valuenow="12.0"`, "Due by usage at 800 wraps"}, false, levelOK},
		{"edge", []string{"899 / 1,000 wraps (89.9%)"}, false, levelOK},
		{"high", []string{"900 / 1,000 wraps (90.0%)", `<dd class="usage warn">`}, true, levelWarn},
		{"stuck", []string{"1,000 / 1,000 wraps (100.0%)", "Not rotated: due by usage, but max_encryptions 1000 is too low for the key&#39;s 1000 DEKs", "at least 2501"}, true, levelWarn},
	} {
		html := card(t, page, c.key)
		for _, w := range c.wants {
			if !strings.Contains(html, w) {
				t.Errorf("card %s lacks %q:\n%s", c.key, w, html)
			}
		}
		if got := strings.Contains(html, `<span class="badge warn">usage high</span>`); got != c.high {
			t.Errorf("card %s: usage high badge %v, want %v", c.key, got, c.high)
		}
		if !strings.Contains(html, `<section class="card `+c.cardLevel+`"`) {
			t.Errorf("card %s: level is not %s:\n%.200s", c.key, c.cardLevel, html)
		}
	}
	if html := card(t, page, "uncounted"); strings.Contains(html, "Usage (") || strings.Contains(html, "usage-bar") {
		t.Errorf("a key whose wraps are not counted shows a usage:\n%s", html)
	}
	if !strings.Contains(page, "2 keys with usage high") {
		t.Errorf("the page header does not count the keys with usage high")
	}
	// The key index at the top carries the badge too.
	nav := page[strings.Index(page, `<nav class="index"`):]
	nav = nav[:strings.Index(nav, "</nav>")]
	if n := strings.Count(nav, "usage high"); n != 2 {
		t.Errorf("the key index has %d usage high badges, want 2:\n%s", n, nav)
	}
}

package main

// The status page in a real browser (issue 14, point 3): headless Chromium,
// driven by chromedp, reads the page that `rekey run --listen` serves.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// chromiumPeer returns the browser binary from REKEY_TEST_CHROMIUM. Without
// it the test fails under CI (CI or REKEY_REQUIRE_PEERS set) and is skipped
// otherwise, naming the command that installs one.
func chromiumPeer(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("REKEY_TEST_CHROMIUM")
	if bin == "" {
		const how = "REKEY_TEST_CHROMIUM is not set: install headless Chromium with `export REKEY_TEST_CHROMIUM=$(scripts/chromium)`, or run scripts/test"
		if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		t.Fatalf("REKEY_TEST_CHROMIUM=%s is not an executable file (%v): point it at chromium-headless-shell (scripts/chromium prints its path)", bin, err)
	}
	return bin
}

// artifactDir is where the test writes its screenshots: $REKEY_TEST_ARTIFACTS
// when set (created if missing), else the test's temporary directory.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("REKEY_TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("REKEY_TEST_ARTIFACTS: %v", err)
	}
	return dir
}

// startChromium starts one headless browser for the test (stopped at its
// end) and returns the context of its first tab.
func startChromium(t *testing.T, bin string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 1400),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first Run starts the browser and binds it to the context it gets:
	// that must be ctx itself, not a shorter-lived child.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`1`)); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	return ctx
}

// tab is a browser tab whose console (calls of the console API, uncaught
// exceptions, browser log entries such as failed loads) is collected from
// its first moment.
type tab struct {
	ctx    context.Context
	name   string
	mu     sync.Mutex
	msgs   []chromedp.ConsoleMessage
	marked chan struct{} // signalled on each check mark seen
}

// newTab opens a tab in a fresh browser context of the browser of parent
// (its own cookies and settings), with JavaScript on or off.
func newTab(t *testing.T, parent context.Context, name string, javascript bool) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(parent, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	tb := &tab{ctx: ctx, name: name, marked: make(chan struct{}, 64)}
	msgs := chromedp.Console(ctx) // subscribes now: nothing the tab logs is lost
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			tb.mu.Lock()
			tb.msgs = append(tb.msgs, m)
			tb.mu.Unlock()
			if strings.HasPrefix(m.Text, checkMark) {
				select {
				case tb.marked <- struct{}{}:
				default:
				}
			}
		}
	}()
	if !javascript {
		c, stop := context.WithTimeout(ctx, 30*time.Second)
		defer stop()
		if _, err := chromedp.Call(c, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true}); err != nil {
			t.Fatalf("tab %s: disable JavaScript: %v", name, err)
		}
	}
	return tb
}

// checkMark starts the console line a check writes after reading a page:
// once the collector has seen it, every message the page wrote before it
// has been collected (the protocol keeps their order).
const checkMark = "rekey-browser-test-mark "

// console returns the messages collected from index from on.
func (tb *tab) console(from int) []chromedp.ConsoleMessage {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return slices.Clone(tb.msgs[min(from, len(tb.msgs)):])
}

// failures are the console messages that mean something failed: errors
// (console.error, failed loads, CSP and other browser errors) and uncaught
// exceptions.
func failures(msgs []chromedp.ConsoleMessage) []string {
	var out []string
	for _, m := range msgs {
		if strings.HasPrefix(m.Text, checkMark) {
			continue
		}
		if m.Type == chromedp.ConsoleError || m.IsException() {
			out = append(out, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1))
		}
	}
	return out
}

// pageKey is one key's card as the browser renders it.
type pageKey struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Card         string `json:"card"`       // class attribute of the card
	Badge        string `json:"badge"`      // class attribute of the state badge
	State        string `json:"state"`      // the state badge's rendered text
	StateShown   bool   `json:"stateShown"` // the state badge is rendered and visible
	Progress     string `json:"progress"`
	ProgressText string `json:"progressText"`
	HasProgress  bool   `json:"hasProgress"`
}

// pageView is what a check reads from a loaded page.
type pageView struct {
	Status int64     `json:"-"`
	Title  string    `json:"title"`
	Health string    `json:"health"` // class attribute of the header
	Keys   []pageKey `json:"keys"`
}

// readPageJS reads the key cards from the DOM the browser built (run by
// DevTools, which works with the page's JavaScript disabled too).
const readPageJS = `(() => {
  const top = document.querySelector('header.top');
  return {
    title: document.title,
    health: top ? top.className : '',
    keys: Array.from(document.querySelectorAll('section.card[id^="key-"]')).map(s => {
      const h = s.querySelector('.card-head h2');
      const b = s.querySelector('.card-head .badge');
      const bar = s.querySelector('.rotation [role=progressbar]');
      const txt = bar ? bar.nextElementSibling : null;
      return {
        id: s.id, name: h ? h.innerText.trim() : '', card: s.className,
        badge: b ? b.className : '', state: b ? b.innerText.trim() : '',
        stateShown: !!b && b.checkVisibility({opacityProperty: true, visibilityProperty: true}),
        hasProgress: !!bar, progress: bar ? (bar.getAttribute('aria-valuenow') || '') : '',
        progressText: txt ? txt.innerText.trim() : '',
      };
    }),
  };
})()`

// load navigates tb to url and reads the page; console holds what the page
// logged while it loaded.
func (tb *tab) load(url string) (v pageView, console []chromedp.ConsoleMessage, err error) {
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	tb.mu.Lock()
	from := len(tb.msgs)
	tb.mu.Unlock()
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err != nil {
		return v, nil, fmt.Errorf("navigate to %s: %w", url, err)
	}
	if v, err = chromedp.Run(ctx, chromedp.Evaluate[pageView](readPageJS)); err != nil {
		return v, nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp != nil {
		v.Status = resp.Status
	}
	mark := checkMark + strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`console.debug(`+strconv.Quote(mark)+`)`)); err != nil {
		return v, nil, fmt.Errorf("console mark on %s: %w", url, err)
	}
	for {
		for _, m := range tb.console(from) {
			if m.Text == mark {
				return v, tb.console(from), nil
			}
		}
		select {
		case <-tb.marked:
		case <-ctx.Done():
			return v, nil, fmt.Errorf("%s: the console mark never arrived: %w", url, ctx.Err())
		}
	}
}

// keyWant is a key the page must show, in a state.
type keyWant struct {
	name  string
	level string // CSS class of the state badge and the card: ok, info, warn, crit
	state string // text of the state badge
}

// checkPage loads url in tb and returns what is wrong with it: not HTTP 200,
// a key card missing, extra or named wrong, a state badge whose text or
// class is not the wanted one (or is hidden), anything failing in the
// console.
func checkPage(tb *tab, url string, want []keyWant) (pageView, []string) {
	v, console, err := tb.load(url)
	if err != nil {
		return v, []string{err.Error()}
	}
	var problems []string
	if v.Status != http.StatusOK {
		problems = append(problems, fmt.Sprintf("HTTP %d, want 200", v.Status))
	}
	byID := map[string]pageKey{}
	for _, k := range v.Keys {
		byID[k.ID] = k
	}
	for _, w := range want {
		k, ok := byID["key-"+w.name]
		if !ok {
			problems = append(problems, fmt.Sprintf("key %s: no card #key-%s on the page", w.name, w.name))
			continue
		}
		delete(byID, "key-"+w.name)
		if k.Name != w.name {
			problems = append(problems, fmt.Sprintf("key %s: card heading reads %q", w.name, k.Name))
		}
		if k.State != w.state {
			problems = append(problems, fmt.Sprintf("key %s: state badge reads %q, want %q", w.name, k.State, w.state))
		}
		if !k.StateShown {
			problems = append(problems, fmt.Sprintf("key %s: state badge %q is not visible", w.name, k.State))
		}
		if !slices.Contains(strings.Fields(k.Badge), w.level) {
			problems = append(problems, fmt.Sprintf("key %s: state badge class %q, want %q in it", w.name, k.Badge, w.level))
		}
		if !slices.Contains(strings.Fields(k.Card), w.level) {
			problems = append(problems, fmt.Sprintf("key %s: card class %q, want %q in it", w.name, k.Card, w.level))
		}
	}
	for id := range byID {
		problems = append(problems, fmt.Sprintf("unexpected card #%s", id))
	}
	for _, f := range failures(console) {
		problems = append(problems, "console: "+f)
	}
	return v, problems
}

// progressRe reads the open rotation's "N of M DEKs re-wrapped".
var progressRe = regexp.MustCompile(`^([0-9,]+) of ([0-9,]+) DEKs re-wrapped`)

// progressReading is the open rotation's progress as one page load showed it.
type progressReading struct {
	done, total int64
	pct         float64 // aria-valuenow of the progress bar
}

func parseProgress(k pageKey) (progressReading, error) {
	m := progressRe.FindStringSubmatch(k.ProgressText)
	if m == nil {
		return progressReading{}, fmt.Errorf("progress text %q does not read \"N of M DEKs re-wrapped\"", k.ProgressText)
	}
	done, _ := strconv.ParseInt(strings.ReplaceAll(m[1], ",", ""), 10, 64)
	total, _ := strconv.ParseInt(strings.ReplaceAll(m[2], ",", ""), 10, 64)
	pct, err := strconv.ParseFloat(k.Progress, 64)
	if err != nil {
		return progressReading{}, fmt.Errorf("progress bar aria-valuenow %q: %v", k.Progress, err)
	}
	return progressReading{done: done, total: total, pct: pct}, nil
}

// progressProblems says what is wrong with the readings of one rotation's
// progress: it must be read at least twice mid-way (0 < done < total), never
// go back, and move; the bar must agree with the text. A reading of "0 of 0"
// is a rotation claimed whose DEKs are not counted yet.
func progressProblems(rs []progressReading, total int64) []string {
	var p []string
	var mid []int64
	for i, r := range rs {
		if r.total != total && (r.total != 0 || r.done != 0) {
			p = append(p, fmt.Sprintf("reading %d: total %d, want %d", i, r.total, total))
		}
		if want := float64(r.done) * 100 / float64(max(r.total, 1)); r.pct < want-0.1 || r.pct > want+0.1 {
			p = append(p, fmt.Sprintf("reading %d: bar at %.1f%% but text says %d of %d", i, r.pct, r.done, r.total))
		}
		if i > 0 && r.done < rs[i-1].done {
			p = append(p, fmt.Sprintf("reading %d: progress went back from %d to %d", i, rs[i-1].done, r.done))
		}
		if r.done > 0 && r.done < r.total {
			mid = append(mid, r.done)
		}
	}
	switch {
	case len(mid) < 2:
		p = append(p, fmt.Sprintf("saw the re-wrap mid-way in %d page load(s), want at least 2 (readings %v): lower worker.batch_size to slow it", len(mid), rs))
	case mid[len(mid)-1] <= mid[0]:
		p = append(p, fmt.Sprintf("progress did not move: %v", mid))
	}
	return p
}

// TestE2E_StatusPageBrowser (issue 14, point 3): headless Chromium against
// `rekey run --listen` on an embedded default with four keys — archive
// (overdue), ledger (200,000 DEKs, re-wrapped while the page is watched),
// payments (on schedule), sessions (due soon):
//   - the page, reloaded while the worker re-wraps ledger, shows its
//     rotation's progress increasing (at least two readings mid-way);
//   - once done, every key has its card, with the state badge's text and
//     class (overdue: crit, due soon: info, on schedule: ok), and the
//     /api/v1/status agrees;
//   - nothing fails in the console (errors, uncaught exceptions, failed
//     loads) in any page load of the test;
//   - the same checks pass in a second browser context with JavaScript
//     disabled (proved disabled on a canary page);
//   - screenshots (mid-rotation and final) are written to
//     $REKEY_TEST_ARTIFACTS or the test's temporary directory;
//   - the checks fail on broken pages (subtest broken_pages_fail): a render
//     failure, a missing key, a lost state class, a hidden state, a script
//     error and content that needs JavaScript.
func TestE2E_StatusPageBrowser(t *testing.T) {
	bin := chromiumPeer(t)
	const (
		ledgerDEKs    = 200_000
		archivePeriod = 20 * time.Second
	)
	h := newE2EHome(t, e2eOpts{batchSize: 500})
	// One cycle at start, then none for the rest of the test: the overdue
	// key stays overdue once its period has passed.
	h.editConfig([2]string{"check_interval: 1m", "check_interval: 1h"})
	art := artifactDir(t)

	h.must("key", "create", "ledger")
	made := time.Now()
	h.createDEKs("ledger", ledgerDEKs)
	t.Logf("dek create --count %d: %v", ledgerDEKs, time.Since(made).Round(time.Millisecond))
	h.makeDue("ledger")
	h.must("key", "create", "payments")
	h.createDEKs("payments", 25)
	// Due soon: notify_within spans the whole period; the rotation window
	// (1d) is far.
	h.must("key", "create", "sessions", "--period", "10d", "--rotate-within", "1d", "--notify-within", "10d")

	browserCtx := startChromium(t, bin)
	on := newTab(t, browserCtx, "javascript on", true)
	// Overdue 20 s from now. The worker's one cycle checks it first (keys go
	// by name) while it is not due yet (1 s window), and never again. It is
	// made right before the worker starts, to leave the worker most of the
	// 19 s to get to it.
	h.must("key", "create", "archive", "--period", archivePeriod.String(), "--rotate-within", "1s", "--notify-within", "2s")
	archiveExpires := time.Now().Add(archivePeriod) // a bound: the key was made before now
	wk := h.startWorker()
	t.Logf("rekey run serves %s; chromium %s", wk.base, bin)

	// The re-wrap, watched: reload until ledger's card has no open rotation.
	watched := time.Now()
	var readings []progressReading
	shot := false
	deadline := time.Now().Add(150 * time.Second)
	for seen := false; ; {
		if time.Now().After(deadline) {
			t.Fatalf("ledger's rotation still open on the page after 150s (readings %v)\nworker log:\n%s", readings, e2eTail(wk.lines.text(), 3000))
		}
		v, console, err := on.load(wk.base + "/")
		if err != nil {
			t.Fatal(err)
		}
		if f := failures(console); len(f) > 0 {
			t.Errorf("console while the rotation runs: %v", f)
		}
		i := slices.IndexFunc(v.Keys, func(k pageKey) bool { return k.ID == "key-ledger" })
		if i < 0 {
			t.Fatalf("no card for ledger on the page: %+v", v)
		}
		k := v.Keys[i]
		if !k.HasProgress {
			if seen {
				break
			}
			time.Sleep(100 * time.Millisecond) // the worker has not claimed ledger yet
			continue
		}
		seen = true
		r, err := parseProgress(k)
		if err != nil {
			t.Fatal(err)
		}
		readings = append(readings, r)
		if !shot && r.done > 0 && r.done < r.total {
			shot = true
			screenshot(t, on, filepath.Join(art, "status-page-rotating.png"))
		}
	}
	t.Logf("progress as the page showed it, %d reloads in %v: %v", len(readings), time.Since(watched).Round(time.Second), readings)
	for _, p := range progressProblems(readings, ledgerDEKs) {
		t.Error(p)
	}

	// The states: archive's period ends 20 s after it was made.
	if d := time.Until(archiveExpires); d > -time.Second {
		t.Logf("waiting %v for archive's period to end", (d + time.Second).Round(time.Millisecond))
		time.Sleep(d + time.Second)
	}
	want := []keyWant{
		{"archive", "crit", "overdue"},
		{"ledger", "ok", "on schedule"},
		{"payments", "ok", "on schedule"},
		{"sessions", "info", "due soon"},
	}
	st := h.status()
	for _, k := range st.Keys {
		switch {
		case k.Name == "archive" && (!k.Overdue || k.ActiveVersion != 1):
			t.Errorf("api: archive overdue=%v active v%d, want overdue v1 (did the worker rotate it?)", k.Overdue, k.ActiveVersion)
		case k.Name == "ledger" && (k.ActiveVersion != 2 || k.Due):
			t.Errorf("api: ledger active v%d due=%v, want v2 not due", k.ActiveVersion, k.Due)
		}
	}
	v, problems := checkPage(on, wk.base+"/", want)
	for _, p := range problems {
		t.Errorf("javascript on: %s", p)
	}
	if t.Failed() {
		t.Logf("page as read: %+v", v)
	}
	screenshot(t, on, filepath.Join(art, "status-page.png"))

	// JavaScript off: first prove it is off, then the same checks.
	canary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!DOCTYPE html><html><head><title>canary</title></head><body><p id="c">no script ran</p><script>document.title = "script ran"</script></body></html>`)
	}))
	defer canary.Close()
	off := newTab(t, browserCtx, "javascript off", false)
	for _, c := range []struct {
		tb    *tab
		title string
	}{{on, "script ran"}, {off, "canary"}} {
		cv, _, err := c.tb.load(canary.URL)
		if err != nil {
			t.Fatal(err)
		}
		if cv.Title != c.title {
			t.Fatalf("%s: canary page title %q, want %q: the tab's JavaScript setting is not what the test thinks", c.tb.name, cv.Title, c.title)
		}
	}
	if _, problems := checkPage(off, wk.base+"/", want); len(problems) > 0 {
		for _, p := range problems {
			t.Errorf("javascript off: %s", p)
		}
	}
	screenshot(t, off, filepath.Join(art, "status-page-nojs.png"))

	// Over the whole test, in both tabs: nothing failed in the console.
	for _, tb := range []*tab{on, off} {
		all := tb.console(0)
		if f := failures(all); len(f) > 0 {
			t.Errorf("%s: console failures over the test: %v", tb.name, f)
		}
		t.Logf("%s: %d console message(s), none failing", tb.name, len(all))
	}

	t.Run("broken_pages_fail", func(t *testing.T) {
		_, good := wk.get("/")
		brokenPagesFail(t, on, off, good, want)
	})
}

// screenshot writes the whole page of tb as a PNG to path and logs it.
func screenshot(t *testing.T, tb *tab, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot: %d bytes, not a PNG", len(png))
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot (%s): %s (%d bytes)", tb.name, path, len(png))
}

// brokenPagesFail serves broken versions of a good page (good, as the
// worker served it) and holds checkPage to finding what is wrong with
// each, so that the test above can fail. The unbroken page passes, and so
// does the page that needs JavaScript in a tab that has it.
func brokenPagesFail(t *testing.T, on, off *tab, good string, want []keyWant) {
	mustReplace := func(s, old, new string) string {
		t.Helper()
		if !strings.Contains(s, old) {
			t.Fatalf("the status page no longer contains %q: update this test's broken pages", old)
		}
		return strings.ReplaceAll(s, old, new)
	}
	mainRe := regexp.MustCompile(`(?s)<main class="wrap">.*</main>`)
	mainHTML := mainRe.FindString(good)
	if mainHTML == "" {
		t.Fatal("the status page has no <main class=\"wrap\">: update this test's broken pages")
	}
	jsMain, _ := json.Marshal(mainHTML)
	type variant struct {
		name     string
		status   int
		ctype    string
		body     string
		tab      *tab
		problems []string // each must be a substring of some problem found; none: the page must pass
	}
	vs := []variant{
		{name: "good", body: good, tab: on},
		{name: "good", body: good, tab: off},
		{name: "render_failed", status: 500, ctype: "text/plain; charset=utf-8", body: "rendering the status page failed; see the log\n", tab: on,
			problems: []string{"HTTP 500", "key archive: no card", "key sessions: no card"}},
		{name: "key_missing", body: mustReplace(good, `id="key-archive"`, `id="gone-archive"`), tab: on,
			problems: []string{"key archive: no card"}},
		{name: "state_class_lost", body: mustReplace(good, `<span class="badge info">due soon</span>`, `<span class="badge">due soon</span>`), tab: on,
			problems: []string{`key sessions: state badge class "badge"`}},
		{name: "state_hidden", body: mustReplace(good, `</style>`, `.card-head .badge.crit { display: none; }</style>`), tab: on,
			problems: []string{`key archive: state badge "overdue" is not visible`}},
		{name: "wrong_state", body: mustReplace(good, `<span class="badge crit">overdue</span>`, `<span class="badge crit">on schedule</span>`), tab: on,
			problems: []string{`key archive: state badge reads "on schedule", want "overdue"`}},
		{name: "script_error", body: mustReplace(good, `</body>`, `<script>window.rekeyNoSuchThing.render()</script></body>`), tab: on,
			problems: []string{"console: exception"}},
		{name: "failed_load", body: mustReplace(good, `</head>`, `<link rel="stylesheet" href="/no-such.css"></head>`), tab: on,
			problems: []string{"console: error"}},
		{name: "needs_javascript", body: strings.Replace(good, mainHTML, `<main id="m"></main><script>document.getElementById("m").outerHTML = `+string(jsMain)+`</script>`, 1), tab: on},
		{name: "needs_javascript", body: strings.Replace(good, mainHTML, `<main id="m"></main><script>document.getElementById("m").outerHTML = `+string(jsMain)+`</script>`, 1), tab: off,
			problems: []string{"key archive: no card", "key ledger: no card"}},
	}
	pages := map[string]variant{}
	for _, v := range vs {
		pages["/"+v.name] = v
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := pages[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		ct := v.ctype
		if ct == "" {
			ct = "text/html; charset=utf-8"
		}
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(max(v.status, http.StatusOK))
		fmt.Fprint(w, v.body)
	}))
	defer srv.Close()
	for _, v := range vs {
		_, got := checkPage(v.tab, srv.URL+"/"+v.name, want)
		if len(v.problems) == 0 {
			if len(got) > 0 {
				t.Errorf("%s (%s): the checks fail a page that is fine: %v", v.name, v.tab.name, got)
			}
			continue
		}
		if len(got) == 0 {
			t.Errorf("%s (%s): the checks pass a broken page", v.name, v.tab.name)
			continue
		}
		for _, p := range v.problems {
			if !slices.ContainsFunc(got, func(g string) bool { return strings.Contains(g, p) }) {
				t.Errorf("%s (%s): no problem mentions %q; found %v", v.name, v.tab.name, p, got)
			}
		}
		t.Logf("%s (%s): caught: %v", v.name, v.tab.name, got)
	}

	// Progress that does not move, goes back, is seen once, or disagrees
	// with its bar.
	for _, c := range []struct {
		name string
		rs   []progressReading
		want string
	}{
		{"not_seen", nil, "mid-way in 0 page load(s)"},
		{"seen_once", []progressReading{{1000, 200_000, 0.5}}, "mid-way in 1 page load(s)"},
		{"stuck", []progressReading{{1000, 200_000, 0.5}, {1000, 200_000, 0.5}}, "did not move"},
		{"backwards", []progressReading{{3000, 200_000, 1.5}, {1000, 200_000, 0.5}, {2000, 200_000, 1}}, "went back"},
		{"bar_disagrees", []progressReading{{1000, 200_000, 0.5}, {2000, 200_000, 50}}, "bar at 50.0%"},
		{"wrong_total", []progressReading{{1000, 100_000, 1}, {2000, 100_000, 2}}, "total 100000, want 200000"},
	} {
		got := progressProblems(c.rs, 200_000)
		if !slices.ContainsFunc(got, func(g string) bool { return strings.Contains(g, c.want) }) {
			t.Errorf("progress %s: problems %v, want one with %q", c.name, got, c.want)
		}
	}
	if got := progressProblems([]progressReading{{0, 0, 0}, {0, 200_000, 0}, {1000, 200_000, 0.5}, {5000, 200_000, 2.5}, {200_000, 200_000, 100}}, 200_000); len(got) > 0 {
		t.Errorf("progress that moves: problems %v, want none", got)
	}
}

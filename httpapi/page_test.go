package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/status"
)

const (
	failedDEKID = "dek-payments-03"
	scriptError = `kms:mem unreachable: <script>alert("x")</script>`
)

// seed fills the store through the Store interface with four keys that
// between them show every state of the page: a completed rotation with a
// DEK that could not be unwrapped and a blocked retirement (payments), an
// overdue key with a failing open rotation (billing), a key due for
// rotation (logs) and one due soon (archive).
func seed(t *testing.T, b *bundle) {
	t.Helper()
	ctx := context.Background()
	now := testNow
	day := rekey.Day
	policy := func(period, within, notify time.Duration) rekey.Policy {
		return rekey.Policy{RotationPeriod: period, RotateWithin: within, NotifyWithin: notify, Grace: 7 * day}
	}
	createKey := func(name string, p rekey.Policy, created, expires time.Time) string {
		t.Helper()
		ref, err := b.kms.CreateKey(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		k := rekey.Key{Name: name, Backend: "mem", BackendRef: ref, ActiveVersion: 1, ExpiresAt: expires, Policy: p, CreatedAt: created}
		if err := b.store.CreateKey(ctx, k, rekey.KeyVersion{Key: name, Version: 1, State: rekey.VersionActive, CreatedAt: created}); err != nil {
			t.Fatal(err)
		}
		return ref
	}
	addDEKs := func(key, ref string, version int, ids ...string) []rekey.DEK {
		t.Helper()
		var deks []rekey.DEK
		for _, id := range ids {
			w, err := b.kms.Wrap(ctx, ref, version, []byte(rand.Text()))
			if err != nil {
				t.Fatal(err)
			}
			deks = append(deks, rekey.DEK{ID: id, Key: key, Version: version, Wrapped: w, CreatedAt: now.Add(-30 * day)})
		}
		if err := b.store.InsertDEKs(ctx, deks); err != nil {
			t.Fatal(err)
		}
		return deks
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// payments: rotated v1 → v2 nine days ago; one DEK could not be
	// unwrapped, so v1 is still referenced after its grace: blocked.
	pay := createKey("payments", policy(30*day, 7*day, 14*day), now.Add(-40*day), now.Add(-10*day))
	old := addDEKs("payments", pay, 1, "dek-payments-01", "dek-payments-02", failedDEKID)
	lease, err := b.store.AcquireLease(ctx, "payments", "worker-a", time.Hour, now)
	must(err)
	started := now.Add(-9 * day)
	r := rekey.Rotation{ID: "rot-payments-1", Key: "payments", FromVersion: 1, Reason: rekey.ReasonScheduled, StartedAt: started}
	must(b.store.CreateRotation(ctx, r, lease))
	v2, err := b.kms.RotateKey(ctx, pay)
	must(err)
	r.State, r.ToVersion = rekey.RotationVersionCreated, v2
	must(b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Version: v2, CreatedAt: started}}, lease))
	r.State, r.Total = rekey.RotationRewrapping, 3
	must(b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationVersionCreated}, lease))
	var swaps []rekey.DEKSwap
	for _, d := range old[:2] {
		w, err := b.kms.Rewrap(ctx, pay, 1, d.Wrapped, v2)
		must(err)
		swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: w, NewVersion: v2})
	}
	lost, err := b.store.SwapDEKs(ctx, swaps, lease)
	must(err)
	if len(lost) > 0 {
		t.Fatalf("lost swaps %v", lost)
	}
	r.State, r.Done, r.Failed, r.FailedDEKs = rekey.RotationCommitted, 2, 1, []string{failedDEKID}
	must(b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationRewrapping,
		Activate: &rekey.Activation{Version: v2, ExpiresAt: started.Add(30 * day), Previous: 1, RetireAfter: started.Add(7 * day)}}, lease))
	r.State, r.FinishedAt = rekey.RotationDone, started.Add(4*time.Minute)
	must(b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationCommitted}, lease))
	must(b.store.ReleaseLease(ctx, lease))
	addDEKs("payments", pay, v2, "dek-payments-04", "dek-payments-05")

	// billing: overdue, its rotation stuck on a backend error.
	bill := createKey("billing", policy(90*day, 7*day, 14*day), now.Add(-100*day), now.Add(-2*time.Hour))
	addDEKs("billing", bill, 1, "dek-billing-01", "dek-billing-02", "dek-billing-03", "dek-billing-04", "dek-billing-05")
	lease, err = b.store.AcquireLease(ctx, "billing", "worker-b", time.Hour, now)
	must(err)
	r = rekey.Rotation{ID: "rot-billing-1", Key: "billing", FromVersion: 1, Reason: rekey.ReasonScheduled, StartedAt: now.Add(-time.Hour)}
	must(b.store.CreateRotation(ctx, r, lease))
	v2, err = b.kms.RotateKey(ctx, bill)
	must(err)
	r.State, r.ToVersion = rekey.RotationVersionCreated, v2
	must(b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Version: v2}}, lease))
	r.State, r.Total, r.Done, r.LastError = rekey.RotationRewrapping, 5, 2, scriptError
	must(b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationVersionCreated}, lease))

	// logs: due (inside rotate_within). archive: due soon, destroyed a year
	// after retirement.
	logs := createKey("logs", policy(90*day, 7*day, 14*day), now.Add(-85*day), now.Add(5*day))
	addDEKs("logs", logs, 1, "dek-logs-01")
	p := policy(90*day, 7*day, 14*day)
	p.DestroyAfter = 365 * day
	createKey("archive", p, now.Add(-80*day), now.Add(10*day))
}

// storedWrapped returns every DEK's wrapped bytes as stored now.
func storedWrapped(t *testing.T, b *bundle) [][]byte {
	t.Helper()
	keys, err := b.store.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, k := range keys {
		deks, err := b.store.ListDEKs(context.Background(), rekey.DEKQuery{Key: k.Name})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deks {
			out = append(out, d.Wrapped)
		}
	}
	if len(out) == 0 {
		t.Fatal("no DEKs stored")
	}
	return out
}

// assertNoSecrets fails if body holds any stored wrapped DEK (hex or
// base64, any alphabet) or a backend reference.
func assertNoSecrets(t *testing.T, b *bundle, what, body string) {
	t.Helper()
	for _, w := range storedWrapped(t, b) {
		for _, enc := range []string{
			hex.EncodeToString(w), strings.ToUpper(hex.EncodeToString(w)),
			base64.StdEncoding.EncodeToString(w), base64.RawStdEncoding.EncodeToString(w),
			base64.URLEncoding.EncodeToString(w), base64.RawURLEncoding.EncodeToString(w),
		} {
			// A prefix is enough: html escaping could only change +, / and =.
			if strings.Contains(body, enc[:24]) {
				t.Fatalf("%s contains wrapped DEK bytes %s…", what, enc[:24])
			}
		}
	}
	if strings.Contains(body, "memkms/") {
		t.Fatalf("%s contains a backend reference", what)
	}
}

func TestStatusPage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	seed(t, b)
	r := b.get(t, "/")
	if r.code != http.StatusOK || r.header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("/ = %d %s", r.code, r.header.Get("Content-Type"))
	}
	if path := os.Getenv("REKEY_HTTPAPI_PAGE"); path != "" {
		// REKEY_HTTPAPI_PAGE=/tmp/status.html go test -run TestStatusPage: look at it.
		if err := os.WriteFile(path, []byte(r.body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	body := r.body
	for _, want := range []string{
		"<!DOCTYPE html>",
		`<meta http-equiv="refresh" content="10">`,
		"Action required",
		"1 key overdue", "1 rotation failing", "1 retirement blocked", "1 key due for rotation", "1 key due soon",
		`id="key-payments"`, `id="key-billing"`, `id="key-logs"`, `id="key-archive"`,
		"<h2>payments</h2>", "<h2>billing</h2>", "<h2>logs</h2>", "<h2>archive</h2>",
		"pending_retirement", "retirement blocked:", "<td>v1</td>", "<td>v2</td>",
		"rotation due", "overdue by 2h 0m", "due soon", "on schedule",
		failedDEKID, "rot-payments-1",
		"2 of 5 DEKs re-wrapped (40.0%)",
		"kms:mem unreachable: &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;",
		"destroy after <code>365d</code>",
		`style="width: 40.0%"`,
		`href="/metrics"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", "ZgotmplZ", "http://", "https://", "src="} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	if open, closed := strings.Count(body, "<section"), strings.Count(body, "</section>"); open != 4 || closed != 4 {
		t.Errorf("page has %d <section> and %d </section>, want one card per key", open, closed)
	}
	assertNoSecrets(t, b, "status page", body)
	assertNoSecrets(t, b, "status API", b.get(t, "/api/v1/status").body)
}

func TestStatusPageEmptyAndHealthy(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.get(t, "/")
	if r.code != http.StatusOK || !strings.Contains(r.body, "No root keys yet") {
		t.Fatalf("empty page = %d:\n%s", r.code, r.body)
	}
	ctx := context.Background()
	k := rekey.Key{Name: "calm", Backend: "mem", BackendRef: "memkms/calm", ActiveVersion: 1,
		ExpiresAt: testNow.Add(60 * rekey.Day), Policy: rekey.DefaultPolicy()}
	if err := b.store.CreateKey(ctx, k, rekey.KeyVersion{Version: 1, State: rekey.VersionActive}); err != nil {
		t.Fatal(err)
	}
	r = b.get(t, "/")
	for _, want := range []string{"Healthy", "all 1 key(s) on schedule", "No rotations yet", "33% of the 90d period elapsed"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("healthy page lacks %q", want)
		}
	}
}

func TestStatusPageStoreFailure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.store.Fail = func(op string) error {
		return &rekey.UnreachableError{Service: "store:sqlite", Err: errors.New("database file: permission denied")}
	}
	r := b.get(t, "/")
	if r.code != http.StatusInternalServerError || r.header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("/ with the store down = %d %s", r.code, r.header.Get("Content-Type"))
	}
	for _, want := range []string{"Status unavailable", "permission denied", `content="10"`} {
		if !strings.Contains(r.body, want) {
			t.Errorf("error page lacks %q", want)
		}
	}
}

func TestHumanFormats(t *testing.T) {
	t.Parallel()
	durations := map[time.Duration]string{
		0:                                "0s",
		42 * time.Second:                 "42s",
		5*time.Minute + 3*time.Second:    "5m 3s",
		2*time.Hour + 5*time.Minute:      "2h 5m",
		3*rekey.Day + 4*time.Hour + 1:    "3d 4h",
		-(3*rekey.Day + 4*time.Hour + 1): "3d 4h",
	}
	for d, want := range durations {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%s) = %q, want %q", d, got, want)
		}
	}
	counts := map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"}
	for n, want := range counts {
		if got := formatCount(n); got != want {
			t.Errorf("formatCount(%d) = %q, want %q", n, got, want)
		}
	}
	if got := relative(testNow.Add(-90*time.Second), testNow); got != "1m 30s ago" {
		t.Errorf("relative = %q", got)
	}
	if got := relative(testNow.Add(2*time.Hour), testNow); got != "in 2h 0m" {
		t.Errorf("relative = %q", got)
	}
}

func TestTimeline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expiresIn           time.Duration
		elapsed, window, lv string
	}{
		{60 * rekey.Day, "33.3", "92.2", levelOK},
		{10 * rekey.Day, "88.9", "92.2", levelInfo},
		{3 * rekey.Day, "96.7", "92.2", levelWarn},
		{-rekey.Day, "100.0", "92.2", levelCrit},
	}
	for _, tt := range tests {
		k := rekey.Key{ExpiresAt: testNow.Add(tt.expiresIn), Policy: rekey.DefaultPolicy()}
		view := buildPage(statusOf(k), nil, false).Keys[0]
		tl := view.Timeline
		if tl == nil {
			t.Fatalf("no timeline for %s", tt.expiresIn)
		}
		if tl.ElapsedPct != tt.elapsed || tl.WindowLeft != tt.window || tl.Level != tt.lv {
			t.Errorf("expires in %s: elapsed %s window %s level %s, want %s %s %s",
				tt.expiresIn, tl.ElapsedPct, tl.WindowLeft, tl.Level, tt.elapsed, tt.window, tt.lv)
		}
	}
}

// statusOf is the status of one key with no versions, built without a store.
func statusOf(k rekey.Key) status.Status {
	return status.Status{Time: testNow, Keys: []status.KeyView{{
		Name: "k", ExpiresAt: k.ExpiresAt, Policy: status.NewPolicyView(k.Policy),
		Due: k.Due(testNow), DueSoon: k.DueSoon(testNow), Overdue: k.Overdue(testNow),
	}}}
}

// TestBlockedCompromisedVersion: a compromised version that status reports
// blocked has no retire_after; the page says why it is blocked instead of
// failing on the missing time.
func TestBlockedCompromisedVersion(t *testing.T) {
	t.Parallel()
	retire := testNow.Add(-time.Hour)
	st := status.Status{Time: testNow, Keys: []status.KeyView{{
		Name: "k", ActiveVersion: 3, ExpiresAt: testNow.Add(rekey.Day),
		Versions: []status.VersionView{
			{Version: 1, State: rekey.VersionPendingRetirement, DEKs: 2, RetireAfter: &retire, RetirementBlocked: true},
			{Version: 2, State: rekey.VersionCompromised, DEKs: 1500, RetirementBlocked: true},
			{Version: 3, State: rekey.VersionActive},
		},
	}}}
	d := buildPage(st, nil, false)
	rows := d.Keys[0].Versions // newest first
	if d.Keys[0].Blocked != 2 || !rows[1].Blocked || !rows[2].Blocked || rows[0].Blocked {
		t.Fatalf("blocked rows: %+v", rows)
	}
	if got := rows[1].BlockedText; !strings.Contains(got, "1,500 DEK(s)") || !strings.Contains(got, "disabled at the backend") {
		t.Errorf("compromised v2: %q", got)
	}
	if got := rows[2].BlockedText; !strings.Contains(got, "grace ended 1h 0m ago") || !strings.Contains(got, "2 DEK(s)") {
		t.Errorf("pending v1: %q", got)
	}
}

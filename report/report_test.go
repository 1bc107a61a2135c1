package report_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/report"
	"github.com/rekeyhq/rekey/store/memstore"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the start of the fixture's history; now is the report time.
var (
	t0  = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now = at(70 * rekey.Day)
)

func at(d time.Duration) time.Time { return t0.Add(d) }

func policy(period time.Duration) rekey.Policy {
	return rekey.Policy{RotationPeriod: period, RotateWithin: 7 * rekey.Day, NotifyWithin: 14 * rekey.Day, Grace: 7 * rekey.Day}
}

// backendRefPrefix starts every fixture backend reference; the report must
// never show it.
const backendRefPrefix = "vault://s.ROOT-TOKEN@vault.example/transit/"

func createKey(t *testing.T, s rekey.Store, name string, p rekey.Policy, when time.Time) {
	t.Helper()
	k := rekey.Key{Name: name, Backend: "local", BackendRef: backendRefPrefix + name, ActiveVersion: 1,
		ExpiresAt: when.Add(p.RotationPeriod), Policy: p, CreatedAt: when, UpdatedAt: when}
	v := rekey.KeyVersion{Key: name, Version: 1, State: rekey.VersionActive, CreatedAt: when, ActivatedAt: when, ExpiresAt: when.Add(p.RotationPeriod)}
	ev := rekey.AuditEvent{Time: when, Type: rekey.AuditKeyCreated, Key: name, ToVersion: 1, Status: "success", Actor: "alice",
		Reason: "backend=local rotation_period=" + rekey.FormatDuration(p.RotationPeriod)}
	if err := s.CreateKey(context.Background(), k, v, ev); err != nil {
		t.Fatal(err)
	}
}

func insertDEKs(t *testing.T, s rekey.Store, key string, version int, ids ...string) {
	t.Helper()
	var deks []rekey.DEK
	for _, id := range ids {
		deks = append(deks, rekey.DEK{ID: id, Key: key, Version: version, Wrapped: []byte("WRAPPED-BYTES-" + id)})
	}
	if err := s.InsertDEKs(context.Background(), deks); err != nil {
		t.Fatal(err)
	}
}

// rot describes one rotation of the fixture. A zero commit leaves it open
// in state rewrapping with lastErr.
type rot struct {
	id                    string
	reason                rekey.RotationReason
	note                  string
	start, commit, finish time.Time
	rewrap, failed        []string // DEK ids re-wrapped / that could not be unwrapped
	lastErr               string
}

// rotate drives one rotation through the Store interface, the way the
// engine does, with every time given explicitly.
func rotate(t *testing.T, s rekey.Store, key string, r rot) {
	t.Helper()
	ctx := context.Background()
	k, err := s.GetKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	from, to := k.ActiveVersion, k.ActiveVersion+1
	lease, err := s.AcquireLease(ctx, key, "worker-1", time.Hour, r.start)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.ReleaseLease(ctx, lease); err != nil {
			t.Fatal(err)
		}
	}()
	ev := func(typ rekey.AuditType, when time.Time) rekey.AuditEvent {
		return rekey.AuditEvent{Time: when, Type: typ, Key: key, FromVersion: from, ToVersion: to, RotationID: r.id,
			Actor: "worker-1", Reason: string(r.reason)}
	}
	cur := rekey.Rotation{ID: r.id, Key: key, FromVersion: from, Reason: r.reason, Note: r.note, StartedAt: r.start, UpdatedAt: r.start}
	if err := s.CreateRotation(ctx, cur, lease, ev(rekey.AuditRotationStarted, r.start)); err != nil {
		t.Fatal(err)
	}
	advance := func(u rekey.RotationUpdate) {
		t.Helper()
		if err := s.AdvanceRotation(ctx, u, lease); err != nil {
			t.Fatal(err)
		}
	}
	next := cur
	next.State, next.ToVersion = rekey.RotationVersionCreated, to
	// The new version gets its expires_at from its activation below.
	advance(rekey.RotationUpdate{Rotation: next, FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Key: key, Version: to, CreatedAt: r.start}, Events: []rekey.AuditEvent{ev(rekey.AuditVersionCreated, r.start)}})
	cur = next
	next.State, next.Total = rekey.RotationRewrapping, int64(len(r.rewrap)+len(r.failed))
	advance(rekey.RotationUpdate{Rotation: next, FromState: rekey.RotationVersionCreated})
	cur = next
	for _, id := range r.rewrap {
		d, err := s.GetDEK(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		lost, err := s.SwapDEKs(ctx, []rekey.DEKSwap{{ID: id, OldWrapped: d.Wrapped, NewWrapped: []byte("WRAPPED-BYTES-new-" + id), NewVersion: to}}, lease)
		if err != nil || len(lost) > 0 {
			t.Fatal(err, lost)
		}
	}
	next = cur
	next.Done, next.Failed, next.FailedDEKs, next.LastError = int64(len(r.rewrap)), int64(len(r.failed)), r.failed, r.lastErr
	if r.commit.IsZero() {
		next.UpdatedAt = r.start.Add(time.Minute)
		failed := ev(rekey.AuditRotationFailed, next.UpdatedAt)
		failed.Error = r.lastErr
		advance(rekey.RotationUpdate{Rotation: next, FromState: rekey.RotationRewrapping, Events: []rekey.AuditEvent{failed}})
		return
	}
	next.State, next.UpdatedAt = rekey.RotationCommitted, r.commit
	advance(rekey.RotationUpdate{Rotation: next, FromState: rekey.RotationRewrapping,
		Activate: &rekey.Activation{Version: to, ExpiresAt: r.commit.Add(k.Policy.RotationPeriod), Previous: from, RetireAfter: r.commit.Add(k.Policy.Grace)},
		Events:   []rekey.AuditEvent{ev(rekey.AuditRotationCommitted, r.commit), ev(rekey.AuditVersionPendingRetirement, r.commit)}})
	cur = next
	next.State, next.UpdatedAt, next.FinishedAt = rekey.RotationDone, r.finish, r.finish
	advance(rekey.RotationUpdate{Rotation: next, FromState: rekey.RotationCommitted, Events: []rekey.AuditEvent{ev(rekey.AuditRotationCompleted, r.finish)}})
}

func retire(t *testing.T, s rekey.Store, key string, version int, when time.Time) {
	t.Helper()
	ev := rekey.AuditEvent{Time: when, Type: rekey.AuditVersionRetired, Key: key, FromVersion: version, Status: "retired", Actor: "worker-1"}
	if err := s.ChangeVersionState(context.Background(), rekey.VersionChange{Key: key, Version: version,
		From: []rekey.VersionState{rekey.VersionPendingRetirement}, To: rekey.VersionRetired, RequireUnused: true, At: when}, nil, ev); err != nil {
		t.Fatal(err)
	}
}

// setup builds the fixture: two keys, three rotations.
//
//   - payments (30d period): created t0; rot-pay-1 scheduled, committed
//     at 23d1h, 6d23h before v1's period ends (on time); v1 retired at
//     31d; rot-pay-2 scheduled, v2 active since 23d1h so its deadline is
//     53d1h, committed at 55d4h: LATE by 2d3h. One DEK (dek-pay-b) could
//     not be unwrapped and keeps v2 from retiring.
//   - ledger (90d period): created 1d; rot-led-1 manual at 40d; v1
//     retired at 48d.
func setup(t *testing.T) *memstore.Store {
	t.Helper()
	s := memstore.New()
	s.Now = func() time.Time { return now }
	createKey(t, s, "payments", policy(30*rekey.Day), t0)
	createKey(t, s, "ledger", policy(90*rekey.Day), at(rekey.Day))
	rotate(t, s, "payments", rot{id: "rot-pay-1", reason: rekey.ReasonScheduled,
		start: at(23 * rekey.Day), commit: at(23*rekey.Day + time.Hour), finish: at(23*rekey.Day + time.Hour + 5*time.Minute)})
	insertDEKs(t, s, "payments", 2, "dek-pay-a", "dek-pay-b")
	retire(t, s, "payments", 1, at(31*rekey.Day))
	rotate(t, s, "ledger", rot{id: "rot-led-1", reason: rekey.ReasonManual, note: "quarterly key ceremony",
		start: at(40 * rekey.Day), commit: at(40*rekey.Day + 10*time.Minute), finish: at(40*rekey.Day + 20*time.Minute)})
	retire(t, s, "ledger", 1, at(48*rekey.Day))
	rotate(t, s, "payments", rot{id: "rot-pay-2", reason: rekey.ReasonScheduled,
		start: at(55 * rekey.Day), commit: at(55*rekey.Day + 4*time.Hour), finish: at(55*rekey.Day + 4*time.Hour + 30*time.Minute),
		rewrap: []string{"dek-pay-a"}, failed: []string{"dek-pay-b"}})
	return s
}

// validChain is what the audit package reports for an intact trail with a
// checkpoint at its head.
func validChain(t *testing.T, s *memstore.Store) report.ChainCheck {
	t.Helper()
	ctx := context.Background()
	evs, err := s.ListAudit(ctx, rekey.AuditQuery{Limit: 100000})
	if err != nil || len(evs) == 0 {
		t.Fatal(err, len(evs))
	}
	head := evs[len(evs)-1]
	if last, err := s.LastAuditCheckpoint(ctx); err == nil && last.Seq == head.Seq {
		return report.ChainCheck{Valid: true, Events: int64(len(evs)), Checkpoints: 1, LastSeq: head.Seq, HeadHash: head.Hash, CheckedAt: now}
	}
	if err := s.AppendAuditCheckpoint(ctx, rekey.AuditCheckpoint{Seq: head.Seq, Hash: head.Hash, MAC: []byte("mac"), KeyID: "local/audit.checkpoint", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	return report.ChainCheck{Valid: true, Events: int64(len(evs)), Checkpoints: 1, LastSeq: head.Seq, HeadHash: head.Hash, CheckedAt: now}
}

type rendered struct {
	rep            *report.Report
	md, js, html   string
	decoded        jsonReport
	all            string // the three, for "never appears" checks
	rawJSONDecoded map[string]any
}

// jsonReport is what a consumer of `rekey report --format json` reads.
type jsonReport struct {
	GeneratedAt string `json:"generated_at"`
	Since       string `json:"since"`
	Until       string `json:"until"`
	Summary     struct {
		Text          string   `json:"text"`
		Keys          int      `json:"keys"`
		Rotations     int      `json:"rotations"`
		OnTime        int      `json:"on_time"`
		Late          int      `json:"late"`
		Manual        int      `json:"manual"`
		LateRotations []string `json:"late_rotations"`
		Retirements   int      `json:"retirements"`
		OpenProblems  int      `json:"open_problems"`
		ChainValid    bool     `json:"audit_chain_valid"`
	} `json:"summary"`
	Problems []struct {
		Kind    string   `json:"kind"`
		Key     string   `json:"key"`
		Version int      `json:"version"`
		DEKs    []string `json:"dek_ids"`
		Text    string   `json:"text"`
	} `json:"open_problems"`
	Chain struct {
		Status   string `json:"status"`
		Valid    bool   `json:"valid"`
		FirstBad string `json:"first_bad"`
		Text     string `json:"text"`
	} `json:"audit_chain"`
	Keys []struct {
		Name      string `json:"name"`
		Backend   string `json:"backend"`
		Policy    map[string]any
		Rotations []struct {
			ID            string   `json:"id"`
			Reason        string   `json:"reason"`
			StartedAt     string   `json:"started_at"`
			CommittedAt   string   `json:"committed_at"`
			Deadline      string   `json:"deadline"`
			Timeliness    string   `json:"timeliness"`
			Late          bool     `json:"late"`
			LateBySeconds float64  `json:"late_by_seconds"`
			LateBy        string   `json:"late_by"`
			DurationSecs  float64  `json:"duration_seconds"`
			Duration      string   `json:"duration"`
			DEKsRewrapped int64    `json:"deks_rewrapped"`
			FailedDEKs    []string `json:"failed_dek_ids"`
			LastError     string   `json:"last_error"`
		} `json:"rotations"`
		Retirements []struct {
			Time    string `json:"time"`
			Type    string `json:"type"`
			Version int    `json:"version"`
			Actor   string `json:"actor"`
		} `json:"retirements"`
	} `json:"keys"`
}

func render(t *testing.T, s rekey.Store, since time.Time, chain report.ChainCheck) rendered {
	t.Helper()
	rep, err := report.Build(context.Background(), s, since, now, chain)
	if err != nil {
		t.Fatal(err)
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
	out := rendered{rep: rep, md: md.String(), js: js.String(), html: html.String()}
	out.all = out.md + out.js + out.html
	if err := json.Unmarshal(js.Bytes(), &out.decoded); err != nil {
		t.Fatalf("json does not decode: %v\n%s", err, js.String())
	}
	if err := json.Unmarshal(js.Bytes(), &out.rawJSONDecoded); err != nil {
		t.Fatal(err)
	}
	return out
}

// mdRow returns the markdown table row that mentions id.
func mdRow(t *testing.T, md, id string) string {
	t.Helper()
	for line := range strings.Lines(md) {
		if strings.HasPrefix(line, "| `"+id+"`") {
			return line
		}
	}
	t.Fatalf("no table row for %s in\n%s", id, md)
	return ""
}

func TestReport(t *testing.T) {
	t.Parallel()
	s := setup(t)
	r := render(t, s, time.Time{}, validChain(t, s))

	t.Run("markdown", func(t *testing.T) {
		md := r.md
		for _, want := range []string{"## Key payments", "## Key ledger", "1 LATE", "The audit trail of ", "the last checkpoint (seq "} {
			if !strings.Contains(md, want) {
				t.Errorf("markdown lacks %q", want)
			}
		}
		rows := regexp.MustCompile("(?m)^\\| `rot-[a-z0-9-]+` \\|").FindAllString(md, -1)
		if len(rows) != 3 {
			t.Errorf("markdown lists %d rotation rows, want 3: %q", len(rows), rows)
		}
		if n := strings.Count(md, "LATE by 2d3h"); n != 2 { // the row, and the warning under the summary
			t.Errorf("markdown says LATE by %d times, want 2 (row + summary warning)", n)
		}
		if row := mdRow(t, md, "rot-pay-2"); !strings.Contains(row, "**LATE by 2d3h**") {
			t.Errorf("late rotation's row does not say LATE by 2d3h: %s", row)
		}
		if row := mdRow(t, md, "rot-pay-1"); !strings.Contains(row, "on time (6d23h to spare)") || strings.Contains(row, "LATE") {
			t.Errorf("on-time rotation's row: %s", row)
		}
		if row := mdRow(t, md, "rot-led-1"); !strings.Contains(row, "manual: not judged") || strings.Contains(row, "LATE") {
			t.Errorf("manual rotation's row: %s", row)
		}
		if !strings.Contains(md, "Retirement blocked:") || !strings.Contains(md, "dek-pay-b") {
			t.Errorf("markdown does not report the blocked retirement and the failed DEK")
		}
	})

	t.Run("json", func(t *testing.T) {
		d := r.decoded
		sum := d.Summary
		if sum.Keys != 2 || sum.Rotations != 3 || sum.OnTime != 1 || sum.Late != 1 || sum.Manual != 1 || sum.Retirements != 2 || !sum.ChainValid {
			t.Errorf("summary = %+v", sum)
		}
		if len(sum.LateRotations) != 1 || sum.LateRotations[0] != "rot-pay-2" {
			t.Errorf("late_rotations = %v", sum.LateRotations)
		}
		if d.Chain.Status != report.ChainValid || !d.Chain.Valid {
			t.Errorf("audit_chain = %+v", d.Chain)
		}
		var late int
		for _, k := range d.Keys {
			for _, rot := range k.Rotations {
				if rot.Late {
					late++
					want := (2*rekey.Day + 3*time.Hour).Seconds()
					if rot.ID != "rot-pay-2" || rot.LateBySeconds != want || rot.LateBy != "2d3h" || rot.Timeliness != report.Late {
						t.Errorf("late rotation = %+v, want rot-pay-2 late by %vs", rot, want)
					}
					if rot.Deadline != "2025-02-23T01:00:00Z" || rot.CommittedAt != "2025-02-25T04:00:00Z" {
						t.Errorf("deadline %s committed %s", rot.Deadline, rot.CommittedAt)
					}
				}
				if rot.ID == "rot-pay-2" && (len(rot.FailedDEKs) != 1 || rot.DEKsRewrapped != 1 || rot.Duration != "4h30m" || rot.DurationSecs != 16200) {
					t.Errorf("rot-pay-2 = %+v", rot)
				}
			}
		}
		if late != 1 {
			t.Errorf("%d rotations flagged late, want 1", late)
		}
		kinds := map[string]bool{}
		for _, p := range d.Problems {
			kinds[p.Kind] = true
		}
		if len(d.Problems) != 2 || !kinds[report.ProblemRetirementBlocked] || !kinds[report.ProblemDEKUnwrapFailed] || sum.OpenProblems != 2 {
			t.Errorf("problems = %+v", d.Problems)
		}
		// Times are RFC 3339 in UTC.
		for _, s := range []string{d.GeneratedAt, d.Until, d.Keys[0].Rotations[0].StartedAt} {
			if tm, err := time.Parse(time.RFC3339, s); err != nil || !strings.HasSuffix(s, "Z") || tm.Location() != time.UTC {
				t.Errorf("time %q is not RFC 3339 UTC", s)
			}
		}
		if _, ok := r.rawJSONDecoded["since"]; ok {
			t.Errorf("since is present for a report of all history")
		}
		pol := d.Keys[1].Policy
		if pol["rotation_period"] != "30d" || pol["rotation_period_seconds"] != float64(30*24*3600) || pol["destroy_after"] != "never" {
			t.Errorf("policy of %s = %v", d.Keys[1].Name, pol)
		}
	})

	t.Run("html", func(t *testing.T) {
		h := r.html
		if !strings.HasPrefix(h, "<!DOCTYPE html>") || !strings.Contains(h, "</html>") {
			t.Fatalf("not an html page:\n%s", h)
		}
		for _, want := range []string{"Key payments", "Key ledger", `<strong class="late">LATE by 2d3h</strong>`, "@media print", "1 LATE"} {
			if !strings.Contains(h, want) {
				t.Errorf("html lacks %q", want)
			}
		}
		for _, banned := range []string{"<script", "<link", "src=", "href=", "@import", "url("} {
			if strings.Contains(strings.ToLower(h), banned) {
				t.Errorf("html is not self-contained: it contains %q", banned)
			}
		}
		checkBalanced(t, h)
	})

	t.Run("no key material", func(t *testing.T) {
		for _, banned := range []string{"WRAPPED-BYTES", "ROOT-TOKEN", "vault://", "backend_ref"} {
			if strings.Contains(r.all, banned) {
				t.Errorf("the report contains %q", banned)
			}
		}
	})
}

// checkBalanced checks that the elements the template opens are closed, in
// the absence of an HTML parser.
func checkBalanced(t *testing.T, h string) {
	t.Helper()
	for _, tag := range []string{"html", "head", "body", "style", "table", "thead", "tbody", "tr", "td", "th", "ul", "li", "p", "h1", "h2", "h3", "strong", "code", "div", "span"} {
		open := len(regexp.MustCompile(`<`+tag+`[ >]`).FindAllString(h, -1))
		closed := strings.Count(h, "</"+tag+">")
		if open != closed {
			t.Errorf("html: %d <%s> but %d </%s>", open, tag, closed, tag)
		}
	}
}

func TestEscapingAndRedaction(t *testing.T) {
	t.Parallel()
	s := setup(t)
	evil := "<script>alert(1)</script> | **bold** [x](http://e) backend https://svc:hunter2@kms.example/v1 said no\nsecond line"
	rotate(t, s, "ledger", rot{id: "rot-led-2", reason: rekey.ReasonScheduled, start: at(69 * rekey.Day), lastErr: evil})
	r := render(t, s, time.Time{}, validChain(t, s))
	if strings.Contains(r.html, "<script") {
		t.Errorf("html carries an unescaped <script>")
	}
	if !strings.Contains(r.html, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("html does not show the escaped error text")
	}
	if regexp.MustCompile(`(^|[^\\])<script`).MatchString(r.md) || !strings.Contains(r.md, `\<script\>`) {
		t.Errorf("markdown does not escape the error text")
	}
	if strings.Contains(r.all, "hunter2") || !strings.Contains(r.md, "https://REDACTED@kms.example") {
		t.Errorf("URL credentials in an error are not redacted")
	}
	row := mdRow(t, r.md, "rot-led-2")
	if strings.Count(row, "|") != 12 {
		t.Errorf("the open rotation's row has a broken cell count: %s", row)
	}
	if !strings.Contains(row, "in progress") || !strings.Contains(row, "open (rewrapping)") {
		t.Errorf("open rotation row = %s", row)
	}
	var failing bool
	for _, p := range r.decoded.Problems {
		if p.Kind == report.ProblemRotationFailing {
			failing = true
			if strings.ContainsAny(p.Text, "\n") {
				t.Errorf("problem text keeps a newline: %q", p.Text)
			}
		}
	}
	if !failing {
		t.Errorf("the failing open rotation is not an open problem: %+v", r.decoded.Problems)
	}
	if r.decoded.Summary.Rotations != 4 || r.decoded.Summary.Late != 1 {
		t.Errorf("summary = %+v", r.decoded.Summary)
	}
}

func TestChainFailure(t *testing.T) {
	t.Parallel()
	s := setup(t)
	chain := validChain(t, s)
	chain.Valid = false
	chain.FirstBad = "event seq 7 (rotation.committed) was edited: its hash does not recompute"
	r := render(t, s, time.Time{}, chain)
	for name, out := range map[string]string{"markdown": r.md, "json": r.js, "html": r.html} {
		if !strings.Contains(out, "does NOT verify") || !strings.Contains(out, "event seq 7 (rotation.committed) was edited") {
			t.Errorf("%s does not report the failed chain check", name)
		}
		if !strings.Contains(out, "INVALID") {
			t.Errorf("%s does not flag the chain INVALID", name)
		}
	}
	d := r.decoded
	if d.Chain.Valid || d.Chain.Status != report.ChainInvalid || d.Summary.ChainValid {
		t.Errorf("json chain = %+v, summary valid %v", d.Chain, d.Summary.ChainValid)
	}
	if len(d.Problems) == 0 || d.Problems[0].Kind != report.ProblemChainInvalid {
		t.Errorf("the invalid chain is not the first open problem: %+v", d.Problems)
	}
	if strings.Contains(r.md, "verifies:") {
		t.Errorf("markdown says the chain verifies")
	}
}

func TestChainNotChecked(t *testing.T) {
	t.Parallel()
	r := render(t, setup(t), time.Time{}, report.ChainCheck{})
	if r.decoded.Chain.Status != report.ChainNotChecked || r.decoded.Summary.ChainValid {
		t.Errorf("chain = %+v", r.decoded.Chain)
	}
	if !strings.Contains(r.md, "NOT VERIFIED") {
		t.Errorf("markdown does not say the trail was not verified")
	}
}

func TestChainCaveats(t *testing.T) {
	t.Parallel()
	s := setup(t)
	chain := validChain(t, s)
	chain.Unverifiable = "checkpoint MACs were not checked: no backend key was given"
	r := render(t, s, time.Time{}, chain)
	if r.decoded.Chain.Status != report.ChainValidCaveats || !strings.Contains(r.md, "Not verified: checkpoint MACs were not checked") ||
		strings.Contains(r.md, "carries a valid MAC") {
		t.Errorf("caveat not reported:\n%s", r.decoded.Chain.Text)
	}
}

func TestSince(t *testing.T) {
	t.Parallel()
	s := setup(t)
	since := at(30 * rekey.Day)
	r := render(t, s, since, validChain(t, s))
	if strings.Contains(r.all, "rot-pay-1") {
		t.Errorf("a rotation started before --since is reported")
	}
	for _, id := range []string{"rot-pay-2", "rot-led-1"} {
		mdRow(t, r.md, id)
	}
	if r.decoded.Since != "2025-01-31T00:00:00Z" || r.decoded.Summary.Rotations != 2 || r.decoded.Summary.OnTime != 0 || r.decoded.Summary.Late != 1 {
		t.Errorf("since %s summary %+v", r.decoded.Since, r.decoded.Summary)
	}
	// The retirements at 31d and 48d are in the period.
	if r.decoded.Summary.Retirements != 2 {
		t.Errorf("retirements = %d, want 2", r.decoded.Summary.Retirements)
	}
	r = render(t, s, at(50*rekey.Day), validChain(t, s))
	if r.decoded.Summary.Retirements != 0 || r.decoded.Summary.Rotations != 1 {
		t.Errorf("since 50d: summary %+v", r.decoded.Summary)
	}
}

// TestTimeliness covers the lateness rules one case at a time.
func TestTimeliness(t *testing.T) {
	t.Parallel()
	day := rekey.Day
	tests := []struct {
		name string
		// build runs after key k (30d period) is created at t0.
		build      func(t *testing.T, s *memstore.Store)
		wantID     string
		want       string
		wantLateBy time.Duration
	}{
		{"committed exactly at the deadline is on time", func(t *testing.T, s *memstore.Store) {
			rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonScheduled, start: at(29 * day), commit: at(30 * day), finish: at(30 * day)})
		}, "r", report.OnTime, 0},
		{"one second late is late", func(t *testing.T, s *memstore.Store) {
			rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonScheduled, start: at(29 * day), commit: at(30*day + time.Second), finish: at(31 * day)})
		}, "r", report.Late, time.Second},
		{"manual after the deadline is not late", func(t *testing.T, s *memstore.Store) {
			rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonManual, start: at(40 * day), commit: at(40 * day), finish: at(40 * day)})
		}, "r", report.Manual, 0},
		{"emergency is not late", func(t *testing.T, s *memstore.Store) {
			rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonEmergency, start: at(40 * day), commit: at(40 * day), finish: at(40 * day)})
		}, "r", report.Emergency, 0},
		{"open past the deadline is late so far", func(t *testing.T, s *memstore.Store) {
			rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonScheduled, start: at(25 * day), lastErr: "backend unreachable"})
		}, "r", report.Late, now.Sub(at(30 * day))},
		{"the period in force at the start counts, not a later policy change", func(t *testing.T, s *memstore.Store) {
			rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonScheduled, start: at(29 * day), commit: at(31 * day), finish: at(31 * day)})
			// After the rotation: 30d -> 60d. v1's expires_at stays at 30d
			// (it is no longer active); the current policy would put the
			// deadline at v1 + 60d and the rotation on time.
			k, _ := s.GetKey(context.Background(), "k")
			p := policy(60 * day)
			ev := rekey.AuditEvent{Time: at(35 * day), Type: rekey.AuditPolicyChanged, Key: "k", Actor: "config", Reason: "rotation_period=30d->60d"}
			if err := s.UpdateKeyPolicy(context.Background(), "k", p, k.ExpiresAt.Add(30*day), ev); err != nil {
				t.Fatal(err)
			}
		}, "r", report.Late, day},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := memstore.New()
			createKey(t, s, "k", policy(30*rekey.Day), t0)
			tt.build(t, s)
			rep, err := report.Build(context.Background(), s, time.Time{}, now, report.ChainCheck{})
			if err != nil {
				t.Fatal(err)
			}
			var got *report.Rotation
			for i, r := range rep.Keys[0].Rotations {
				if r.ID == tt.wantID {
					got = &rep.Keys[0].Rotations[i]
				}
			}
			if got == nil {
				t.Fatalf("rotation %s not in the report", tt.wantID)
			}
			if got.Timeliness != tt.want || got.Late != (tt.want == report.Late) || got.LateBySeconds != tt.wantLateBy.Seconds() {
				t.Errorf("timeliness %s late %v by %vs (%s), want %s by %v; deadline basis: %s",
					got.Timeliness, got.Late, got.LateBySeconds, got.LateBy, tt.want, tt.wantLateBy, got.DeadlineBasis)
			}
		})
	}
}

// TestDeadlineFallbackForOldVersions: a version written before
// KeyVersion.ExpiresAt existed has none; its deadline is activated_at + the
// key's current rotation_period, and the basis says so.
func TestDeadlineFallbackForOldVersions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	day := rekey.Day
	s := memstore.New()
	p := policy(30 * day)
	k := rekey.Key{Name: "k", Backend: "local", BackendRef: "ref", ActiveVersion: 1, ExpiresAt: t0.Add(30 * day), Policy: p, CreatedAt: t0, UpdatedAt: t0}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Key: "k", Version: 1, State: rekey.VersionActive, CreatedAt: t0, ActivatedAt: at(day)}); err != nil {
		t.Fatal(err)
	}
	rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonScheduled, start: at(30 * day), commit: at(32 * day), finish: at(32 * day)})
	judge := func() report.Rotation {
		t.Helper()
		rep, err := report.Build(ctx, oldVersions{s}, time.Time{}, now, report.ChainCheck{})
		if err != nil {
			t.Fatal(err)
		}
		return rep.Keys[0].Rotations[0]
	}
	r := judge()
	if !r.Deadline.Equal(at(31*day)) || r.Timeliness != report.Late || r.LateBySeconds != day.Seconds() ||
		!strings.Contains(r.DeadlineBasis, "rotation_period 30d (the key's current policy: v1 records no expires_at)") {
		t.Errorf("deadline %s basis %q: %s by %vs; want activated_at + 30d, late by 1d", r.Deadline, r.DeadlineBasis, r.Timeliness, r.LateBySeconds)
	}
	// The fallback reads the current policy, so a later change moves it
	// (which expires_at on the version prevents).
	if err := s.UpdateKeyPolicy(ctx, "k", policy(60*day), at(92*day)); err != nil {
		t.Fatal(err)
	}
	if r := judge(); !r.Deadline.Equal(at(61*day)) || r.Timeliness != report.OnTime {
		t.Errorf("after 30d -> 60d: deadline %s, %s; want activated_at + 60d, on time", r.Deadline, r.Timeliness)
	}
}

// oldVersions is a store whose versions carry no ExpiresAt, as an old
// build wrote them (today's stores set it on create and activation).
type oldVersions struct{ *memstore.Store }

func (o oldVersions) ListVersions(ctx context.Context, key string) ([]rekey.KeyVersion, error) {
	vs, err := o.Store.ListVersions(ctx, key)
	for i := range vs {
		vs[i].ExpiresAt = time.Time{}
	}
	return vs, err
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	s := setup(t)
	if _, err := report.Build(context.Background(), s, now.Add(time.Hour), now, report.ChainCheck{}); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("since after now: err = %v", err)
	}
	boom := &rekey.UnreachableError{Service: "store:memory", Err: errors.New("down")}
	s.Fail = func(op string) error {
		if op == "ListAudit" {
			return boom
		}
		return nil
	}
	if _, err := report.Build(context.Background(), s, time.Time{}, now, report.ChainCheck{}); !errors.Is(err, boom) {
		t.Errorf("store failure: err = %v", err)
	}
}

func TestEmptyStore(t *testing.T) {
	t.Parallel()
	r := render(t, memstore.New(), time.Time{}, report.ChainCheck{Valid: true, CheckedAt: now})
	if r.decoded.Summary.Keys != 0 || r.decoded.Keys == nil || !strings.Contains(r.md, "0 root keys, 0 rotations") {
		t.Errorf("empty report: %+v\n%s", r.decoded.Summary, r.md)
	}
}

// TestGolden pins the three renderings of the fixture. Run with -update to
// rewrite testdata after an intended change, and read the diff.
func TestGolden(t *testing.T) {
	t.Parallel()
	s := setup(t)
	r := render(t, s, time.Time{}, validChain(t, s))
	for name, got := range map[string]string{"report.md": r.md, "report.json": r.js, "report.html": r.html} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./report -run TestGolden -update)", err)
		}
		if got != string(want) {
			t.Errorf("%s differs from %s; run with -update if the change is intended", name, path)
		}
	}
}

func TestProblems(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := memstore.New()
	createKey(t, s, "k", policy(30*rekey.Day), t0)
	insertDEKs(t, s, "k", 1, "dek-1", "dek-2")
	ev := rekey.AuditEvent{Time: at(65 * rekey.Day), Type: rekey.AuditVersionCompromised, Key: "k", FromVersion: 1, Actor: "bob", Reason: "emergency"}
	if err := s.ChangeVersionState(ctx, rekey.VersionChange{Key: "k", Version: 1, From: []rekey.VersionState{rekey.VersionActive},
		To: rekey.VersionCompromised, At: at(65 * rekey.Day)}, nil, ev); err != nil {
		t.Fatal(err)
	}
	r := render(t, s, time.Time{}, report.ChainCheck{Valid: true, Events: 2, CheckedAt: now})
	got := map[string]string{}
	for _, p := range r.decoded.Problems {
		got[p.Kind] = p.Text
	}
	if len(got) != 2 || !strings.Contains(got[report.ProblemKeyOverdue], "ended 40d ago") ||
		!strings.Contains(got[report.ProblemCompromisedInUse], "2 DEKs still reference it") {
		t.Errorf("problems = %v", got)
	}
	if !strings.Contains(r.md, "**OVERDUE**") || !strings.Contains(r.md, "| v1 | **compromised** | 2 |") {
		t.Errorf("markdown does not flag the overdue key and the compromised version:\n%s", r.md)
	}
	// The compromise is in the period's retirements, with who did it.
	if k := r.decoded.Keys[0]; len(k.Retirements) != 1 || k.Retirements[0].Type != "version.compromised" || k.Retirements[0].Actor != "bob" {
		t.Errorf("retirements = %+v", k.Retirements)
	}
	// No checkpoint: the chain is valid with a caveat, and the text says why.
	if r.decoded.Chain.Status != report.ChainValidCaveats || !strings.Contains(r.decoded.Chain.Text, "There is no checkpoint yet") {
		t.Errorf("chain = %+v", r.decoded.Chain)
	}
}

// TestRetirementBlockedIsDecideVersion: the report flags a version blocked
// exactly when rekey.DecideVersion does (as status and the metric do): a
// compromised version that is no longer active and still referenced, with
// no rotation re-wrapping it, is blocked, and reported once, as in use.
func TestRetirementBlockedIsDecideVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	day := rekey.Day
	s := memstore.New()
	createKey(t, s, "k", policy(30*day), t0)
	insertDEKs(t, s, "k", 1, "dek-1", "dek-2")
	rotate(t, s, "k", rot{id: "r", reason: rekey.ReasonScheduled, start: at(29 * day), commit: at(29 * day), finish: at(29 * day),
		failed: []string{"dek-1", "dek-2"}})
	build := func() report.Key {
		t.Helper()
		rep, err := report.Build(ctx, s, time.Time{}, now, report.ChainCheck{Valid: true, CheckedAt: now})
		if err != nil {
			t.Fatal(err)
		}
		return rep.Keys[0]
	}
	// v1: pending_retirement, grace over (36d), 2 DEKs left, no rotation.
	if k := build(); !k.Versions[0].RetirementBlocked || k.Versions[1].RetirementBlocked {
		t.Errorf("pending past grace: %+v", k.Versions)
	}
	ev := rekey.AuditEvent{Time: at(60 * day), Type: rekey.AuditVersionCompromised, Key: "k", FromVersion: 1, Actor: "bob"}
	if err := s.ChangeVersionState(ctx, rekey.VersionChange{Key: "k", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement},
		To: rekey.VersionCompromised, At: at(60 * day)}, nil, ev); err != nil {
		t.Fatal(err)
	}
	r := render(t, s, time.Time{}, report.ChainCheck{Valid: true, CheckedAt: now})
	kinds := map[string]int{}
	for _, p := range r.decoded.Problems {
		kinds[p.Kind]++
	}
	if kinds[report.ProblemCompromisedInUse] != 1 || kinds[report.ProblemRetirementBlocked] != 0 {
		t.Errorf("problems by kind = %v, want one compromised_version_in_use and no retirement_blocked", kinds)
	}
	if k := build(); !k.Versions[0].RetirementBlocked {
		t.Errorf("compromised with DEKs, no rotation: not blocked: %+v", k.Versions[0])
	}
}

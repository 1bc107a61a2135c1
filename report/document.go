package report

import (
	"fmt"
	"strings"
	"time"
)

// The Markdown and HTML renderers draw from one document, built here from
// the Report, so that the two cannot say different things. The document
// holds plain text only; each renderer escapes it for its format.

// span is a run of text; Strong and Code mark it up.
type span struct {
	Text   string
	Strong bool
	Code   bool
	Class  string // HTML class: "late", "ok", "muted"
}

// cell is one table cell.
type cell struct {
	Spans []span
	Class string
}

type table struct {
	Head []string
	Rows [][]cell
}

// block is one of: a heading (Level 2 or 3), a paragraph, a warning, a
// bullet list, or a table.
type block struct {
	Level   int
	Heading string
	ID      string // anchor of a heading
	Para    []span
	Warn    bool // Para is a warning
	List    [][]span
	Table   *table
}

type document struct {
	Title  string
	Blocks []block
}

func txt(s string) span    { return span{Text: s} }
func strong(s string) span { return span{Text: s, Strong: true} }
func code(s string) span   { return span{Text: s, Code: true} }

func textCell(s string) cell { return cell{Spans: []span{txt(s)}} }

// tableTime is how times read in tables (the column header says UTC).
const tableTime = "2006-01-02 15:04"

func timeCell(t time.Time) cell {
	if t.IsZero() {
		return textCell("—")
	}
	return textCell(t.UTC().Format(tableTime))
}

func (r *Report) document() document {
	d := document{Title: "rekey compliance report"}
	add := func(b block) { d.Blocks = append(d.Blocks, b) }
	heading := func(level int, text, id string) { add(block{Level: level, Heading: text, ID: id}) }

	add(block{Para: []span{txt("Generated " + r.GeneratedAt.Format(textTime) + " from the rekey store and its audit trail. All times are UTC.")}})

	heading(2, "Summary", "summary")
	add(block{Para: []span{txt(r.Summary.Text)}})
	if r.Summary.Late > 0 {
		add(block{Warn: true, Para: []span{strong(fmt.Sprintf("%s LATE.", plural(int64(r.Summary.Late), "rotation was")))},
			List: r.lateItems()})
	}
	chainCell := cell{Spans: []span{strong(strings.ToUpper(strings.ReplaceAll(r.Chain.Status, "_", " ")))}, Class: "ok"}
	if !r.Chain.Valid {
		chainCell.Class = "late"
	}
	lateCell := textCell(fmt.Sprint(r.Summary.Late))
	if r.Summary.Late > 0 {
		lateCell = cell{Spans: []span{strong(fmt.Sprint(r.Summary.Late))}, Class: "late"}
	}
	problemsCell := textCell(fmt.Sprint(r.Summary.OpenProblems))
	if r.Summary.OpenProblems > 0 {
		problemsCell = cell{Spans: []span{strong(fmt.Sprint(r.Summary.OpenProblems))}, Class: "late"}
	}
	add(block{Table: &table{
		Head: []string{"Keys", "Rotations", "On time", "LATE", "Manual", "Emergency", "In progress", "Retirements", "Open problems", "Audit trail"},
		Rows: [][]cell{{
			textCell(fmt.Sprint(r.Summary.Keys)), textCell(fmt.Sprint(r.Summary.Rotations)), textCell(fmt.Sprint(r.Summary.OnTime)),
			lateCell, textCell(fmt.Sprint(r.Summary.Manual)), textCell(fmt.Sprint(r.Summary.Emergency)),
			textCell(fmt.Sprint(r.Summary.InProgress)), textCell(fmt.Sprint(r.Summary.Retirements)), problemsCell, chainCell,
		}},
	}})

	heading(2, fmt.Sprintf("Open problems (%d)", len(r.Problems)), "problems")
	if len(r.Problems) == 0 {
		add(block{Para: []span{txt("None: no key is overdue, no rotation is failing, no retirement is blocked, no DEK is stuck and the audit trail verifies.")}})
	} else {
		var items [][]span
		for _, p := range r.Problems {
			items = append(items, []span{strong(problemTitle(p.Kind) + ":"), txt(" " + p.Text)})
		}
		add(block{List: items})
	}

	heading(2, "Audit trail", "audit-trail")
	add(block{Para: []span{txt(r.Chain.Text)}, Warn: !r.Chain.Valid})
	add(block{Table: &table{
		Head: []string{"Result", "Events checked", "Checkpoints checked", "Last event (seq)", "Last checkpoint (seq)", "Head hash", "Checked at (UTC)"},
		Rows: [][]cell{{chainCell, textCell(fmt.Sprint(r.Chain.Events)), textCell(fmt.Sprint(r.Chain.Checkpoints)),
			textCell(fmt.Sprint(r.Chain.LastSeq)), textCell(seqText(r.Chain.LastCheckpointSeq)),
			cell{Spans: []span{code(orDash(r.Chain.HeadHash))}}, timeCell(r.Chain.CheckedAt)}},
	}})

	for _, k := range r.Keys {
		r.keyBlocks(k, add)
	}

	heading(2, "How to read this report", "glossary")
	add(block{List: [][]span{
		{strong("Period of a version:"), txt(" a key version is the active one (every new DEK is wrapped under it) from when it becomes active until activated + rotation_period.")},
		{strong("Deadline:"), txt(" the end of the period of the version a rotation moves away from: that version's activation time plus the rotation_period in force when the rotation started (the key's expires_at at that moment). Each rotation's basis is listed under its table.")},
		{strong("On time / LATE:"), txt(" a scheduled rotation is on time when it committed (the new version became active, so nothing new is wrapped under the old one) at or before the deadline. Otherwise it is LATE by the time from the deadline to the commit, or to now for a rotation still open.")},
		{strong("Manual / emergency:"), txt(" rotations started by a person (rekey rotate) or to replace a compromised version. They are not judged against the schedule and never count as late.")},
		{strong("Committed / finished:"), txt(" committed is when the new version became active; finished is when the final sweep had re-wrapped every DEK that could be. Took is finished minus started.")},
		{strong("Pending retirement:"), txt(" the state of the old version after a rotation commits: it still unwraps the DEKs not yet re-wrapped, but wraps nothing new.")},
		{strong("Grace:"), txt(" how long an old version stays pending retirement (retire after = commit + grace). It is retired only when the grace has passed and a count shows no DEK references it, never on the timer alone.")},
		{strong("Retirement blocked:"), txt(" the grace has passed but DEKs still reference the version (usually DEKs that could not be unwrapped), so it cannot be retired.")},
		{strong("DEK:"), txt(" a data-encryption key, stored only wrapped (encrypted) under a root-key version. This report never contains key material.")},
	}})
	return d
}

func (r *Report) lateItems() [][]span {
	var items [][]span
	for _, k := range r.Keys {
		for _, rot := range k.Rotations {
			if !rot.Late {
				continue
			}
			when := "committed " + rot.CommittedAt.Format(textTime)
			if rot.Open {
				when = "still open"
			}
			items = append(items, []span{txt("Key "), strong(k.Name), txt(fmt.Sprintf(", rotation %s (v%d → %s): ", rot.ID, rot.FromVersion, toVersionText(rot.ToVersion))),
				span{Text: "LATE by " + rot.LateBy, Strong: true, Class: "late"},
				txt(fmt.Sprintf(" — deadline %s, %s.", rot.Deadline.Format(textTime), when))})
		}
	}
	return items
}

func (r *Report) keyBlocks(k Key, add func(block)) {
	add(block{Level: 2, Heading: "Key " + k.Name, ID: "key-" + k.Name})
	status := []span{txt("not due")}
	switch {
	case k.Overdue:
		status = []span{span{Text: "OVERDUE", Strong: true, Class: "late"}, txt(" (its period ended " + humanDuration(r.GeneratedAt.Sub(k.ExpiresAt)) + " ago)")}
	case k.Due:
		status = []span{strong("due"), txt(" (the worker rotates it on its next cycle)")}
	case k.DueSoon:
		status = []span{strong("due soon")}
	}
	para := []span{txt("Backend: "), strong(k.Backend), txt(". Active version: "), strong(fmt.Sprintf("v%d", k.ActiveVersion)),
		txt(fmt.Sprintf(". Its period ends %s", k.ExpiresAt.Format(textTime)))}
	if k.ExpiresInSeconds > 0 {
		para = append(para, txt(" (in "+k.ExpiresIn+")"))
	}
	para = append(para, txt(". Status: "))
	para = append(para, status...)
	para = append(para, txt(fmt.Sprintf(". %s in all.", plural(k.DEKs, "DEK"))))
	add(block{Para: para})
	if u := k.Usage; u != nil {
		line := []span{strong("Usage:"), txt(" " + u.Text + ".")}
		if u.High {
			line = []span{strong("Usage:"), txt(" "), span{Text: u.Text, Strong: true, Class: "late"}, txt(".")}
		}
		if u.TooLow != nil {
			line = append(line, txt(" "), span{Text: "Not rotated: " + u.TooLow.String() + ".", Class: "late"})
		}
		add(block{Para: line})
	}
	p := k.Policy
	add(block{Para: []span{strong("Policy:"), txt(fmt.Sprintf(" rotate every %s (rotation_period); a rotation is due %s before the period ends (rotate_within) and flagged due soon %s before (notify_within); after a rotation the old version stays pending retirement for %s (grace); retired versions are destroyed after: %s (destroy_after).",
		p.RotationPeriod, p.RotateWithin, p.NotifyWithin, p.Grace, p.DestroyAfter))}})

	add(block{Level: 3, Heading: "Versions"})
	vt := &table{Head: []string{"Version", "State", "DEKs", "Created (UTC)", "Activated (UTC)", "Retire after (UTC)", "Retired / destroyed (UTC)"}}
	for _, v := range k.Versions {
		state := cell{Spans: []span{txt(string(v.State))}}
		if v.RetirementBlocked {
			state = cell{Spans: []span{txt(string(v.State) + ", "), strong("retirement blocked")}, Class: "late"}
		}
		if v.State == "compromised" {
			state = cell{Spans: []span{strong("compromised")}, Class: "late"}
		}
		gone := v.RetiredAt
		if !v.DestroyedAt.IsZero() {
			gone = v.DestroyedAt
		}
		vt.Rows = append(vt.Rows, []cell{textCell(fmt.Sprintf("v%d", v.Version)), state, textCell(fmt.Sprint(v.DEKs)),
			timeCell(v.CreatedAt), timeCell(v.ActivatedAt), timeCell(v.RetireAfter), timeCell(gone)})
	}
	add(block{Table: vt})

	add(block{Level: 3, Heading: fmt.Sprintf("Rotations (%d)", len(k.Rotations))})
	if len(k.Rotations) == 0 {
		add(block{Para: []span{txt("No rotation started in the period, and none is open.")}})
	} else {
		rt := &table{Head: []string{"Rotation", "Reason", "Versions", "Started (UTC)", "Committed (UTC)", "Finished (UTC)", "Took", "DEKs re-wrapped", "DEKs failed", "Deadline (UTC)", "On time?"}}
		var details [][]span
		for _, rot := range k.Rotations {
			failed := textCell(fmt.Sprint(rot.DEKsFailed))
			if rot.DEKsFailed > 0 {
				failed = cell{Spans: []span{strong(fmt.Sprint(rot.DEKsFailed))}, Class: "late"}
			}
			took := rot.Duration
			finished := timeCell(rot.FinishedAt)
			if rot.Open {
				took += " so far"
				finished = cell{Spans: []span{txt("open (" + string(rot.State) + ")")}}
			}
			rt.Rows = append(rt.Rows, []cell{{Spans: []span{code(rot.ID)}}, textCell(string(rot.Reason)),
				textCell(fmt.Sprintf("v%d → %s", rot.FromVersion, toVersionText(rot.ToVersion))),
				timeCell(rot.StartedAt), timeCell(rot.CommittedAt), finished, textCell(took),
				textCell(fmt.Sprint(rot.DEKsRewrapped)), failed, timeCell(rot.Deadline), onTimeCell(rot)})
			details = append(details, rotationDetails(rot))
		}
		add(block{Table: rt})
		add(block{List: details})
	}

	add(block{Level: 3, Heading: fmt.Sprintf("Retirements (%d)", len(k.Retirements))})
	if len(k.Retirements) == 0 {
		add(block{Para: []span{txt("No version was retired, destroyed or marked compromised in the period.")}})
	} else {
		t := &table{Head: []string{"Time (UTC)", "Event", "Version", "By", "Audit seq"}}
		for _, e := range k.Retirements {
			t.Rows = append(t.Rows, []cell{timeCell(e.Time), textCell(string(e.Type)), textCell(fmt.Sprintf("v%d", e.Version)),
				textCell(orDash(e.Actor)), textCell(fmt.Sprint(e.Seq))})
		}
		add(block{Table: t})
	}
}

// onTimeCell is the "On time?" column.
func onTimeCell(r Rotation) cell {
	switch r.Timeliness {
	case OnTime:
		return cell{Spans: []span{txt("on time (" + r.Margin + " to spare)")}, Class: "ok"}
	case Late:
		s := "LATE by " + r.LateBy
		if r.Open {
			s += " so far (still open)"
		}
		return cell{Spans: []span{strong(s)}, Class: "late"}
	case Manual, Emergency:
		s := r.Timeliness + ": not judged"
		if r.MarginSeconds != nil && *r.MarginSeconds < 0 {
			s += fmt.Sprintf(" (v%d's period had ended %s before)", r.FromVersion, strings.TrimPrefix(r.Margin, "-"))
		}
		return cell{Spans: []span{txt(s)}, Class: "muted"}
	case InProgress:
		return cell{Spans: []span{txt("in progress (deadline in " + r.Margin + ")")}}
	}
	return cell{Spans: []span{strong("unknown: no deadline")}, Class: "late"}
}

func rotationDetails(r Rotation) []span {
	s := []span{code(r.ID), txt(": deadline = " + r.DeadlineBasis + ".")}
	if r.Note != "" {
		s = append(s, txt(" Reason given: "+r.Note+"."))
	}
	if r.Compromised > 0 {
		s = append(s, txt(fmt.Sprintf(" Replaces compromised v%d.", r.Compromised)))
	}
	if r.DEKsTotal > 0 {
		s = append(s, txt(fmt.Sprintf(" %s to re-wrap when re-wrapping started.", plural(r.DEKsTotal, "DEK"))))
	}
	if len(r.FailedDEKs) > 0 {
		s = append(s, txt(" Could not be unwrapped: "))
		for i, id := range r.FailedDEKs {
			if i > 0 {
				s = append(s, txt(", "))
			}
			s = append(s, code(id))
		}
		s = append(s, txt("."))
	}
	if r.LastError != "" {
		s = append(s, strong(" Last error:"), txt(" "+r.LastError))
	}
	return s
}

func problemTitle(kind string) string {
	switch kind {
	case ProblemChainInvalid:
		return "Audit trail invalid"
	case ProblemChainNotChecked:
		return "Audit trail not verified"
	case ProblemKeyOverdue:
		return "Key overdue"
	case ProblemRotationFailing:
		return "Rotation failing"
	case ProblemRetirementBlocked:
		return "Retirement blocked"
	case ProblemDEKUnwrapFailed:
		return "DEKs that cannot be unwrapped"
	case ProblemCompromisedInUse:
		return "Compromised version still in use"
	case ProblemScheduleUnverifiable:
		return "Deadline unknown"
	}
	return kind
}

func seqText(seq int64) string {
	if seq <= 0 {
		return "—"
	}
	return fmt.Sprint(seq)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

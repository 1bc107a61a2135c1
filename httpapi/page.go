package httpapi

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"html/template"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/status"
)

// refreshSeconds is how often the status page reloads itself.
const refreshSeconds = 10

// recentPerKey is how many recent rotations each key's card lists.
const recentPerKey = 5

//go:embed templates/status.html
var templateFS embed.FS

// pageTemplate is parsed once; html/template escapes every value for the
// context it lands in (text, attribute, CSS), so nothing read from the store
// can inject markup.
var pageTemplate = template.Must(template.ParseFS(templateFS, "templates/status.html"))

// Severity levels, also the CSS classes of badges.
const (
	levelOK   = "ok"
	levelInfo = "info"
	levelWarn = "warn"
	levelCrit = "crit"
)

func levelRank(l string) int {
	switch l {
	case levelInfo:
		return 1
	case levelWarn:
		return 2
	case levelCrit:
		return 3
	}
	return 0
}

// worse returns the more severe of two levels.
func worse(a, b string) string {
	if levelRank(b) > levelRank(a) {
		return b
	}
	return a
}

type badge struct {
	Level string
	Text  string
}

// pageData is everything the template shows, already formatted: the
// template only lays it out.
type pageData struct {
	Refresh    int
	Generated  string
	Health     health
	Keys       []keyCard
	KeyCount   int
	DEKCount   string
	OpenCount  int
	HasMetrics bool
	Error      string // set when the status could not be read
}

type health struct {
	Level  string
	Title  string
	Badges []badge
}

type keyCard struct {
	Level         string // the worst of State, a blocked retirement and the open rotation
	Name          string
	Backend       string
	ActiveVersion int
	DEKs          string
	State         badge
	Blocked       int
	ExpiresAt     string
	ExpiresRel    string
	Timeline      *timeline
	Policy        status.PolicyView
	Versions      []versionRow
	Open          *rotationRow
	Recent        []rotationRow
	Failed        []failedDEKs
	Sources       []sourceRow
	Usage         *usageRow // the active version's wraps; nil when not counted
}

// usageHighRatio is the share of max_encryptions at which the page shows
// "usage high": the threshold of the alert RekeyKeyUsageHigh.
const usageHighRatio = 0.9

// usageRow is the active version's wrap count against max_encryptions.
type usageRow struct {
	Level      string // warn when High or TooLow
	Version    int    // the active version
	Count, Max string
	Pct        string // of Max, 0..100 (the bar is clamped; Text is not)
	PctText    string
	High       bool   // at least usageHighRatio of Max
	Threshold  string // rotate_at × max_encryptions: due at this count
	TooLow     string // rekey.UsageTooLow's explanation, when set
}

// newUsageRow renders k's usage; nil when it is not counted.
func newUsageRow(k status.KeyView) *usageRow {
	if k.Usage == nil {
		return nil
	}
	u := *k.Usage
	r := &usageRow{Level: levelOK, Version: k.ActiveVersion, Count: formatCount(u.Encryptions), Max: formatCount(u.Max), Threshold: formatCount(u.Threshold),
		Pct: pct(u.Ratio()), PctText: strconv.FormatFloat(math.Floor(u.Ratio()*1000)/10, 'f', 1, 64) + "%",
		High: u.Max > 0 && u.Ratio() >= usageHighRatio}
	if r.High {
		r.Level = levelWarn
	}
	if k.UsageTooLow != nil {
		r.Level, r.TooLow = levelWarn, k.UsageTooLow.String()
	}
	return r
}

// sourceRow is one DEK source's rows of a key, per version (newest first).
type sourceRow struct {
	Name     string
	Versions []sourceVersion
	Error    string
}

type sourceVersion struct {
	Version int
	DEKs    string
}

type timeline struct {
	Level        string
	ElapsedPct   string // width of the elapsed part, 0..100
	ElapsedText  string
	WindowLeft   string // where rotate_within begins
	WindowWidth  string
	NotifyLeft   string // where notify_within begins
	NotifyWidth  string
	Start        string
	RotateWithin string
	NotifyWithin string
	WindowStart  string
	End          string
	Summary      string // the whole bar in words, for screen readers and tooltips
}

type versionRow struct {
	Version        int
	State          string
	StateLevel     string
	Active         bool
	DEKs           string
	Created        string
	RetireAfter    string
	RetireAfterRel string
	Blocked        bool
	BlockedText    string
}

type rotationRow struct {
	ID          string
	From, To    string
	State       string
	StateLevel  string
	Reason      string
	Note        string
	Done        string
	Total       string
	Failed      int64
	ProgressPct string
	Started     string
	StartedRel  string
	Finished    string
	Took        string
	Owner       string
	LastError   string
}

type failedDEKs struct {
	Rotation string
	Count    int64
	IDs      []string
	More     int64 // failed DEKs beyond the ids the rotation kept
}

// servePage renders the status page. A store failure still renders the page
// (status 500) with the error, so that the auto-refresh recovers by itself.
func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	data, err := s.pageData(r.Context())
	code := http.StatusOK
	if err != nil {
		s.log.Error("status page: reading the store failed", "error", err.Error())
		data = pageData{Refresh: refreshSeconds, Generated: formatTime(s.now()), HasMetrics: s.hasMetrics,
			Health: health{Level: levelCrit, Title: "Status unavailable"}, Error: cleanError(err)}
		code = http.StatusInternalServerError
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, data); err != nil {
		s.log.Error("status page: rendering failed", "error", err.Error())
		writeBody(w, http.StatusInternalServerError, "text/plain; charset=utf-8", []byte("rendering the status page failed; see the log\n"))
		return
	}
	writeBody(w, code, "text/html; charset=utf-8", buf.Bytes())
}

// pageData reads the status (the same view as /api/v1/status) and, per
// key, its few most recent rotations.
func (s *Server) pageData(ctx context.Context) (pageData, error) {
	st, err := s.buildStatus(ctx)
	if err != nil {
		return pageData{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	recent := make(map[string][]rekey.Rotation, len(st.Keys))
	for _, k := range st.Keys {
		rs, err := s.store.ListRotations(ctx, rekey.RotationQuery{Key: k.Name, Limit: recentPerKey})
		if err != nil {
			return pageData{}, fmt.Errorf("key %s: list rotations: %w", k.Name, err)
		}
		recent[k.Name] = rs
	}
	return buildPage(st, recent, s.hasMetrics), nil
}

// blockedText says why v, reported blocked, has not left service: a
// compromised version is disabled once unused, any other retires once its
// grace is over and no DEK references it.
func blockedText(v status.VersionView, now time.Time) string {
	if v.State == rekey.VersionCompromised || v.RetireAfter == nil {
		return fmt.Sprintf("%s DEK(s) still reference this version and no rotation is re-wrapping them; it is disabled at the backend once none is left",
			formatCount(v.DEKs))
	}
	return fmt.Sprintf("grace ended %s, but %s DEK(s) still reference this version; they are re-wrapped before it can retire",
		relative(*v.RetireAfter, now), formatCount(v.DEKs))
}

// buildPage turns the status view into the page's view model.
func buildPage(st status.Status, recent map[string][]rekey.Rotation, hasMetrics bool) pageData {
	now := st.Time
	open := make(map[string]status.RotationView, len(st.Rotations))
	for _, r := range st.Rotations {
		open[r.Key] = r
	}
	d := pageData{
		Refresh:    refreshSeconds,
		Generated:  formatTime(now),
		KeyCount:   len(st.Keys),
		OpenCount:  len(st.Rotations),
		HasMetrics: hasMetrics,
	}
	var deks int64
	var overdue, due, soon, blocked, badSources, usageHigh int
	badSource := map[string]bool{}
	for _, k := range st.Keys {
		deks += k.DEKs
		c := keyCard{
			Name:          k.Name,
			Backend:       k.Backend,
			ActiveVersion: k.ActiveVersion,
			DEKs:          formatCount(k.DEKs),
			ExpiresAt:     formatTime(k.ExpiresAt),
			Policy:        k.Policy,
			Timeline:      newTimeline(k, now),
			Usage:         newUsageRow(k),
		}
		switch {
		case k.Overdue:
			overdue++
			c.State = badge{levelCrit, "overdue"}
			c.ExpiresRel = "overdue by " + humanDuration(now.Sub(k.ExpiresAt))
		case k.Due:
			due++
			c.State = badge{levelWarn, "rotation due"}
			c.ExpiresRel = "in " + humanDuration(k.ExpiresAt.Sub(now))
		case k.DueSoon:
			soon++
			c.State = badge{levelInfo, "due soon"}
			c.ExpiresRel = "in " + humanDuration(k.ExpiresAt.Sub(now))
		default:
			c.State = badge{levelOK, "on schedule"}
			c.ExpiresRel = "in " + humanDuration(k.ExpiresAt.Sub(now))
		}
		// Newest version first: that is the one people look for.
		for _, v := range slices.Backward(k.Versions) {
			row := versionRow{
				Version:    v.Version,
				State:      string(v.State),
				StateLevel: versionLevel(v.State),
				Active:     v.Version == k.ActiveVersion,
				DEKs:       formatCount(v.DEKs),
				Created:    formatTime(v.CreatedAt),
				Blocked:    v.RetirementBlocked,
			}
			if v.RetireAfter != nil {
				row.RetireAfter = formatTime(*v.RetireAfter)
				row.RetireAfterRel = relative(*v.RetireAfter, now)
			}
			if v.RetirementBlocked {
				c.Blocked++
				row.BlockedText = blockedText(v, now)
			}
			c.Versions = append(c.Versions, row)
		}
		for _, sc := range k.Sources {
			row := sourceRow{Name: sc.Source}
			if sc.Error != "" {
				row.Error = cleanText(sc.Error)
				if !badSource[sc.Source] {
					badSource[sc.Source] = true
					badSources++
				}
			}
			for _, v := range slices.Backward(slices.Sorted(maps.Keys(sc.Versions))) {
				row.Versions = append(row.Versions, sourceVersion{Version: v, DEKs: formatCount(sc.Versions[v])})
			}
			c.Sources = append(c.Sources, row)
		}
		blocked += c.Blocked
		c.Level = c.State.Level
		for _, r := range c.Sources {
			if r.Error != "" {
				c.Level = worse(c.Level, levelWarn)
			}
		}
		if c.Blocked > 0 {
			c.Level = worse(c.Level, levelWarn)
		}
		if c.Usage != nil {
			c.Level = worse(c.Level, c.Usage.Level)
			if c.Usage.High || c.Usage.TooLow != "" {
				usageHigh++
			}
		}
		if r, ok := open[k.Name]; ok {
			row := newRotationRow(r, now)
			c.Open = &row
			c.Level = worse(c.Level, row.StateLevel)
		}
		for _, r := range recent[k.Name] {
			v := status.NewRotationView(r)
			c.Recent = append(c.Recent, newRotationRow(v, now))
			if r.Failed > 0 {
				c.Failed = append(c.Failed, failedDEKs{Rotation: r.ID, Count: r.Failed, IDs: r.FailedDEKs,
					More: max(0, r.Failed-int64(len(r.FailedDEKs)))})
			}
		}
		d.Keys = append(d.Keys, c)
	}
	d.DEKCount = formatCount(deks)

	var failing, stuck, running int
	for _, r := range st.Rotations {
		switch {
		case r.LastError != "":
			failing++
		case r.Failed > 0:
			stuck++
		default:
			running++
		}
	}
	var b []badge
	add := func(n int, level, one, many string) {
		if n == 1 {
			b = append(b, badge{level, one})
		} else if n > 1 {
			b = append(b, badge{level, fmt.Sprintf(many, n)})
		}
	}
	add(overdue, levelCrit, "1 key overdue", "%d keys overdue")
	add(failing, levelCrit, "1 rotation failing", "%d rotations failing")
	add(blocked, levelWarn, "1 retirement blocked", "%d retirements blocked")
	add(stuck, levelWarn, "1 rotation with unreadable DEKs", "%d rotations with unreadable DEKs")
	add(badSources, levelWarn, "1 DEK source unreadable", "%d DEK sources unreadable")
	add(usageHigh, levelWarn, "1 key with usage high", "%d keys with usage high")
	add(due, levelWarn, "1 key due for rotation", "%d keys due for rotation")
	add(soon, levelInfo, "1 key due soon", "%d keys due soon")
	add(running, levelInfo, "1 rotation in progress", "%d rotations in progress")
	d.Health = health{Level: levelOK, Badges: b}
	for _, x := range b {
		d.Health.Level = worse(d.Health.Level, x.Level)
	}
	switch {
	case len(st.Keys) == 0:
		d.Health.Title = "No keys yet"
	case d.Health.Level == levelCrit:
		d.Health.Title = "Action required"
	case d.Health.Level == levelWarn:
		d.Health.Title = "Needs attention"
	default:
		d.Health.Title = "Healthy"
	}
	if len(b) == 0 && len(st.Keys) > 0 {
		d.Health.Badges = []badge{{levelOK, fmt.Sprintf("all %d key(s) on schedule", len(st.Keys))}}
	}
	return d
}

// newTimeline draws the active version's period: how much of it has
// elapsed, and where the notify_within and rotate_within windows begin. It
// returns nil when the policy cannot be read back (it always can: the
// status view prints durations the way rekey.ParseDuration reads them).
func newTimeline(k status.KeyView, now time.Time) *timeline {
	period, err := rekey.ParseDuration(k.Policy.RotationPeriod, false)
	if err != nil || period <= 0 {
		return nil
	}
	within, err1 := rekey.ParseDuration(k.Policy.RotateWithin, false)
	notify, err2 := rekey.ParseDuration(k.Policy.NotifyWithin, false)
	if err1 != nil || err2 != nil {
		return nil
	}
	start := k.ExpiresAt.Add(-period)
	elapsed := clamp01(float64(now.Sub(start)) / float64(period))
	windowLeft := clamp01(float64(period-within) / float64(period))
	notifyLeft := clamp01(float64(period-notify) / float64(period))
	t := &timeline{
		ElapsedPct:   pct(elapsed),
		WindowLeft:   pct(windowLeft),
		WindowWidth:  pct(1 - windowLeft),
		NotifyLeft:   pct(notifyLeft),
		NotifyWidth:  pct(1 - notifyLeft),
		Start:        formatDate(start),
		RotateWithin: k.Policy.RotateWithin,
		NotifyWithin: k.Policy.NotifyWithin,
		WindowStart:  formatDate(k.ExpiresAt.Add(-within)),
		End:          formatDate(k.ExpiresAt),
	}
	switch {
	case k.Overdue:
		t.Level = levelCrit
		t.ElapsedText = fmt.Sprintf("period of %s ended %s ago", k.Policy.RotationPeriod, humanDuration(now.Sub(k.ExpiresAt)))
	case k.Due:
		t.Level = levelWarn
	case k.DueSoon:
		t.Level = levelInfo
	default:
		t.Level = levelOK
	}
	if t.ElapsedText == "" {
		t.ElapsedText = fmt.Sprintf("%.0f%% of the %s period elapsed", elapsed*100, k.Policy.RotationPeriod)
	}
	t.Summary = fmt.Sprintf("%s; rotation window (last %s) opens %s; expires %s",
		t.ElapsedText, k.Policy.RotateWithin, formatTime(k.ExpiresAt.Add(-within)), formatTime(k.ExpiresAt))
	return t
}

func newRotationRow(r status.RotationView, now time.Time) rotationRow {
	row := rotationRow{
		ID:          r.ID,
		From:        "v" + strconv.Itoa(r.FromVersion),
		To:          "—",
		State:       string(r.State),
		StateLevel:  rotationLevel(r),
		Reason:      string(r.Reason),
		Note:        r.Note,
		Done:        formatCount(r.Done),
		Total:       formatCount(r.Total),
		Failed:      r.Failed,
		ProgressPct: pct(r.Progress),
		Started:     formatTime(r.StartedAt),
		StartedRel:  relative(r.StartedAt, now),
		Finished:    "—",
		Owner:       r.Owner,
		LastError:   cleanText(r.LastError),
	}
	if r.ToVersion > 0 {
		row.To = "v" + strconv.Itoa(r.ToVersion)
	}
	if !r.FinishedAt.IsZero() {
		row.Finished = formatTime(r.FinishedAt)
		row.Took = humanDuration(r.FinishedAt.Sub(r.StartedAt))
	}
	return row
}

func versionLevel(s rekey.VersionState) string {
	switch s {
	case rekey.VersionActive:
		return levelOK
	case rekey.VersionCreated, rekey.VersionPendingRetirement:
		return levelInfo
	case rekey.VersionCompromised:
		return levelCrit
	}
	return "muted"
}

func rotationLevel(r status.RotationView) string {
	switch {
	case r.LastError != "":
		return levelCrit
	case r.Failed > 0:
		return levelWarn
	case r.State == rekey.RotationDone:
		return levelOK
	}
	return levelInfo
}

func clamp01(x float64) float64 {
	if math.IsNaN(x) {
		return 0
	}
	return min(1, max(0, x))
}

// pct formats a 0..1 fraction as a CSS percentage number ("42.5").
func pct(x float64) string { return strconv.FormatFloat(clamp01(x)*100, 'f', 1, 64) }

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func formatDate(t time.Time) string { return t.UTC().Format("2006-01-02 15:04") }

// relative says when t is from now: "in 3d 4h", "5m ago".
func relative(t, now time.Time) string {
	d := t.Sub(now)
	switch {
	case d.Abs() < time.Second:
		return "now"
	case d > 0:
		return "in " + humanDuration(d)
	}
	return humanDuration(-d) + " ago"
}

// humanDuration prints d with its two largest units: "3d 4h", "5h 12m",
// "42s".
func humanDuration(d time.Duration) string {
	d = d.Abs()
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int64(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", int64(d/time.Minute), int64(d%time.Minute/time.Second))
	case d < rekey.Day:
		return fmt.Sprintf("%dh %dm", int64(d/time.Hour), int64(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd %dh", int64(d/rekey.Day), int64(d%rekey.Day/time.Hour))
}

// formatCount prints n with thousands separators: 1,234,567.
func formatCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	var b []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			b = append(b, ',')
		}
		b = append(b, s[i])
	}
	if neg {
		return "-" + string(b)
	}
	return string(b)
}

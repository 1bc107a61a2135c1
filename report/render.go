package report

import (
	"bufio"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"strings"
)

// JSON writes the report as one indented JSON object (see Report for the
// field contract).
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("report: write json: %w", err)
	}
	return nil
}

// Markdown writes the report as CommonMark/GitHub-flavoured Markdown: the
// summary, the open problems, the audit-trail check, a section per key
// with its versions, rotations (with an "On time?" column) and
// retirements, and a glossary. Text from the store is escaped so that it
// cannot add markup (tables, links, HTML).
func (r *Report) Markdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	d := r.document()
	fmt.Fprintf(bw, "# %s\n", mdEscape(d.Title))
	for _, b := range d.Blocks {
		bw.WriteString("\n")
		switch {
		case b.Heading != "":
			fmt.Fprintf(bw, "%s %s\n", strings.Repeat("#", b.Level), mdEscape(b.Heading))
		case b.Table != nil:
			writeMDTable(bw, b.Table)
		case b.Warn:
			fmt.Fprintf(bw, "> %s\n", mdSpans(b.Para))
			if len(b.List) > 0 {
				bw.WriteString(">\n")
				for _, item := range b.List {
					fmt.Fprintf(bw, "> - %s\n", mdSpans(item))
				}
			}
		case len(b.List) > 0:
			if len(b.Para) > 0 {
				fmt.Fprintf(bw, "%s\n\n", mdSpans(b.Para))
			}
			for _, item := range b.List {
				fmt.Fprintf(bw, "- %s\n", mdSpans(item))
			}
		default:
			fmt.Fprintf(bw, "%s\n", mdSpans(b.Para))
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("report: write markdown: %w", err)
	}
	return nil
}

func writeMDTable(w io.Writer, t *table) {
	var head, rule []string
	for _, h := range t.Head {
		head = append(head, mdEscape(h))
		rule = append(rule, "---")
	}
	fmt.Fprintf(w, "| %s |\n| %s |\n", strings.Join(head, " | "), strings.Join(rule, " | "))
	for _, row := range t.Rows {
		var cells []string
		for _, c := range row {
			cells = append(cells, mdSpans(c.Spans))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}

func mdSpans(spans []span) string {
	var b strings.Builder
	for _, s := range spans {
		t := s.Text
		switch {
		case s.Code:
			// Ids and hashes only; a backtick would end the span early.
			b.WriteString("`" + strings.ReplaceAll(clean(t), "`", "'") + "`")
		case s.Strong:
			// Keep the spaces outside the markers, or ** does not bind.
			trimmed := strings.TrimSpace(t)
			if trimmed == "" {
				b.WriteString(t)
				continue
			}
			lead := t[:strings.Index(t, trimmed)]
			b.WriteString(lead + "**" + mdEscape(trimmed) + "**" + t[len(lead)+len(trimmed):])
		default:
			b.WriteString(mdEscape(t))
		}
	}
	return b.String()
}

// mdReplacer escapes the characters that could start markup in running
// text or end a table cell. Underscores are left alone: inside words they
// do not emphasise, and state names such as pending_retirement must read
// as they are.
var mdReplacer = strings.NewReplacer(
	`\`, `\\`, "`", "\\`", `*`, `\*`, `[`, `\[`, `]`, `\]`, `<`, `\<`, `>`, `\>`, `|`, `\|`, `&`, `\&`,
)

func mdEscape(s string) string { return mdReplacer.Replace(clean(s)) }

//go:embed report.html.tmpl
var templates embed.FS

var htmlTemplate = template.Must(template.New("report.html.tmpl").ParseFS(templates, "report.html.tmpl"))

// HTML writes the report as one self-contained, printable HTML page: inline
// CSS with a print stylesheet, no script, no external asset. Every text is
// escaped by html/template.
func (r *Report) HTML(w io.Writer) error {
	bw := bufio.NewWriter(w)
	if err := htmlTemplate.Execute(bw, r.document()); err != nil {
		return fmt.Errorf("report: write html: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("report: write html: %w", err)
	}
	return nil
}

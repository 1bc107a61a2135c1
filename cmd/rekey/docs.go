package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/rekeyhq/rekey/internal/fileutil"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func (c *cli) docsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "docs", Short: "Generate documentation from the command tree (man pages)"}
	cmd.AddCommand(c.docsManCommand())
	return cmd
}

func (c *cli) docsManCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "man DIR",
		Short: "Write one man page per command (rekey.1, rekey-key-create.1, ...) into DIR",
		Long: `Write a man page (section 1, roff) for every command into DIR, created
if missing: rekey.1 for the root, rekey-key-create.1 for 'rekey key create',
and so on. Each page has NAME, SYNOPSIS, DESCRIPTION, OPTIONS, EXAMPLES and
SEE ALSO, generated from the same text as --help. Existing pages of the same
name are replaced; nothing is written when DIR is not a directory.`,
		Example: "  rekey docs man ./man1 && man ./man1/rekey-key-create.1\n  sudo rekey docs man /usr/local/share/man/man1",
		Args:    exactArgs(1, "DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			pages := manPages(cmd.Root())
			if err := writeManPages(dir, pages); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "wrote %d man pages to %s\n", len(pages), dir)
			return nil
		},
	}
}

// manPage is one generated page: its file name and roff text.
type manPage struct {
	name string
	text []byte
}

// manPages renders a page for root and every available command below it
// (hidden commands and cobra's help command are left out).
func manPages(root *cobra.Command) []manPage {
	var pages []manPage
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		pages = append(pages, manPage{name: manName(cmd) + ".1", text: renderMan(cmd)})
		for _, sub := range manChildren(cmd) {
			walk(sub)
		}
	}
	walk(root)
	return pages
}

// manChildren are the subcommands of cmd that get a page.
func manChildren(cmd *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, sub := range cmd.Commands() {
		if !sub.IsAvailableCommand() || sub.IsAdditionalHelpTopicCommand() {
			continue
		}
		out = append(out, sub)
	}
	return out
}

// manName is the page name of cmd: its command path joined by dashes
// ("rekey-key-create").
func manName(cmd *cobra.Command) string {
	return strings.ReplaceAll(cmd.CommandPath(), " ", "-")
}

// writeManPages writes pages into dir (created 0755 if missing). A dir that
// exists and is not a directory is refused before anything is written.
func writeManPages(dir string, pages []manPage) error {
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w (is its parent directory writable?)", dir, err)
		}
	case err != nil:
		return fmt.Errorf("%s: %w", dir, err)
	case !fi.IsDir():
		return usagef("%s is not a directory: give a directory to write the man pages into (it is created if missing)", dir)
	}
	for _, p := range pages {
		path := filepath.Join(dir, p.name)
		// Man pages are public documentation: 0644, like any installed page.
		if err := fileutil.WriteAtomic(path, p.text, 0o644); err != nil {
			return err // names the file and the failing step
		}
	}
	return nil
}

// renderMan renders cmd's page in roff (man(7) macros).
func renderMan(cmd *cobra.Command) []byte {
	var b bytes.Buffer
	name := manName(cmd)
	fmt.Fprintf(&b, ".TH %q \"1\" \"\" \"rekey\" \"rekey manual\"\n", strings.ToUpper(name))
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", roffEscape(name), roffEscape(cmd.Short))

	b.WriteString(".SH SYNOPSIS\n")
	fmt.Fprintf(&b, ".B %s\n", roffEscape(cmd.CommandPath()))
	if rest := strings.TrimSpace(strings.TrimPrefix(cmd.UseLine(), cmd.CommandPath())); rest != "" {
		b.WriteString(roffText(rest))
	}
	if cmd.HasAvailableSubCommands() && !cmd.Runnable() {
		b.WriteString("\\fICOMMAND\\fR\n")
	}

	b.WriteString(".SH DESCRIPTION\n")
	desc := cmd.Long
	if desc == "" {
		desc = cmd.Short
	}
	writeParagraphs(&b, desc)

	if subs := manChildren(cmd); len(subs) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, sub := range subs {
			fmt.Fprintf(&b, ".TP\n.B %s\n%s", roffEscape(sub.Name()), roffText(sub.Short))
			fmt.Fprintf(&b, "See \\fB%s\\fR(1).\n", roffEscape(manName(sub)))
		}
	}
	writeFlags(&b, "OPTIONS", cmd.NonInheritedFlags())
	writeFlags(&b, "OPTIONS INHERITED FROM PARENT COMMANDS", cmd.InheritedFlags())

	if cmd.Example != "" {
		b.WriteString(".SH EXAMPLES\n.PP\n.nf\n")
		for _, line := range strings.Split(strings.TrimRight(cmd.Example, "\n"), "\n") {
			b.WriteString(roffLine(strings.TrimPrefix(line, "  ")))
		}
		b.WriteString(".fi\n")
	}
	if !cmd.HasParent() {
		b.WriteString(".SH EXIT STATUS\n.PP\n0 ok, 1 failure, 2 usage error.\n")
	}

	var also []string
	if cmd.HasParent() {
		also = append(also, manName(cmd.Parent()))
	}
	for _, sub := range manChildren(cmd) {
		also = append(also, manName(sub))
	}
	if len(also) > 0 {
		b.WriteString(".SH SEE ALSO\n.PP\n")
		for i, n := range also {
			sep := ","
			if i == len(also)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, "\\fB%s\\fR(1)%s\n", roffEscape(n), sep)
		}
	}
	return b.Bytes()
}

// writeFlags writes a section listing fs's visible flags; nothing when
// there are none.
func writeFlags(b *bytes.Buffer, title string, fs *pflag.FlagSet) {
	var flags []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			flags = append(flags, f)
		}
	})
	if len(flags) == 0 {
		return
	}
	fmt.Fprintf(b, ".SH %s\n", title)
	for _, f := range flags {
		varname, usage := pflag.UnquoteUsage(f)
		head := "\\fB\\-\\-" + roffEscape(f.Name) + "\\fR"
		if f.Shorthand != "" {
			head = "\\fB\\-" + roffEscape(f.Shorthand) + "\\fR, " + head
		}
		if varname != "" {
			head += " \\fI" + roffEscape(varname) + "\\fR"
		}
		fmt.Fprintf(b, ".TP\n%s\n", head)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" && f.DefValue != "0" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		b.WriteString(roffText(usage))
	}
}

// writeParagraphs writes text, its blank lines as paragraph breaks; a
// paragraph with indented lines (commands to copy) is kept as written.
func writeParagraphs(b *bytes.Buffer, text string) {
	for _, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		b.WriteString(".PP\n")
		if !strings.Contains("\n"+para, "\n  ") {
			b.WriteString(roffText(para))
			continue
		}
		b.WriteString(".nf\n")
		for _, line := range strings.Split(para, "\n") {
			b.WriteString(roffLine(line))
		}
		b.WriteString(".fi\n")
	}
}

// roffText writes text as filled lines, each safe for roff.
func roffText(text string) string {
	var s strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		s.WriteString(roffLine(strings.TrimSpace(line)))
	}
	return s.String()
}

// roffLine is one line of text escaped so that roff prints it as is: a
// leading '.' or '\” would be read as a request.
func roffLine(line string) string {
	line = roffEscape(line)
	if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
		line = "\\&" + line
	}
	return line + "\n"
}

// roffEscape escapes roff's escape character and hyphens (printed as
// minus signs, which man pages need for options to be copied right).
func roffEscape(s string) string {
	return strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
}

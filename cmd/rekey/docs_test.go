package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocsMan writes the man pages and checks that every command has one,
// with the sections man(1) needs, and that the roff is escaped.
func TestDocsMan(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "man", "man1") // created, parents too
	out := e.must("docs", "man", dir)
	if !strings.Contains(out, "man pages to "+dir) {
		t.Errorf("output %q does not say where the pages went", out)
	}
	for _, name := range []string{"rekey", "rekey-key-create", "rekey-key", "rekey-run", "rekey-dek-create",
		"rekey-audit-verify", "rekey-completion", "rekey-docs-man"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".1"))
		if err != nil {
			t.Errorf("page %s: %v", name, err)
			continue
		}
		page := string(b)
		for _, want := range []string{
			`.TH "` + strings.ToUpper(name) + `" "1"`,
			".SH NAME\n" + strings.ReplaceAll(name, "-", `\-`) + ` \- `,
			".SH SYNOPSIS\n.B " + strings.ReplaceAll(name, "-", " "),
			".SH DESCRIPTION\n",
		} {
			if !strings.Contains(page, want) {
				t.Errorf("page %s lacks %q:\n%s", name, want, page)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "rekey-help.1")); err == nil {
		t.Error("cobra's help command got a page")
	}
	create, err := os.ReadFile(filepath.Join(dir, "rekey-key-create.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`\fB\-\-period\fR \fIstring\fR`, ".SH OPTIONS INHERITED FROM PARENT COMMANDS", `\fB\-\-config\fR`,
		".SH EXAMPLES", `rekey key create payments`, ".SH SEE ALSO", `\fBrekey\-key\fR(1)`} {
		if !strings.Contains(string(create), want) {
			t.Errorf("rekey-key-create.1 lacks %q", want)
		}
	}
	root, err := os.ReadFile(filepath.Join(dir, "rekey.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".SH COMMANDS", ".SH EXIT STATUS", `\fBrekey\-run\fR(1)`} {
		if !strings.Contains(string(root), want) {
			t.Errorf("rekey.1 lacks %q", want)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "rekey.1"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("rekey.1 has mode %v, want 0644 (a public page)", fi.Mode().Perm())
	}
	// Every command of the tree has a page: as many pages as files.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var wrote int
	if _, err := fmt.Sscanf(out, "wrote %d man pages", &wrote); err != nil || wrote != len(entries) {
		t.Errorf("said it wrote %d pages (%v), the directory has %d files", wrote, err, len(entries))
	}
}

// TestDocsManIntoAFile refuses a DIR that is a file, with a usage error
// that says so, and writes nothing.
func TestDocsManIntoAFile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	parent := t.TempDir()
	file := filepath.Join(parent, "pages")
	if err := os.WriteFile(file, []byte("not a directory\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := e.rekey("docs", "man", file)
	if code != exitUsage {
		t.Errorf("exit %d, want %d; stderr: %s", code, exitUsage, errs)
	}
	if !strings.Contains(errs, file+" is not a directory") {
		t.Errorf("stderr does not say the path is not a directory: %s", errs)
	}
	b, err := os.ReadFile(file)
	if err != nil || string(b) != "not a directory\n" {
		t.Errorf("the file changed: %q, %v", b, err)
	}
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("the parent directory holds %d entries, want only the file", len(entries))
	}
	if _, err := os.Stat(e.home); err == nil {
		t.Error("rekey docs created the embedded default: it must not open a store")
	}
}

// TestRoffLineEscapes keeps text that roff would read as requests or
// escapes printing as written.
func TestRoffLineEscapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{".SH not a section", `\&.SH not a section` + "\n"},
		{"'quoted", `\&'quoted` + "\n"},
		{`a\b`, `a\eb` + "\n"},
		{"--flag", `\-\-flag` + "\n"},
		{"plain text", "plain text\n"},
	} {
		if got := roffLine(tc.in); got != tc.want {
			t.Errorf("roffLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestCompletion prints each shell's script, which mentions rekey and the
// hook it calls, and the hook completes subcommands and flags.
func TestCompletion(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, shell := range []string{"bash", "zsh", "fish"} {
		out := e.must("completion", shell)
		for _, want := range []string{"rekey", "__complete"} {
			if !strings.Contains(out, want) {
				t.Errorf("completion %s lacks %q", shell, want)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{""}, []string{"key\t", "dek\t", "run\t", "rotate\t", "docs\t", "completion\t"}},
		{[]string{"key", ""}, []string{"create\t", "list\t", "show\t"}},
		{[]string{"run", "--"}, []string{"--demo\t", "--once\t", "--listen\t"}},
		{[]string{"docs", ""}, []string{"man\t"}},
	} {
		out := e.must(append([]string{"__complete"}, tc.args...)...)
		for _, want := range tc.want {
			if !strings.Contains(out, want) {
				t.Errorf("__complete %q lacks %q:\n%s", tc.args, want, out)
			}
		}
	}
	code, _, errs := e.rekey("completion", "tcsh")
	if code != exitUsage || !strings.Contains(errs, `completion "tcsh": rekey completes bash, zsh, fish and powershell`) {
		t.Errorf("completion tcsh: exit %d, want %d with a message naming the shells; stderr %s", code, exitUsage, errs)
	}
	if _, err := os.Stat(e.home); err == nil {
		t.Error("rekey completion created the embedded default: it must not open a store")
	}
}

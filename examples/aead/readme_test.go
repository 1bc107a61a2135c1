package main

import (
	"os"
	"strings"
	"testing"
)

// README.md shows this program: the two must not drift apart.
func TestREADMEShowsThisProgram(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	prog, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```go\n"+string(prog)+"```\n") {
		t.Fatal("README.md's library section no longer shows examples/aead/main.go verbatim: update one or the other")
	}
	// At most 15 lines, imports excluded (issue 7).
	lines := 0
	inImports := false
	for _, l := range strings.Split(strings.TrimSpace(string(prog)), "\n") {
		switch {
		case strings.HasPrefix(l, "import ("):
			inImports = true
		case inImports && l == ")":
			inImports = false
		case inImports, strings.HasPrefix(l, "//"), strings.TrimSpace(l) == "":
		default:
			lines++
		}
	}
	if lines > 15 {
		t.Errorf("the README program has %d lines (imports, comments and blank lines excluded), want at most 15", lines)
	}
}

package config

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxEcho is how many bytes of a configuration value a message repeats.
const maxEcho = 100

// echo is a value from the configuration as a message repeats it: a value
// longer than maxEcho bytes is cut there, quoted, and followed by its full
// size, "…(N bytes)", so that a 50 MB value does not make a 50 MB message.
// Shorter values format as a plain string would.
type echo string

// Format implements fmt.Formatter.
func (e echo) Format(f fmt.State, verb rune) {
	s := string(e)
	if len(s) <= maxEcho {
		fmt.Fprintf(f, fmt.FormatString(f, verb), s)
		return
	}
	cut := s[:maxEcho]
	for len(cut) > 0 && !utf8.ValidString(cut) {
		cut = cut[:len(cut)-1]
	}
	fmt.Fprintf(f, "%q…(%d bytes)", cut, len(s))
}

// maxProblems bounds how many problems one Parse reports, so that a
// pathological file cannot produce an unbounded error.
const maxProblems = 100

// Problem is one thing wrong with a configuration.
type Problem struct {
	// Path is the field path in YAML terms: "store.dsn",
	// "backends.aws.region", "keys[1].backend"; a name that is not a plain
	// word is quoted: backends["my kms"]. It is empty for a problem with
	// the whole document (a YAML syntax error).
	Path string
	// Line is the 1-based line of the YAML text the problem is at, or of
	// the nearest enclosing section for a missing field; 0 when unknown
	// (a Config not read from YAML).
	Line int
	// Message says what is wrong and how to fix it. It never holds the
	// value of a secret.
	Message string
}

// String returns "path: message", or the message alone when Path is empty.
func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// ValidationError is every problem found in a configuration. Parse, Load
// and Validate return it (Parse and Load also for YAML syntax errors, as a
// problem with an empty Path), so that callers can print each field path.
type ValidationError struct {
	// File is the configuration file, when the configuration was read by
	// Load; Error then prefixes each line with "file:line: ".
	File string
	// Problems are in document order where lines are known.
	Problems []Problem
}

// Error prints one problem per line.
func (e *ValidationError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File)
			if p.Line > 0 {
				fmt.Fprintf(&b, ":%d", p.Line)
			}
			b.WriteString(": ")
		}
		b.WriteString(p.String())
	}
	if len(e.Problems) == 0 {
		return "invalid configuration"
	}
	return b.String()
}

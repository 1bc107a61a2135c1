package main

import (
	"strconv"
	"strings"
	"unicode"
)

// printable makes user-provided text safe to print on a terminal: text of
// printable characters is returned as it is, anything else (terminal
// escapes, bells, carriage returns, invalid UTF-8) is quoted the way
// strconv.Quote does, so that it shows as \x1b or \a instead of acting.
// JSON output does not need it: encoding/json escapes control characters.
func printable(s string) string {
	for _, r := range s {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// checkLabel refuses a DEK label with control characters (a terminal
// escape, a newline that would forge a log line): labels end up in
// terminals and logs. It returns a usage error naming the first one.
func checkLabel(label string) error {
	if i := strings.IndexFunc(label, func(r rune) bool {
		return unicode.IsControl(r) || r == unicode.ReplacementChar || unicode.Is(unicode.Bidi_Control, r)
	}); i >= 0 {
		return usagef("--label: control character %s at byte %d: labels are printed to terminals and logs; use printable text", strconv.QuoteRune([]rune(label[i:])[0]), i)
	}
	if len(label) > maxLabelBytes {
		return usagef("--label: %d bytes; at most %d", len(label), maxLabelBytes)
	}
	return nil
}

// maxLabelBytes bounds a label given on the command line.
const maxLabelBytes = 1024

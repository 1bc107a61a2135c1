package httpapi

import (
	"strings"
	"unicode/utf8"

	"github.com/rekeyhq/rekey/internal/redact"
)

// maxErrorLen bounds an error message shown in a response.
const maxErrorLen = 1000

// cleanError renders err for a response: on one line, bounded in length,
// with credentials (URL user information, password=… pairs) replaced by
// REDACTED (redact.Text). Stores and backends promise that their errors
// carry no secrets; this is a second line of defence for what reaches the
// network, not a licence to put secrets in errors.
func cleanError(err error) string {
	return cleanText(err.Error())
}

func cleanText(s string) string {
	s = redact.Text(s)
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > maxErrorLen {
		cut := maxErrorLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

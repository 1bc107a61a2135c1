package httpapi

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// maxErrorLen bounds an error message shown in a response.
const maxErrorLen = 1000

var (
	// urlUserinfo matches the password of a URL's userinfo:
	// postgres://user:PASSWORD@host.
	urlUserinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@`)
	// secretPair matches key=value pairs that name a secret, as in a
	// libpq connection string: password=PASSWORD.
	secretPair = regexp.MustCompile(`(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key)=("[^"]*"|'[^']*'|[^\s&;,]+)`)
)

// cleanError renders err for a response: on one line, bounded in length,
// with URL passwords and password=… pairs replaced by REDACTED. Stores and
// backends promise that their errors carry no secrets; this is a second
// line of defence for what reaches the network, not a licence to put
// secrets in errors.
func cleanError(err error) string {
	return cleanText(err.Error())
}

func cleanText(s string) string {
	s = urlUserinfo.ReplaceAllString(s, "$1:REDACTED@")
	s = secretPair.ReplaceAllString(s, "$1=REDACTED")
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

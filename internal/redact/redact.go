// Package redact removes credentials from text that is about to be shown:
// connection strings (DSN) and free text such as error messages (Text).
// It is rekey's one credential redactor; config, httpapi and report use it.
//
// Redaction is a second line of defence: stores and backends promise that
// their errors carry no secrets. It recognises URL user information
// (scheme://user:password@host) and key=value pairs whose key names a
// secret (password=, token=, api_key=, ...), bare or quoted.
package redact

import (
	"net/url"
	"regexp"
)

// Marker replaces a credential in Text's output.
const Marker = "REDACTED"

// dsnMarker replaces a password in DSN's output; it is what
// url.URL.Redacted writes.
const dsnMarker = "xxxxx"

var (
	// dsnPassword matches the password of a libpq key=value connection
	// string, bare or single-quoted with backslash escapes.
	dsnPassword = regexp.MustCompile(`(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)`)
	// urlUserinfo matches the user information of a URL in free text, up
	// to its last '@' before a '/' or a space, so that an unescaped '@' in
	// a password does not leave the rest of it behind.
	urlUserinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/\s]+@`)
	// secretPair matches a key=value pair whose key names a secret
	// (sslpassword, client_secret, aws_secret_access_key too), with the
	// value bare, single- or double-quoted.
	secretPair = regexp.MustCompile(`(?i)\b([a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key))(\s*=\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&;,]+)`)
)

// DSN returns the connection string s with its password replaced by
// "xxxxx": for a URL (postgres://user:pw@host/db) the password of its user
// information, as url.URL.Redacted does; otherwise every password=VALUE of
// a key=value string (password='quoted \' value' too). A string without a
// password comes back unchanged.
//
// The output is stable from one release to the next: the audit anchor
// file names a store by it, so changing it would orphan existing anchors.
func DSN(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return dsnPassword.ReplaceAllString(s, "${1}"+dsnMarker)
}

// Text returns free text (an error message, a log line) with credentials
// replaced by "REDACTED": the whole user information of every URL in it
// (scheme://REDACTED@host: a user name alone may be a token), and the value
// of every key=value pair whose key names a secret (password=REDACTED).
// Everything else is unchanged.
func Text(s string) string {
	s = urlUserinfo.ReplaceAllString(s, "${1}"+Marker+"@")
	return secretPair.ReplaceAllString(s, "${1}${2}"+Marker)
}

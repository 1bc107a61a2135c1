package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// expand replaces ${VAR} in s with the value of the environment variable
// VAR, and $$ with $. Any other $ is an error, so that a forgotten brace
// ($VAR) is not taken literally. Errors name variables but never repeat s:
// s may be a secret.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	var unset []string
	for i := 0; i < len(s); {
		c := s[i]
		if c != '$' {
			b.WriteByte(c)
			i++
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == '$':
			b.WriteByte('$')
			i += 2
		case i+1 < len(s) && s[i+1] == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", errors.New("unterminated ${: write ${VAR} for an environment variable or $$ for a literal $")
			}
			name := s[i+2 : i+2+end]
			if !isEnvName(name) {
				return "", errors.New("bad variable reference: ${...} must hold a name of letters, digits and _ not starting with a digit (write $$ for a literal $)")
			}
			v, ok := lookup(name)
			if !ok && !slices.Contains(unset, name) {
				unset = append(unset, name)
			}
			b.WriteString(v)
			i += 2 + end + 1
		default:
			return "", errors.New("a $ not followed by { or $: write ${VAR} for an environment variable or $$ for a literal $")
		}
	}
	switch len(unset) {
	case 0:
		return b.String(), nil
	case 1:
		return "", fmt.Errorf("environment variable %s is not set (write $$ for a literal $)", unset[0])
	default:
		return "", fmt.Errorf("environment variables %s are not set (write $$ for a literal $)", strings.Join(unset, ", "))
	}
}

func isEnvName(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

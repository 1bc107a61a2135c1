package keyprotect

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/rekeyhq/rekey"
)

// ErrThrottled is in the chain of the *rekey.UnreachableError returned
// when Key Protect or IAM answers 429 Too Many Requests: the request is
// transient (the middleware retries it with backoff) and errors.Is(err,
// ErrThrottled) tells throttling apart from an outage.
// It also matches rekey.ErrThrottled, which kmsmw's adaptive rate reacts
// to.
var ErrThrottled error = throttledError{"throttled: HTTP 429 Too Many Requests"}

// throttledError is ErrThrottled's type: it matches rekey.ErrThrottled too.
type throttledError struct{ msg string }

func (e throttledError) Error() string        { return e.msg }
func (e throttledError) Is(target error) bool { return target == rekey.ErrThrottled }

// ErrAuth is in the chain of every error that means the credentials were
// refused: IAM refused the API key, or Key Protect refused the bearer
// token (HTTP 401 after a fresh token, or 403). It is not transient: fix
// the API key or its access policy.
var ErrAuth = errors.New("credentials refused")

// AuthError reports refused credentials. Its message names the backend
// and what to fix, never the API key or the token.
type AuthError struct {
	Backend string // backend name (config key)
	Service string // "IAM" or "Key Protect"
	Status  int    // HTTP status
	Detail  string // the service's message, with the API key redacted
	Fix     string
}

// Error returns the problem and its fix.
func (e *AuthError) Error() string {
	return fmt.Sprintf("keyprotect backend %s: %s refused the credentials (HTTP %d %s%s): %s",
		e.Backend, e.Service, e.Status, http.StatusText(e.Status), detail(e.Detail), e.Fix)
}

// Is makes errors.Is(err, ErrAuth) hold.
func (e *AuthError) Is(target error) bool { return target == ErrAuth }

func detail(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

// errorBody is Key Protect's error reply (collectionType
// application/vnd.ibm.kms.error+json).
type errorBody struct {
	Resources []struct {
		ErrorMsg string `json:"errorMsg"`
		Reasons  []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"reasons"`
	} `json:"resources"`
}

// serviceMessage returns the message of a Key Protect error body ("" when
// the body is not one), as "errorMsg (CODE: message)".
func serviceMessage(body []byte) string {
	var eb errorBody
	if json.Unmarshal(body, &eb) != nil || len(eb.Resources) == 0 {
		return ""
	}
	r := eb.Resources[0]
	msg := r.ErrorMsg
	var reasons []string
	for _, x := range r.Reasons {
		reasons = append(reasons, strings.TrimSpace(x.Code+": "+x.Message))
	}
	if len(reasons) > 0 {
		msg += " (" + strings.Join(reasons, "; ") + ")"
	}
	return msg
}

// reasonCode returns the first reason code of a Key Protect error body.
func reasonCode(body []byte) string {
	var eb errorBody
	if json.Unmarshal(body, &eb) != nil || len(eb.Resources) == 0 || len(eb.Resources[0].Reasons) == 0 {
		return ""
	}
	return eb.Resources[0].Reasons[0].Code
}

// mapStatus is the one place where a Key Protect HTTP failure becomes a
// rekey error. op is the request ("wrap", "unwrap", "rewrap",
// "create key", ...), what names the key or the request for the message,
// msg is the service's message (already redacted).
func (c *Client) mapStatus(op, what string, status int, body []byte, msg string) error {
	where := fmt.Sprintf("keyprotect backend %s: %s %s", c.name, op, what)
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return &AuthError{Backend: c.name, Service: "Key Protect", Status: status, Detail: msg,
			Fix: fmt.Sprintf("give the API key's identity a role that may create, rotate, wrap and unwrap keys (Writer or Manager) on Key Protect instance %s, and check instance_id", c.instance)}
	case status == http.StatusTooManyRequests:
		return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("%s: %w%s: lower rate_limit or retry later", where, ErrThrottled, detail(msg))}
	case status >= 500:
		return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("%s: HTTP %d %s%s", where, status, http.StatusText(status), detail(msg))}
	case status == http.StatusNotFound || status == http.StatusGone:
		return fmt.Errorf("%s: %w (HTTP %d%s): the key was deleted from instance %s, or backend_ref is wrong", where, rekey.ErrKeyNotFound, status, detail(msg), c.instance)
	case status == http.StatusConflict && op == "create key":
		return fmt.Errorf("%s: %w (HTTP 409%s)", where, rekey.ErrKeyExists, detail(msg))
	case (status == http.StatusBadRequest || status == http.StatusUnprocessableEntity) && (op == "unwrap" || op == "rewrap"):
		return fmt.Errorf("%s: %w (HTTP %d%s)", where, rekey.ErrInvalidCiphertext, status, detail(msg))
	case status == http.StatusBadRequest:
		return fmt.Errorf("%s: %w (HTTP 400%s)", where, rekey.ErrInvalidArgument, detail(msg))
	case status == http.StatusConflict:
		// A key that is not active (suspended, deactivated, destroyed)
		// refuses actions with 409.
		return fmt.Errorf("%s: %w (HTTP 409%s): enable the key in Key Protect", where, rekey.ErrVersionDisabled, detail(msg))
	}
	return fmt.Errorf("%s: unexpected HTTP %d %s%s", where, status, http.StatusText(status), detail(msg))
}

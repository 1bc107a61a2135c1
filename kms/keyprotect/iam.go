package keyprotect

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rekeyhq/rekey"
)

// apiKeyGrant is IAM's grant type for exchanging an API key for a token.
const apiKeyGrant = "urn:ibm:params:oauth:grant-type:apikey"

// refreshFraction is how much of a token's lifetime passes before it is
// refreshed: early enough that a request never carries an expired token.
const refreshFraction = 0.8

// tokenSource exchanges the API key for a bearer token at IAM, caches it,
// and refreshes it at refreshFraction of its lifetime. One exchange runs at
// a time; concurrent callers wait for it.
type tokenSource struct {
	c   *Client
	url string // IAM base URL

	mu        sync.Mutex
	token     string
	refreshAt time.Time
}

// iamToken is IAM's token reply.
type iamToken struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

// iamError is IAM's error reply.
type iamError struct {
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

// get returns a valid token. stale, when not empty, is a token the service
// refused (HTTP 401): a new one is fetched unless another caller already
// replaced it.
func (ts *tokenSource) get(ctx context.Context, stale string) (string, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	now := ts.c.now()
	if ts.token != "" && ts.token != stale && now.Before(ts.refreshAt) {
		return ts.token, nil
	}
	tok, life, err := ts.fetch(ctx)
	if err != nil {
		return "", err
	}
	ts.token = tok
	ts.refreshAt = now.Add(time.Duration(float64(life) * refreshFraction))
	return tok, nil
}

// fetch makes one token request.
func (ts *tokenSource) fetch(ctx context.Context) (string, time.Duration, error) {
	form := url.Values{"grant_type": {apiKeyGrant}, "apikey": {ts.c.apiKey()}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.url+"/identity/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, fmt.Errorf("keyprotect backend %s: IAM token request: %w", ts.c.name, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	ts.c.iamRequests.Add(1)
	resp, err := ts.c.hc.Do(req)
	if err != nil {
		// A *url.Error names the IAM URL only: the key is in the body.
		return "", 0, fmt.Errorf("keyprotect backend %s: IAM token request: %w", ts.c.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", 0, fmt.Errorf("keyprotect backend %s: IAM token reply: %w", ts.c.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ie iamError
		_ = json.Unmarshal(body, &ie)
		msg := ts.c.redact(strings.TrimSpace(ie.ErrorCode + " " + ie.ErrorMessage))
		switch {
		case resp.StatusCode == http.StatusTooManyRequests:
			return "", 0, &rekey.UnreachableError{Service: ts.c.service, Err: fmt.Errorf("keyprotect backend %s: IAM token: %w%s", ts.c.name, ErrThrottled, detail(msg))}
		case resp.StatusCode >= 500:
			return "", 0, &rekey.UnreachableError{Service: ts.c.service, Err: fmt.Errorf("keyprotect backend %s: IAM token: HTTP %d%s", ts.c.name, resp.StatusCode, detail(msg))}
		case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return "", 0, &AuthError{Backend: ts.c.name, Service: "IAM", Status: resp.StatusCode, Detail: msg,
				Fix: fmt.Sprintf("the API key (%s) is wrong, deleted or locked: create a new one (ibmcloud iam api-key-create) and set it there", ts.c.keySource)}
		}
		return "", 0, fmt.Errorf("keyprotect backend %s: IAM token: unexpected HTTP %d%s", ts.c.name, resp.StatusCode, detail(msg))
	}
	var t iamToken
	if err := json.Unmarshal(body, &t); err != nil || t.AccessToken == "" {
		return "", 0, fmt.Errorf("keyprotect backend %s: IAM token reply has no access_token: is iam_endpoint IBM Cloud IAM?", ts.c.name)
	}
	if t.TokenType != "" && !strings.EqualFold(t.TokenType, "Bearer") {
		return "", 0, fmt.Errorf("keyprotect backend %s: IAM issued a %q token, want Bearer", ts.c.name, t.TokenType)
	}
	life := time.Duration(t.ExpiresIn) * time.Second
	if life <= 0 {
		life = time.Minute // no lifetime given: refresh soon rather than never
	}
	return t.AccessToken, life, nil
}

package vault

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// authSource gives the token for each request: a static one, one read
// from a file (read again when the file changes), or one from an AppRole
// login (logged in again at two thirds of its lifetime, or when Vault
// refused it). It sets the token on the API client when it changes. No
// token or secret ID ever goes into an error or a log line.
type authSource struct {
	c       *Client
	now     func() time.Time
	static  string
	file    string
	appRole *AppRole

	mu      sync.Mutex
	current string    // the token in use ("" = none yet)
	renewAt time.Time // AppRole: log in again after this (zero: never)
	checked time.Time // token file: last stat
	modTime time.Time // token file: modification time of what was read
	size    int64
}

// fileCheckEvery is how often the token file is looked at for a change.
const fileCheckEvery = time.Second

// renewable reports whether a token Vault refused may be replaced by
// another (a file that may have changed, a new AppRole login).
func (a *authSource) renewable() bool { return a.static == "" }

// describe says where the token comes from, for errors.
func (a *authSource) describe() string {
	switch {
	case a.file != "":
		return "from token_file " + a.file
	case a.appRole != nil:
		return "from an AppRole login at auth/" + a.appRoleMount()
	}
	return "from the environment (token_env)"
}

func (a *authSource) appRoleMount() string {
	if a.appRole == nil || strings.Trim(a.appRole.Mount, "/") == "" {
		return "approle"
	}
	return strings.Trim(a.appRole.Mount, "/")
}

// invalidate drops token, which Vault refused, so that the next token call
// reads the file again or logs in again.
func (a *authSource) invalidate(token string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.current == token {
		a.current = ""
		a.checked = time.Time{}
		a.modTime = time.Time{}
	}
}

// token returns the token to send now.
func (a *authSource) token(ctx context.Context) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	switch {
	case a.static != "":
		a.set(a.static)
	case a.file != "":
		if a.current == "" || now.Sub(a.checked) >= fileCheckEvery {
			a.checked = now
			fi, err := os.Stat(a.file)
			if err != nil {
				return "", a.c.fileErr("token_file", a.file, err)
			}
			if a.current == "" || !fi.ModTime().Equal(a.modTime) || fi.Size() != a.size {
				tok, err := a.readTokenFileLocked()
				if err != nil {
					return "", err
				}
				a.modTime, a.size = fi.ModTime(), fi.Size()
				a.set(tok)
			}
		}
	case a.appRole != nil:
		if a.current == "" || (!a.renewAt.IsZero() && now.After(a.renewAt)) {
			tok, ttl, err := a.loginAppRole(ctx)
			if err != nil {
				return "", err
			}
			a.renewAt = time.Time{}
			if ttl > 0 {
				a.renewAt = now.Add(ttl * 2 / 3)
			}
			a.set(tok)
			a.c.log.Info("logged in to Vault with AppRole", "backend", a.c.name, "token_ttl", ttl.String())
		}
	}
	return a.current, nil
}

func (a *authSource) set(tok string) {
	if tok != a.current {
		a.current = tok
		a.c.api.SetToken(tok)
	}
}

// readTokenFile reads the token file (for New: it must be there).
func (a *authSource) readTokenFile() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readTokenFileLocked()
}

func (a *authSource) readTokenFileLocked() (string, error) {
	return a.c.readSecretFile("token_file", a.file)
}

// readSecretFile reads a token or secret ID from path (setting names the
// setting, for errors): it must be non-empty and not readable or writable
// by everyone (group read is allowed: Vault Agent writes its sink 0640).
func (c *Client) readSecretFile(setting, path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", c.fileErr(setting, path, err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("vault backend %s: %s %s is accessible to every user (mode %v): chmod 600 (or 640) it", c.name, setting, path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", c.fileErr(setting, path, err)
	}
	defer clear(b)
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("vault backend %s: %s %s is empty: write the secret into it", c.name, setting, path)
	}
	return s, nil
}

func (c *Client) fileErr(setting, path string, err error) error {
	return fmt.Errorf("vault backend %s: %s %s cannot be read (%v): fix the path or its permissions", c.name, setting, path, unwrapPathErr(err))
}

// unwrapPathErr drops the path from an *os.PathError (the message names it
// already).
func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// loginAppRole logs in with AppRole and returns the token and its
// lifetime (0: no expiry).
func (a *authSource) loginAppRole(ctx context.Context) (string, time.Duration, error) {
	c := a.c
	secret := a.appRole.SecretID
	if a.appRole.SecretIDFile != "" {
		s, err := c.readSecretFile("secret_id_file", a.appRole.SecretIDFile)
		if err != nil {
			return "", 0, err
		}
		secret = s
	}
	body, _ := json.Marshal(map[string]string{"role_id": a.appRole.RoleID, "secret_id": secret})
	defer clear(body)
	path := "auth/" + a.appRoleMount() + "/login"
	resp, err := c.login.Logical().WriteRawWithContext(ctx, path, body)
	if resp == nil {
		if err == nil {
			err = fmt.Errorf("no answer")
		}
		return "", 0, c.transportErr(ctx, "AppRole login", err)
	}
	defer resp.Body.Close()
	var out struct {
		Auth *struct {
			ClientToken   string `json:"client_token"`
			LeaseDuration int64  `json:"lease_duration"`
		} `json:"auth"`
		Errors []string `json:"errors"`
	}
	derr := json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode >= 400 {
		rep := &reply{status: resp.StatusCode, Errors: out.Errors}
		switch {
		case resp.StatusCode == 429 || resp.StatusCode >= 500:
			return "", 0, c.statusErr("AppRole login", "-", path, rep)
		}
		return "", 0, fmt.Errorf("vault backend %s: AppRole login at %s refused (HTTP %d: %s): check role_id and the secret ID (secret_id_env or secret_id_file), which may have expired",
			c.name, path, resp.StatusCode, strings.Join(out.Errors, "; "))
	}
	if derr != nil || out.Auth == nil || out.Auth.ClientToken == "" {
		return "", 0, fmt.Errorf("vault backend %s: AppRole login at %s: Vault answered no token", c.name, path)
	}
	return out.Auth.ClientToken, time.Duration(out.Auth.LeaseDuration) * time.Second, nil
}

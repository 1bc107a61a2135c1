// Package transitserver is an in-process stand-in for HashiCorp Vault's
// Transit secrets engine, for tests only. It is NOT Vault: no Vault or
// OpenBao server can be installed where rekey is tested, so this server
// serves, over real HTTP on 127.0.0.1, the few endpoints the vault backend
// (package kms/vault) uses, and does the cryptography and key bookkeeping
// with Vault's own Transit key-policy code (github.com/hashicorp/vault/sdk
// helper/keysutil, on logical.InmemStorage): ciphertexts are real
// "vault:vN:…" Transit ciphertexts, rotation, min_decryption_version,
// min_encryption_version and trimming behave as keysutil makes them.
//
// What is Vault's HTTP layer around keysutil (routing, the checks of the
// config and trim endpoints, batch status codes, error bodies, tokens,
// AppRole login, sys/health, sealing) is written here after Vault's
// documented behaviour, and is only as faithful as that.
//
// Endpoints (under /v1/, JSON, token in X-Vault-Token):
//
//	GET  sys/health                    (no token; honours sealedcode=)
//	POST auth/approle/login            role_id, secret_id → auth.client_token
//	GET  auth/token/lookup-self
//	POST MOUNT/keys/NAME               create (type aes256-gcm96); an existing key answers with a warning
//	GET  MOUNT/keys/NAME
//	DELETE MOUNT/keys/NAME             only with deletion_allowed (HTTP 400 otherwise)
//	POST MOUNT/keys/NAME/rotate
//	POST MOUNT/keys/NAME/config        min_decryption_version, min_encryption_version, deletion_allowed
//	POST MOUNT/keys/NAME/trim          min_available_version
//	POST MOUNT/encrypt/NAME            plaintext, key_version (no upsert: an unknown key is an error)
//	POST MOUNT/decrypt/NAME            ciphertext
//	POST MOUNT/rewrap/NAME             ciphertext, key_version, or batch_input
//
// PUT is accepted wherever POST is (the Vault client writes with PUT).
// Encrypt never creates a key: Transit does that for a token with the
// create capability unless upsert is disabled, and rekey's guidance is to
// disable it; this server behaves as Transit with upsert disabled.
package transitserver

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/helper/errutil"
	"github.com/hashicorp/vault/sdk/helper/keysutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// Options configures a Server. The zero value serves mount "transit" to
// the token "test-root-token" with no AppRole.
type Options struct {
	// Token is a token every endpoint accepts ("" = "test-root-token").
	Token string
	// Mount is the Transit mount path ("" = "transit").
	Mount string
	// Namespace, when set, must be in every request's X-Vault-Namespace
	// header (else 403), as a token of one namespace is refused in another.
	Namespace string
	// RoleID and SecretID, when both set, enable AppRole login.
	RoleID, SecretID string
	// TokenTTL is the lifetime of tokens from AppRole login (0 = 1h).
	TokenTTL time.Duration
}

// Counts are the requests a Server answered, by endpoint. A batch re-wrap
// is one Rewrap call carrying RewrapItems items; a single re-wrap is one
// call and one item.
type Counts struct {
	Health, Login, Lookup            int64
	Create, Read, Rotate             int64
	Config, Trim, Delete             int64
	Encrypt, Decrypt                 int64
	Rewrap, RewrapBatch, RewrapItems int64
	Denied, Sealed, Throttled        int64
}

// Server is a running stand-in. It is safe for concurrent use.
type Server struct {
	// URL is the server's address, http://127.0.0.1:PORT.
	URL string

	opts    Options
	lm      *keysutil.LockManager
	storage logical.Storage
	srv     *http.Server
	ln      net.Listener

	sealed    atomic.Bool
	throttled atomic.Bool

	mu      sync.Mutex
	tokens  map[string]time.Time // AppRole tokens and their expiry
	counts  Counts
	revoked bool // the static token was revoked
}

// Start starts a Server on 127.0.0.1 on a free port. Close it when done.
func Start(opts Options) (*Server, error) {
	if opts.Token == "" {
		opts.Token = "test-root-token"
	}
	if opts.Mount == "" {
		opts.Mount = "transit"
	}
	if opts.TokenTTL == 0 {
		opts.TokenTTL = time.Hour
	}
	lm, err := keysutil.NewLockManager(true, 0)
	if err != nil {
		return nil, fmt.Errorf("transitserver: lock manager: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("transitserver: listen: %w", err)
	}
	s := &Server{
		URL:     "http://" + ln.Addr().String(),
		opts:    opts,
		lm:      lm,
		storage: new(logical.InmemStorage),
		ln:      ln,
		tokens:  map[string]time.Time{},
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops the server at once (open connections are closed).
func (s *Server) Close() error { return s.srv.Close() }

// Token returns the static token the server accepts.
func (s *Server) Token() string { return s.opts.Token }

// SetSealed seals or unseals the server: while sealed, sys/health reports
// sealed and every other endpoint answers 503 "Vault is sealed".
func (s *Server) SetSealed(sealed bool) { s.sealed.Store(sealed) }

// SetThrottled makes every endpoint but sys/health answer 429 (a rate
// limit quota) while on.
func (s *Server) SetThrottled(on bool) { s.throttled.Store(on) }

// RevokeTokens revokes every token: the static one (for good) and those
// AppRole login gave (a new login gives a working one).
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked = true
	clear(s.tokens)
}

// Counts returns the requests answered so far.
func (s *Server) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts
}

// KeyVersions returns the key's latest version and its
// min_decryption_version and min_available_version, for tests that look
// at the server's side; ok is false for an unknown key.
func (s *Server) KeyVersions(name string) (latest, minDecryption, minAvailable int, ok bool) {
	ctx := context.Background()
	p, _, err := s.lm.GetPolicy(ctx, keysutil.PolicyRequest{Storage: s.storage, Name: name}, rand.Reader)
	if err != nil || p == nil {
		return 0, 0, 0, false
	}
	p.Lock(false)
	defer p.Unlock()
	return p.LatestVersion, p.MinDecryptionVersion, p.MinAvailableVersion, true
}

func (s *Server) count(f func(c *Counts)) {
	s.mu.Lock()
	f(&s.counts)
	s.mu.Unlock()
}

// ServeHTTP routes one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, ok := strings.CutPrefix(r.URL.Path, "/v1/")
	if !ok {
		writeErrors(w, http.StatusNotFound, "no handler for route")
		return
	}
	if path == "sys/health" && r.Method == http.MethodGet {
		s.serveHealth(w, r)
		return
	}
	if s.sealed.Load() {
		s.count(func(c *Counts) { c.Sealed++ })
		writeErrors(w, http.StatusServiceUnavailable, "Vault is sealed")
		return
	}
	if s.throttled.Load() {
		s.count(func(c *Counts) { c.Throttled++ })
		writeErrors(w, http.StatusTooManyRequests, "request path \""+path+"\": rate limit quota exceeded")
		return
	}
	if s.opts.Namespace != "" && strings.Trim(r.Header.Get("X-Vault-Namespace"), "/") != strings.Trim(s.opts.Namespace, "/") {
		s.count(func(c *Counts) { c.Denied++ })
		writeErrors(w, http.StatusForbidden, "permission denied")
		return
	}
	if path == "auth/approle/login" && isWrite(r) {
		s.serveLogin(w, r)
		return
	}
	if !s.authorized(r.Header.Get("X-Vault-Token")) {
		s.count(func(c *Counts) { c.Denied++ })
		writeErrors(w, http.StatusForbidden, "permission denied")
		return
	}
	if path == "auth/token/lookup-self" && r.Method == http.MethodGet {
		s.count(func(c *Counts) { c.Lookup++ })
		writeData(w, http.StatusOK, map[string]any{"ttl": 0}, nil)
		return
	}
	rest, ok := strings.CutPrefix(path, strings.Trim(s.opts.Mount, "/")+"/")
	if !ok {
		writeErrors(w, http.StatusNotFound, fmt.Sprintf("no handler for route %q", path))
		return
	}
	var body map[string]any
	if isWrite(r) {
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 32<<20))
		dec.UseNumber()
		if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			writeErrors(w, http.StatusBadRequest, "failed to parse JSON input: "+err.Error())
			return
		}
	}
	parts := strings.Split(rest, "/")
	ctx := r.Context()
	switch {
	case len(parts) == 2 && parts[0] == "keys" && r.Method == http.MethodGet:
		s.readKey(ctx, w, parts[1])
	case len(parts) == 2 && parts[0] == "keys" && r.Method == http.MethodDelete:
		s.deleteKey(ctx, w, parts[1])
	case len(parts) == 2 && parts[0] == "keys" && isWrite(r):
		s.createKey(ctx, w, parts[1], body)
	case len(parts) == 3 && parts[0] == "keys" && parts[2] == "rotate" && isWrite(r):
		s.rotateKey(ctx, w, parts[1])
	case len(parts) == 3 && parts[0] == "keys" && parts[2] == "config" && isWrite(r):
		s.configKey(ctx, w, parts[1], body)
	case len(parts) == 3 && parts[0] == "keys" && parts[2] == "trim" && isWrite(r):
		s.trimKey(ctx, w, parts[1], body)
	case len(parts) == 2 && parts[0] == "encrypt" && isWrite(r):
		s.encrypt(ctx, w, parts[1], body)
	case len(parts) == 2 && parts[0] == "decrypt" && isWrite(r):
		s.decrypt(ctx, w, parts[1], body)
	case len(parts) == 2 && parts[0] == "rewrap" && isWrite(r):
		s.rewrap(ctx, w, parts[1], body)
	default:
		writeErrors(w, http.StatusMethodNotAllowed, fmt.Sprintf("unsupported operation %s on %q (this stand-in serves only what rekey uses)", r.Method, path))
	}
}

func isWrite(r *http.Request) bool { return r.Method == http.MethodPost || r.Method == http.MethodPut }

func (s *Server) authorized(token string) bool {
	if token == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if token == s.opts.Token {
		return !s.revoked
	}
	exp, ok := s.tokens[token]
	if ok && time.Now().After(exp) {
		delete(s.tokens, token)
		return false
	}
	return ok
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	s.count(func(c *Counts) { c.Health++ })
	sealed := s.sealed.Load()
	code := http.StatusOK
	if sealed {
		code = http.StatusServiceUnavailable
		if v, err := strconv.Atoi(r.URL.Query().Get("sealedcode")); err == nil && v >= 200 && v < 600 {
			code = v
		}
	}
	writeJSON(w, code, map[string]any{
		"initialized": true, "sealed": sealed, "standby": false,
		"version":         "transitserver (in-process Transit stand-in, not Vault)",
		"server_time_utc": time.Now().Unix(),
	})
}

func (s *Server) serveLogin(w http.ResponseWriter, r *http.Request) {
	s.count(func(c *Counts) { c.Login++ })
	var in struct {
		RoleID   string `json:"role_id"`
		SecretID string `json:"secret_id"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&in); err != nil {
		writeErrors(w, http.StatusBadRequest, "failed to parse JSON input")
		return
	}
	if s.opts.RoleID == "" || s.opts.SecretID == "" {
		writeErrors(w, http.StatusBadRequest, "no handler for route \"auth/approle/login\"")
		return
	}
	if in.RoleID != s.opts.RoleID || in.SecretID != s.opts.SecretID {
		writeErrors(w, http.StatusBadRequest, "invalid role or secret ID")
		return
	}
	b := make([]byte, 18)
	rand.Read(b)
	token := "hvs.stand-in." + base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	s.tokens[token] = time.Now().Add(s.opts.TokenTTL)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"auth": map[string]any{
			"client_token": token, "lease_duration": int(s.opts.TokenTTL / time.Second),
			"renewable": true, "policies": []string{"default", "rekey"},
		},
	})
}

// policy returns the named key's policy, or nil when there is none.
func (s *Server) policy(ctx context.Context, name string) (*keysutil.Policy, error) {
	p, _, err := s.lm.GetPolicy(ctx, keysutil.PolicyRequest{Storage: s.storage, Name: name}, rand.Reader)
	return p, err
}

func keyData(p *keysutil.Policy) map[string]any {
	keys := map[string]any{}
	for k, v := range p.Keys {
		keys[k] = v.CreationTime.Unix()
	}
	return map[string]any{
		"name": p.Name, "type": p.Type.String(), "latest_version": p.LatestVersion,
		"min_decryption_version": p.MinDecryptionVersion, "min_encryption_version": p.MinEncryptionVersion,
		"min_available_version": p.MinAvailableVersion, "deletion_allowed": p.DeletionAllowed,
		"derived": p.Derived, "exportable": p.Exportable, "supports_encryption": p.Type.EncryptionSupported(),
		"supports_decryption": p.Type.DecryptionSupported(), "keys": keys,
	}
}

func (s *Server) readKey(ctx context.Context, w http.ResponseWriter, name string) {
	s.count(func(c *Counts) { c.Read++ })
	p, err := s.policy(ctx, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if p == nil {
		writeErrors(w, http.StatusNotFound)
		return
	}
	p.Lock(false)
	defer p.Unlock()
	writeData(w, http.StatusOK, keyData(p), nil)
}

func (s *Server) createKey(ctx context.Context, w http.ResponseWriter, name string, body map[string]any) {
	s.count(func(c *Counts) { c.Create++ })
	typ := "aes256-gcm96"
	if v, ok := body["type"].(string); ok && v != "" {
		typ = v
	}
	if typ != "aes256-gcm96" {
		writeErrors(w, http.StatusBadRequest, fmt.Sprintf("unknown key type %q (this stand-in makes aes256-gcm96 keys only)", typ))
		return
	}
	if !validName(name) {
		writeErrors(w, http.StatusNotFound, fmt.Sprintf("unsupported path %q", "keys/"+name))
		return
	}
	p, upserted, err := s.lm.GetPolicy(ctx, keysutil.PolicyRequest{
		Storage: s.storage, Name: name, KeyType: keysutil.KeyType_AES256_GCM96, Upsert: true,
	}, rand.Reader)
	if err != nil {
		writeErr(w, err)
		return
	}
	p.Lock(false)
	defer p.Unlock()
	var warnings []string
	if !upserted {
		warnings = append(warnings, fmt.Sprintf("key %s already existed", name))
	}
	writeData(w, http.StatusOK, keyData(p), warnings)
}

// validName is Transit's key-name pattern: \w(([\w-.]+)?\w)?
func validName(name string) bool {
	word := func(c byte) bool {
		return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	}
	if name == "" || !word(name[0]) || !word(name[len(name)-1]) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !word(c) && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

func (s *Server) rotateKey(ctx context.Context, w http.ResponseWriter, name string) {
	s.count(func(c *Counts) { c.Rotate++ })
	p, err := s.policy(ctx, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if p == nil {
		writeErrors(w, http.StatusBadRequest, "key not found")
		return
	}
	p.Lock(true)
	defer p.Unlock()
	if err := p.Rotate(ctx, s.storage, rand.Reader); err != nil {
		writeErr(w, err)
		return
	}
	writeData(w, http.StatusOK, keyData(p), nil)
}

// intField reads an integer field of a JSON body; ok is false when absent.
func intField(body map[string]any, name string) (v int, ok bool, err error) {
	raw, ok := body[name]
	if !ok || raw == nil {
		return 0, false, nil
	}
	switch x := raw.(type) {
	case json.Number:
		n, err := strconv.Atoi(x.String())
		return n, true, err
	case string:
		n, err := strconv.Atoi(x)
		return n, true, err
	}
	return 0, true, fmt.Errorf("%s: expected an integer", name)
}

func (s *Server) configKey(ctx context.Context, w http.ResponseWriter, name string, body map[string]any) {
	s.count(func(c *Counts) { c.Config++ })
	p, err := s.policy(ctx, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if p == nil {
		writeErrors(w, http.StatusBadRequest, "no existing key named "+name+" could be found")
		return
	}
	p.Lock(true)
	defer p.Unlock()
	priorDec, priorEnc := p.MinDecryptionVersion, p.MinEncryptionVersion
	fail := func(msg string) {
		p.MinDecryptionVersion, p.MinEncryptionVersion = priorDec, priorEnc
		writeErrors(w, http.StatusBadRequest, msg)
	}
	dec, ok, err := intField(body, "min_decryption_version")
	if err != nil {
		fail(err.Error())
		return
	}
	if ok {
		if dec < 0 {
			fail("min decryption version cannot be negative")
			return
		}
		if dec == 0 {
			dec = 1
		}
		if dec != p.MinDecryptionVersion {
			if dec > p.LatestVersion {
				fail(fmt.Sprintf("cannot set min decryption version of %d, latest key version is %d", dec, p.LatestVersion))
				return
			}
			if dec < p.MinAvailableVersion {
				fail("min decryption version should not be less then min available version")
				return
			}
			p.MinDecryptionVersion = dec
		}
	}
	enc, ok, err := intField(body, "min_encryption_version")
	if err != nil {
		fail(err.Error())
		return
	}
	if ok {
		if enc < 0 {
			fail("min encryption version cannot be negative")
			return
		}
		if enc > p.LatestVersion {
			fail(fmt.Sprintf("cannot set min encryption version of %d, latest key version is %d", enc, p.LatestVersion))
			return
		}
		p.MinEncryptionVersion = enc
	}
	priorDel := p.DeletionAllowed
	if v, ok := body["deletion_allowed"]; ok {
		b, isBool := v.(bool)
		if !isBool {
			fail("deletion_allowed must be a boolean")
			return
		}
		p.DeletionAllowed = b
	}
	if p.MinEncryptionVersion > 0 && p.MinEncryptionVersion < p.MinDecryptionVersion {
		p.DeletionAllowed = priorDel
		fail("min decryption version should not be less than min encryption version")
		return
	}
	if err := p.Persist(ctx, s.storage); err != nil {
		p.MinDecryptionVersion, p.MinEncryptionVersion, p.DeletionAllowed = priorDec, priorEnc, priorDel
		writeErr(w, err)
		return
	}
	writeData(w, http.StatusOK, keyData(p), nil)
}

// deleteKey is DELETE MOUNT/keys/NAME: Transit deletes a key only when its
// deletion_allowed is true (HTTP 400 otherwise, as Vault answers), and
// answers 204.
func (s *Server) deleteKey(ctx context.Context, w http.ResponseWriter, name string) {
	s.count(func(c *Counts) { c.Delete++ })
	if err := s.lm.DeletePolicy(ctx, s.storage, name); err != nil {
		writeErrors(w, http.StatusBadRequest, fmt.Sprintf("error deleting policy %s: %s", name, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// AllowDeletion sets deletion_allowed of the Transit key name, as an
// operator would with `vault write transit/keys/NAME/config
// deletion_allowed=true`. It reports whether the key exists.
func (s *Server) AllowDeletion(name string, allowed bool) bool {
	ctx := context.Background()
	p, err := s.policy(ctx, name)
	if err != nil || p == nil {
		return false
	}
	p.Lock(true)
	defer p.Unlock()
	p.DeletionAllowed = allowed
	return p.Persist(ctx, s.storage) == nil
}

func (s *Server) trimKey(ctx context.Context, w http.ResponseWriter, name string, body map[string]any) {
	s.count(func(c *Counts) { c.Trim++ })
	p, err := s.policy(ctx, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if p == nil {
		writeErrors(w, http.StatusBadRequest, "invalid key name")
		return
	}
	p.Lock(true)
	defer p.Unlock()
	v, ok, err := intField(body, "min_available_version")
	switch {
	case err != nil:
		writeErrors(w, http.StatusBadRequest, err.Error())
		return
	case !ok:
		writeErrors(w, http.StatusBadRequest, "missing min_available_version")
		return
	case v < p.MinAvailableVersion:
		writeErrors(w, http.StatusBadRequest, "minimum available version cannot be decremented")
		return
	case p.MinEncryptionVersion == 0:
		writeErrors(w, http.StatusBadRequest, "minimum available version cannot be set when minimum encryption version is not set")
		return
	case p.MinDecryptionVersion == 0:
		writeErrors(w, http.StatusBadRequest, "minimum available version cannot be set when minimum decryption version is not set")
		return
	case v > p.MinEncryptionVersion:
		writeErrors(w, http.StatusBadRequest, "minimum available version cannot be greater than minmum encryption version")
		return
	case v > p.MinDecryptionVersion:
		writeErrors(w, http.StatusBadRequest, "minimum available version cannot be greater than minimum decryption version")
		return
	case v <= 0:
		writeErrors(w, http.StatusBadRequest, "minimum available version should be positive")
		return
	}
	prior := p.MinAvailableVersion
	p.MinAvailableVersion = v
	if err := p.Persist(ctx, s.storage); err != nil {
		p.MinAvailableVersion = prior
		writeErr(w, err)
		return
	}
	writeData(w, http.StatusOK, keyData(p), nil)
}

func (s *Server) encrypt(ctx context.Context, w http.ResponseWriter, name string, body map[string]any) {
	s.count(func(c *Counts) { c.Encrypt++ })
	if _, ok := body["batch_input"]; ok {
		writeErrors(w, http.StatusBadRequest, "batch_input on encrypt is not served by this stand-in")
		return
	}
	pt, _ := body["plaintext"].(string)
	ver, _, err := intField(body, "key_version")
	if err != nil {
		writeErrors(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err := s.policy(ctx, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if p == nil {
		writeErrors(w, http.StatusBadRequest, "encryption key not found")
		return
	}
	p.Lock(false)
	defer p.Unlock()
	ct, err := p.Encrypt(ver, nil, nil, pt)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeData(w, http.StatusOK, map[string]any{"ciphertext": ct, "key_version": versionOf(ct)}, nil)
}

func (s *Server) decrypt(ctx context.Context, w http.ResponseWriter, name string, body map[string]any) {
	s.count(func(c *Counts) { c.Decrypt++ })
	if _, ok := body["batch_input"]; ok {
		writeErrors(w, http.StatusBadRequest, "batch_input on decrypt is not served by this stand-in")
		return
	}
	ct, _ := body["ciphertext"].(string)
	if ct == "" {
		writeErrors(w, http.StatusBadRequest, "missing ciphertext to decrypt")
		return
	}
	p, err := s.policy(ctx, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if p == nil {
		writeErrors(w, http.StatusBadRequest, "encryption key not found")
		return
	}
	p.Lock(false)
	defer p.Unlock()
	pt, err := p.Decrypt(nil, nil, ct)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeData(w, http.StatusOK, map[string]any{"plaintext": pt}, nil)
}

// rewrapItem is one item of a re-wrap (batch_input, or the single one).
type rewrapItem struct {
	Ciphertext string `json:"ciphertext"`
	KeyVersion int    `json:"key_version"`
}

type rewrapResult struct {
	Ciphertext string `json:"ciphertext,omitempty"`
	KeyVersion int    `json:"key_version,omitempty"`
	Error      string `json:"error,omitempty"`
}

func (s *Server) rewrap(ctx context.Context, w http.ResponseWriter, name string, body map[string]any) {
	var items []rewrapItem
	raw, batch := body["batch_input"]
	if batch {
		b, _ := json.Marshal(raw)
		var in []struct {
			Ciphertext string      `json:"ciphertext"`
			KeyVersion json.Number `json:"key_version"`
		}
		if err := json.Unmarshal(b, &in); err != nil {
			writeErrors(w, http.StatusBadRequest, "failed to parse batch input: "+err.Error())
			return
		}
		if len(in) == 0 {
			writeErrors(w, http.StatusBadRequest, "missing batch input to process")
			return
		}
		for _, x := range in {
			v := 0
			if x.KeyVersion != "" {
				n, err := strconv.Atoi(x.KeyVersion.String())
				if err != nil {
					writeErrors(w, http.StatusBadRequest, "failed to parse batch input: key_version: "+err.Error())
					return
				}
				v = n
			}
			items = append(items, rewrapItem{x.Ciphertext, v})
		}
	} else {
		ct, _ := body["ciphertext"].(string)
		v, _, err := intField(body, "key_version")
		if err != nil {
			writeErrors(w, http.StatusBadRequest, err.Error())
			return
		}
		items = []rewrapItem{{ct, v}}
	}
	s.count(func(c *Counts) {
		c.Rewrap++
		c.RewrapItems += int64(len(items))
		if batch {
			c.RewrapBatch++
		}
	})
	p, err := s.policy(ctx, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if p == nil {
		writeErrors(w, http.StatusBadRequest, "encryption key not found")
		return
	}
	p.Lock(false)
	defer p.Unlock()
	results := make([]rewrapResult, len(items))
	userErrors, internalErrors := 0, 0
	for i, it := range items {
		if it.Ciphertext == "" {
			results[i].Error = "missing ciphertext to decrypt"
			userErrors++
			continue
		}
		pt, err := p.Decrypt(nil, nil, it.Ciphertext)
		if err == nil {
			var ct string
			ct, err = p.Encrypt(it.KeyVersion, nil, nil, pt)
			if err == nil {
				results[i] = rewrapResult{Ciphertext: ct, KeyVersion: versionOf(ct)}
				continue
			}
		}
		results[i].Error = err.Error()
		if isUserError(err) {
			userErrors++
		} else {
			internalErrors++
		}
	}
	if !batch {
		if results[0].Error != "" {
			code := http.StatusBadRequest
			if internalErrors > 0 {
				code = http.StatusInternalServerError
			}
			writeErrors(w, code, results[0].Error)
			return
		}
		writeData(w, http.StatusOK, map[string]any{"ciphertext": results[0].Ciphertext, "key_version": results[0].KeyVersion}, nil)
		return
	}
	// As Transit: a batch in which every item failed answers 400 (500 when
	// an item failed inside the server), with the results in the body.
	code := http.StatusOK
	if userErrors+internalErrors == len(items) {
		code = http.StatusBadRequest
		if internalErrors > 0 {
			code = http.StatusInternalServerError
		}
	}
	writeData(w, code, map[string]any{"batch_results": results}, nil)
}

// versionOf reads N from a "vault:vN:" ciphertext (0 when it cannot).
func versionOf(ct string) int {
	rest, ok := strings.CutPrefix(ct, "vault:v")
	if !ok {
		return 0
	}
	n, _, _ := strings.Cut(rest, ":")
	v, _ := strconv.Atoi(n)
	return v
}

func isUserError(err error) bool {
	var ue errutil.UserError
	return errors.As(err, &ue)
}

// writeErr answers keysutil's err: 400 for a user error, 500 otherwise.
func writeErr(w http.ResponseWriter, err error) {
	if isUserError(err) {
		writeErrors(w, http.StatusBadRequest, err.Error())
		return
	}
	writeErrors(w, http.StatusInternalServerError, err.Error())
}

func writeErrors(w http.ResponseWriter, code int, msgs ...string) {
	if msgs == nil {
		msgs = []string{}
	}
	writeJSON(w, code, map[string]any{"errors": msgs})
}

func writeData(w http.ResponseWriter, code int, data map[string]any, warnings []string) {
	writeJSON(w, code, map[string]any{
		"request_id": "", "lease_id": "", "renewable": false, "lease_duration": 0,
		"data": data, "wrap_info": nil, "warnings": warnings, "auth": nil,
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(b)
}

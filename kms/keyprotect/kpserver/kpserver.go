// Package kpserver is an in-process stand-in for IBM Key Protect's REST
// API v2 and for the IBM Cloud IAM token endpoint, for tests. It is NOT
// Key Protect: it follows the public API reference
// (https://cloud.ibm.com/apidocs/key-protect) for the endpoints rekey
// uses, and nothing more:
//
//   - POST /identity/token (form grant_type=urn:ibm:params:oauth:grant-type:apikey,
//     apikey=…): a bearer token that expires after Options.TokenTTL;
//     IAM's error body ({"errorCode","errorMessage"}) for an unknown key.
//   - GET/POST /api/v2/keys, GET /api/v2/keys/{id|alias}[/metadata],
//     GET /api/v2/keys/{id|alias}/versions, POST
//     /api/v2/keys/{id|alias}/actions/{wrap,unwrap,rewrap,rotate}, with
//     the Authorization: Bearer and bluemix-instance headers, the
//     metadata/resources envelopes, the application/vnd.ibm.kms.* media
//     types, keyVersion in wrap, unwrap and rewrap replies (unwrap also
//     returns rewrappedKey for a ciphertext under an older version) and the
//     error envelope (collectionType application/vnd.ibm.kms.error+json,
//     errorMsg, reasons). The reason codes and messages are this server's;
//     the status codes are the reference's.
//
// Root keys are real: every version is a random AES-256 key and wraps are
// AES-GCM, bound to the key, the version and the request's aad. Wrap and
// rewrap always use a key's newest version, as Key Protect does. Aliases
// are unique in the instance (409 on a duplicate). The versions list is
// returned newest first (the reference promises no order), so a client
// must order it by creationDate itself.
//
// Knobs for tests: Refuse (IAM refuses every API key and the API every
// token), Down (every request gets 503), Throttle (the next n requests
// get 429), ExpireTokens, and request counts (Count, Requests).
package kpserver

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Media types of the API.
const (
	mediaKey        = "application/vnd.ibm.kms.key+json"
	mediaKeyAction  = "application/vnd.ibm.kms.key_action+json"
	mediaError      = "application/vnd.ibm.kms.error+json"
	mediaVersion    = "application/vnd.ibm.kms.key.version+json"
	apiKeyGrantType = "urn:ibm:params:oauth:grant-type:apikey"
)

// Options configure a Server.
type Options struct {
	InstanceID string           // the only instance served; required
	APIKeys    []string         // API keys IAM accepts; at least one
	TokenTTL   time.Duration    // lifetime of issued tokens; 0 means 1 hour
	Now        func() time.Time // nil: time.Now
}

// Server is the stand-in. Its methods are safe for concurrent use.
type Server struct {
	opts Options
	now  func() time.Time

	mu       sync.Mutex
	tokens   map[string]time.Time // token → expiry
	keys     map[string]*key      // by id
	aliases  map[string]string    // alias → id
	order    []string             // key ids in creation order
	refuse   bool
	down     bool
	throttle int
	counts   map[string]int64 // by request kind
	total    int64
	http     *httptest.Server
}

type key struct {
	id, name, alias, desc string
	created               time.Time
	versions              []*version // oldest first
}

type version struct {
	id      string
	raw     [16]byte
	created time.Time
	aead    cipher.AEAD
}

// New returns a Server for opts.
func New(opts Options) *Server {
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = time.Hour
	}
	s := &Server{opts: opts, now: opts.Now, tokens: map[string]time.Time{}, keys: map[string]*key{},
		aliases: map[string]string{}, counts: map[string]int64{}}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Start serves s on a loopback port and returns its base URL (for both the
// Key Protect endpoint and iam_endpoint). Close stops it.
func (s *Server) Start() string {
	s.http = httptest.NewServer(s)
	return s.http.URL
}

// Close stops the server Start started.
func (s *Server) Close() {
	if s.http != nil {
		s.http.Close()
	}
}

// Refuse makes IAM refuse every API key (400) and the API every token
// (401) while on.
func (s *Server) Refuse(on bool) { s.mu.Lock(); s.refuse = on; s.mu.Unlock() }

// Down makes every request fail with 503 while on.
func (s *Server) Down(on bool) { s.mu.Lock(); s.down = on; s.mu.Unlock() }

// Throttle makes the next n requests fail with 429.
func (s *Server) Throttle(n int) { s.mu.Lock(); s.throttle = n; s.mu.Unlock() }

// ExpireTokens invalidates every token issued so far (the API answers 401
// to them), as if they had expired.
func (s *Server) ExpireTokens() { s.mu.Lock(); clear(s.tokens); s.mu.Unlock() }

// Count returns how many requests of kind were received: "token",
// "create", "list", "get", "versions", "wrap", "unwrap", "rewrap",
// "rotate" (refused ones included).
func (s *Server) Count(kind string) int64 { s.mu.Lock(); defer s.mu.Unlock(); return s.counts[kind] }

// Requests returns how many requests were received in all.
func (s *Server) Requests() int64 { s.mu.Lock(); defer s.mu.Unlock(); return s.total }

// Versions returns how many versions the key with that id or alias has
// (0 when there is none).
func (s *Server) Versions(idOrAlias string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.lookup(idOrAlias); k != nil {
		return len(k.versions)
	}
	return 0
}

// Keys returns how many keys the instance has.
func (s *Server) Keys() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.keys) }

func newUUID() (string, [16]byte) {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], b
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := requestKind(r)
	s.mu.Lock()
	s.counts[kind]++
	s.total++
	down, refuse := s.down, s.refuse
	throttled := s.throttle > 0
	if throttled {
		s.throttle--
	}
	s.mu.Unlock()
	switch {
	case down:
		writeError(w, http.StatusServiceUnavailable, "Service Unavailable: the service is temporarily unavailable", "SERVICE_UNAVAILABLE_ERR")
		return
	case throttled:
		writeError(w, http.StatusTooManyRequests, "Too Many Requests: the rate limit of the instance was exceeded", "RATE_LIMIT_ERR")
		return
	}
	if r.URL.Path == "/identity/token" {
		s.token(w, r, refuse)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/api/v2/keys") {
		writeError(w, http.StatusNotFound, "Not Found: no such endpoint", "NOT_FOUND_ERR")
		return
	}
	if !s.authorized(w, r, refuse) {
		return
	}
	s.keysAPI(w, r, kind)
}

func requestKind(r *http.Request) string {
	p := r.URL.Path
	switch {
	case p == "/identity/token":
		return "token"
	case p == "/api/v2/keys" && r.Method == http.MethodPost:
		return "create"
	case p == "/api/v2/keys":
		return "list"
	case strings.Contains(p, "/actions/"):
		return p[strings.LastIndex(p, "/")+1:]
	case strings.HasSuffix(p, "/versions"):
		return "versions"
	}
	return "get"
}

// token is IAM's POST /identity/token.
func (s *Server) token(w http.ResponseWriter, r *http.Request, refuse bool) {
	iamErr := func(status int, code, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]any{"errorCode": code, "errorMessage": msg,
			"context": map[string]any{"requestId": "kpserver", "requestType": "incoming.Identity_Token"}})
	}
	if r.Method != http.MethodPost {
		iamErr(http.StatusMethodNotAllowed, "BXNIM0109E", "Method not allowed.")
		return
	}
	if err := r.ParseForm(); err != nil {
		iamErr(http.StatusBadRequest, "BXNIM0109E", "Property missing or empty.")
		return
	}
	if r.PostForm.Get("grant_type") != apiKeyGrantType {
		iamErr(http.StatusBadRequest, "BXNIM0109E", "Unsupported grant_type.")
		return
	}
	apiKey := r.PostForm.Get("apikey")
	if apiKey == "" {
		iamErr(http.StatusBadRequest, "BXNIM0109E", "Property missing or empty. Property name: 'apikey'.")
		return
	}
	if refuse || !slices.Contains(s.opts.APIKeys, apiKey) {
		iamErr(http.StatusBadRequest, "BXNIM0415E", "Provided API key could not be found.")
		return
	}
	b := make([]byte, 24)
	rand.Read(b)
	tok := "kpserver." + base64.RawURLEncoding.EncodeToString(b)
	now := s.now()
	s.mu.Lock()
	s.tokens[tok] = now.Add(s.opts.TokenTTL)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok, "refresh_token": "not_supported", "token_type": "Bearer",
		"expires_in": int64(s.opts.TokenTTL / time.Second), "expiration": now.Add(s.opts.TokenTTL).Unix(),
		"scope": "ibm openid",
	})
}

// authorized checks the bearer token and the instance header.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request, refuse bool) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	exp, known := s.tokens[tok]
	s.mu.Unlock()
	if !ok || refuse || !known || !s.now().Before(exp) {
		writeError(w, http.StatusUnauthorized, "Unauthorized: The user does not have access to the specified resource", "UNAUTHORIZED_ERR")
		return false
	}
	switch inst := r.Header.Get("bluemix-instance"); {
	case inst == "":
		writeError(w, http.StatusBadRequest, "Bad Request: Missing bluemix-instance header", "BAD_HEADER_ERR")
		return false
	case inst != s.opts.InstanceID:
		writeError(w, http.StatusForbidden, "Forbidden: The user does not have access to the specified instance", "FORBIDDEN_ERR")
		return false
	}
	return true
}

// writeError writes Key Protect's error envelope.
func writeError(w http.ResponseWriter, status int, msg, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"metadata": map[string]any{"collectionType": mediaError, "collectionTotal": 1},
		"resources": []any{map[string]any{
			"errorMsg": msg,
			"reasons": []any{map[string]any{"code": code, "message": msg, "status": status,
				"moreInfo": "https://cloud.ibm.com/apidocs/key-protect"}},
		}},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func collection(typ string, items []any) map[string]any {
	return map[string]any{"metadata": map[string]any{"collectionType": typ, "collectionTotal": len(items)}, "resources": items}
}

func versionJSON(v *version) map[string]any {
	return map[string]any{"id": v.id, "creationDate": v.created.UTC().Format(time.RFC3339Nano)}
}

func (k *key) json() map[string]any {
	newest := k.versions[len(k.versions)-1]
	m := map[string]any{
		"type": mediaKey, "id": k.id, "name": k.name, "description": k.desc, "state": 1,
		"extractable": false, "algorithmType": "AES", "creationDate": k.created.UTC().Format(time.RFC3339Nano),
		"crn": "crn:v1:bluemix:public:kms:kpserver:a/0:instance:key:" + k.id, "keyVersion": versionJSON(newest),
	}
	if k.alias != "" {
		m["aliases"] = []string{k.alias}
	}
	return m
}

// lookup finds a key by id or alias; s.mu must be held.
func (s *Server) lookup(idOrAlias string) *key {
	if k := s.keys[idOrAlias]; k != nil {
		return k
	}
	if id, ok := s.aliases[idOrAlias]; ok {
		return s.keys[id]
	}
	return nil
}

var aliasRE = regexp.MustCompile(`^[A-Za-z0-9_-]{2,90}$`)

func (s *Server) keysAPI(w http.ResponseWriter, r *http.Request, kind string) {
	rest := strings.TrimPrefix(r.URL.Path, "/api/v2/keys")
	if rest != "" && !strings.HasPrefix(rest, "/") {
		writeError(w, http.StatusNotFound, "Not Found: no such endpoint", "NOT_FOUND_ERR")
		return
	}
	if rest == "" || rest == "/" {
		switch r.Method {
		case http.MethodGet:
			s.listKeys(w, r)
		case http.MethodPost:
			s.createKey(w, r)
		default:
			writeError(w, http.StatusMethodNotAllowed, "Method Not Allowed", "METHOD_NOT_ALLOWED_ERR")
		}
		return
	}
	parts := strings.Split(strings.TrimPrefix(rest, "/"), "/")
	s.mu.Lock()
	k := s.lookup(parts[0])
	s.mu.Unlock()
	if k == nil {
		writeError(w, http.StatusNotFound, "Not Found: Key does not exist", "KEY_NOT_FOUND_ERR")
		return
	}
	switch {
	case len(parts) == 1 || (len(parts) == 2 && parts[1] == "metadata"):
		if r.Method != http.MethodGet {
			writeError(w, http.StatusMethodNotAllowed, "Method Not Allowed", "METHOD_NOT_ALLOWED_ERR")
			return
		}
		s.mu.Lock()
		body := collection(mediaKey, []any{k.json()})
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, body)
	case len(parts) == 2 && parts[1] == "versions" && r.Method == http.MethodGet:
		s.listVersions(w, r, k)
	case len(parts) == 3 && parts[1] == "actions" && r.Method == http.MethodPost:
		s.action(w, r, k, parts[2])
	default:
		writeError(w, http.StatusNotFound, "Not Found: no such endpoint", "NOT_FOUND_ERR")
	}
}

// page reads limit and offset.
func page(r *http.Request, def int) (limit, offset int, ok bool) {
	limit, offset = def, 0
	var err error
	if v := r.URL.Query().Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 5000 {
			return 0, 0, false
		}
	}
	if v := r.URL.Query().Get("offset"); v != "" {
		if offset, err = strconv.Atoi(v); err != nil || offset < 0 {
			return 0, 0, false
		}
	}
	return limit, offset, true
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) {
	limit, offset, ok := page(r, 200)
	if !ok {
		writeError(w, http.StatusBadRequest, "Bad Request: limit must be 1 to 5000 and offset 0 or more", "INVALID_QUERY_PARAM_ERR")
		return
	}
	s.mu.Lock()
	var items []any
	for i := offset; i < len(s.order) && len(items) < limit; i++ {
		items = append(items, s.keys[s.order[i]].json())
	}
	s.mu.Unlock()
	if items == nil {
		items = []any{}
	}
	writeJSON(w, http.StatusOK, collection(mediaKey, items))
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != mediaKey && ct != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, "Unsupported Media Type: use "+mediaKey, "UNSUPPORTED_MEDIA_TYPE_ERR")
		return
	}
	var req struct {
		Metadata struct {
			CollectionType  string `json:"collectionType"`
			CollectionTotal int    `json:"collectionTotal"`
		} `json:"metadata"`
		Resources []struct {
			Type        string   `json:"type"`
			Name        string   `json:"name"`
			Description string   `json:"description"`
			Aliases     []string `json:"aliases"`
			Extractable *bool    `json:"extractable"`
			Payload     string   `json:"payload"`
		} `json:"resources"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil ||
		req.Metadata.CollectionType != mediaKey || req.Metadata.CollectionTotal != 1 || len(req.Resources) != 1 {
		writeError(w, http.StatusBadRequest, "Bad Request: the body must be a key collection of one key", "BAD_BODY_ERR")
		return
	}
	res := req.Resources[0]
	switch {
	case res.Name == "" || len(res.Name) > 90:
		writeError(w, http.StatusBadRequest, "Bad Request: name must be 1 to 90 characters", "INVALID_FIELD_ERR")
		return
	case res.Extractable == nil || *res.Extractable:
		// rekey only ever creates root keys; standard keys are out of
		// this server's scope.
		writeError(w, http.StatusBadRequest, "Bad Request: this server creates root keys only (extractable: false)", "INVALID_FIELD_ERR")
		return
	case res.Payload != "":
		writeError(w, http.StatusBadRequest, "Bad Request: this server does not import key material", "INVALID_FIELD_ERR")
		return
	case len(res.Aliases) > 5:
		writeError(w, http.StatusBadRequest, "Bad Request: a key has at most 5 aliases", "INVALID_FIELD_ERR")
		return
	}
	for _, a := range res.Aliases {
		if !aliasRE.MatchString(a) {
			writeError(w, http.StatusBadRequest, "Bad Request: an alias is 2 to 90 characters of letters, digits, '-' and '_'", "INVALID_FIELD_ERR")
			return
		}
	}
	id, _ := newUUID()
	now := s.now()
	k := &key{id: id, name: res.Name, desc: res.Description, created: now}
	k.versions = []*version{newVersion(now)}
	s.mu.Lock()
	for _, a := range res.Aliases {
		if _, taken := s.aliases[a]; taken {
			s.mu.Unlock()
			writeError(w, http.StatusConflict, "Conflict: The alias already exists in this instance", "KEY_ALIAS_NOT_UNIQUE_ERR")
			return
		}
	}
	if len(res.Aliases) > 0 {
		k.alias = res.Aliases[0]
		for _, a := range res.Aliases {
			s.aliases[a] = id
		}
	}
	s.keys[id] = k
	s.order = append(s.order, id)
	body := collection(mediaKey, []any{k.json()})
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, body)
}

// AddKey adds a root key named name with aliases, as another program
// sharing the instance would make it, and returns its id. It panics on an
// alias already taken (a test's mistake).
func (s *Server) AddKey(name string, aliases ...string) string {
	id, _ := newUUID()
	now := s.now()
	k := &key{id: id, name: name, created: now, versions: []*version{newVersion(now)}}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range aliases {
		if _, taken := s.aliases[a]; taken {
			panic("kpserver.AddKey: alias " + a + " is taken")
		}
		s.aliases[a] = id
	}
	if len(aliases) > 0 {
		k.alias = aliases[0]
	}
	s.keys[id] = k
	s.order = append(s.order, id)
	return id
}

func newVersion(now time.Time) *version {
	id, raw := newUUID()
	material := make([]byte, 32)
	rand.Read(material)
	block, _ := aes.NewCipher(material)
	aead, _ := cipher.NewGCM(block)
	clear(material)
	return &version{id: id, raw: raw, created: now, aead: aead}
}

func (s *Server) listVersions(w http.ResponseWriter, r *http.Request, k *key) {
	limit, offset, ok := page(r, 200)
	if !ok {
		writeError(w, http.StatusBadRequest, "Bad Request: limit must be 1 to 5000 and offset 0 or more", "INVALID_QUERY_PARAM_ERR")
		return
	}
	s.mu.Lock()
	n := len(k.versions)
	var items []any
	for i := n - 1 - offset; i >= 0 && len(items) < limit; i-- { // newest first
		items = append(items, versionJSON(k.versions[i]))
	}
	s.mu.Unlock()
	if items == nil {
		items = []any{}
	}
	body := collection(mediaVersion, items)
	if r.URL.Query().Get("totalCount") == "true" {
		body["metadata"].(map[string]any)["totalCount"] = n
	}
	writeJSON(w, http.StatusOK, body)
}

// Ciphertext layout (opaque to clients): format byte 1, the key's 16-byte
// id, the version's 16-byte id, a 12-byte nonce, then AES-GCM over the
// plaintext with the header and the request's aad as associated data.
const (
	ctFormat = 1
	ctHeader = 1 + 16 + 16
)

func keyRaw(id string) []byte {
	b, _ := hex.DecodeString(strings.ReplaceAll(id, "-", ""))
	return b
}

func associated(header []byte, aad []string) []byte {
	out := append([]byte(nil), header...)
	for _, a := range aad {
		out = strconv.AppendInt(out, int64(len(a)), 10)
		out = append(out, ':')
		out = append(out, a...)
	}
	return out
}

func seal(k *key, v *version, pt []byte, aad []string) []byte {
	header := make([]byte, 0, ctHeader)
	header = append(header, ctFormat)
	header = append(header, keyRaw(k.id)...)
	header = append(header, v.raw[:]...)
	nonce := make([]byte, v.aead.NonceSize())
	rand.Read(nonce)
	out := append(header, nonce...)
	return v.aead.Seal(out, nonce, pt, associated(header, aad))
}

// open returns the plaintext and the version it was under, or nil.
func open(k *key, ct []byte, aad []string) ([]byte, *version) {
	if len(ct) < ctHeader+12+16 || ct[0] != ctFormat || string(ct[1:17]) != string(keyRaw(k.id)) {
		return nil, nil
	}
	var v *version
	for _, x := range k.versions {
		if string(x.raw[:]) == string(ct[17:33]) {
			v = x
			break
		}
	}
	if v == nil {
		return nil, nil
	}
	header := ct[:ctHeader]
	nonce := ct[ctHeader : ctHeader+12]
	pt, err := v.aead.Open(nil, nonce, ct[ctHeader+12:], associated(header, aad))
	if err != nil {
		return nil, nil
	}
	return pt, v
}

func (s *Server) action(w http.ResponseWriter, r *http.Request, k *key, act string) {
	var body struct {
		Plaintext  *string  `json:"plaintext"`
		Ciphertext string   `json:"ciphertext"`
		AAD        []string `json:"aad"`
	}
	if r.ContentLength != 0 {
		if ct := r.Header.Get("Content-Type"); ct != mediaKeyAction && ct != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, "Unsupported Media Type: use "+mediaKeyAction, "UNSUPPORTED_MEDIA_TYPE_ERR")
			return
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&body); err != nil {
			writeError(w, http.StatusBadRequest, "Bad Request: the body is not a key action", "BAD_BODY_ERR")
			return
		}
	}
	invalidCT := func() {
		writeError(w, http.StatusBadRequest, "Bad Request: The provided ciphertext is invalid or corrupted", "INVALID_CIPHERTEXT_ERR")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	newest := k.versions[len(k.versions)-1]
	switch act {
	case "rotate":
		k.versions = append(k.versions, newVersion(s.now()))
		w.WriteHeader(http.StatusNoContent)
	case "wrap":
		var pt []byte
		generated := body.Plaintext == nil || *body.Plaintext == ""
		if generated {
			pt = make([]byte, 32)
			rand.Read(pt)
		} else {
			var err error
			if pt, err = base64.StdEncoding.DecodeString(*body.Plaintext); err != nil || len(pt) > 7000 {
				writeError(w, http.StatusBadRequest, "Bad Request: plaintext must be base64, at most 7000 bytes decoded", "INVALID_FIELD_ERR")
				return
			}
		}
		reply := map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(seal(k, newest, pt, body.AAD)), "keyVersion": versionJSON(newest)}
		if generated {
			reply["plaintext"] = base64.StdEncoding.EncodeToString(pt)
		}
		clear(pt)
		writeJSON(w, http.StatusOK, reply)
	case "unwrap", "rewrap":
		ct, err := base64.StdEncoding.DecodeString(body.Ciphertext)
		if err != nil || len(ct) == 0 {
			invalidCT()
			return
		}
		pt, v := open(k, ct, body.AAD)
		if v == nil {
			invalidCT()
			return
		}
		defer clear(pt)
		if act == "unwrap" {
			reply := map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt), "keyVersion": versionJSON(v)}
			if v != newest {
				reply["rewrappedKey"] = base64.StdEncoding.EncodeToString(seal(k, newest, pt, body.AAD))
			}
			writeJSON(w, http.StatusOK, reply)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"ciphertext": base64.StdEncoding.EncodeToString(seal(k, newest, pt, body.AAD)),
			"keyVersion": versionJSON(newest), "rewrappedKeyVersion": versionJSON(v),
		})
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Bad Request: unsupported action %q", act), "INVALID_ACTION_ERR")
	}
}

// Package vault is the rekey backend for HashiCorp Vault's (and OpenBao's)
// Transit secrets engine, through github.com/hashicorp/vault/api.
//
// A rekey root key is a Transit key of type aes256-gcm96 named like the
// rekey key (the reference is the Transit key name); a rekey version is a
// Transit key version. The wrapped DEK is the Transit ciphertext itself,
// "vault:vN:base64", whose prefix names the version: Unwrap checks it
// against the version asked for before it asks Vault (ErrWrongVersion).
//
//   - CreateKey creates the Transit key (an existing one: ErrKeyExists,
//     from the warning Transit answers with).
//   - RotateKey is Transit rotate; CurrentVersion is latest_version.
//   - Wrap is encrypt at key_version, Unwrap is decrypt.
//   - Rewrap and RewrapBatch are Transit rewrap (batch_input, one request
//     per batch of up to MaxBatch DEKs): the plaintext DEK never leaves
//     Vault.
//   - RetireVersion raises min_decryption_version and
//     min_encryption_version; DestroyVersion trims (min_available_version).
//     Transit can only raise a floor, so retiring version N disables every
//     version up to N: RetireVersion refuses to retire a version while an
//     older one can still decrypt (see RetireVersion).
//   - Ping asks sys/health (a sealed Vault is an *rekey.UnreachableError)
//     and checks the token with auth/token/lookup-self.
//
// No derived keys and no context are used: each rekey key is a Transit key
// of its own, so a wrap of one key does not authenticate under another, and
// the version is in the ciphertext's prefix and in the key version's own
// AES key.
//
// Errors: transport failures, a sealed Vault (503), throttling (429) and
// other 5xx answers are *rekey.UnreachableError (kmsmw retries them); a
// rejected token (403) is an error naming the backend and where the token
// came from; Transit's messages map to ErrKeyNotFound, ErrVersionNotFound,
// ErrVersionDisabled and ErrInvalidCiphertext. The Vault client's own
// retries are off (kmsmw retries), and no error carries a token, a secret
// ID or key material.
package vault

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/rekeyhq/rekey"
)

// MaxBatch is the most DEKs RewrapBatch sends in one Transit request; a
// longer batch is sent in several.
const MaxBatch = 1000

// KeyType is the Transit key type CreateKey makes.
const KeyType = "aes256-gcm96"

// AppRole is an AppRole login: the role ID and the secret ID, given or
// read from SecretIDFile at each login.
type AppRole struct {
	RoleID       string
	SecretID     string // the secret ID itself (from the environment), or ...
	SecretIDFile string // ... a file holding it
	Mount        string // the auth mount ("" = approle)
}

// Config configures New. Exactly one of Token, TokenFile and AppRole is
// set.
type Config struct {
	Name       string // backend name (config key), for errors; "" = vault
	Address    string // Vault's address, http(s)://host:port
	Mount      string // Transit mount ("" = transit)
	Namespace  string // namespace ("" = none)
	Token      string // a static token
	TokenFile  string // a file holding the token, re-read when it changes
	AppRole    *AppRole
	CACertFile string        // PEM CA bundle for Vault's TLS certificate ("" = system roots)
	Timeout    time.Duration // per request (0 = 30s)
	// HTTPClient, when set, is used as it is (CACertFile and Timeout are
	// then ignored).
	HTTPClient *http.Client
	Logger     *slog.Logger     // nil = discard
	Now        func() time.Time // nil = time.Now
}

// Client is the vault backend. It is safe for concurrent use.
type Client struct {
	name    string
	service string
	addr    string
	mount   string
	api     *api.Client // requests with a token
	login   *api.Client // AppRole login, no token
	http    *http.Client
	auth    *authSource
	log     *slog.Logger
}

var (
	_ rekey.KMS            = (*Client)(nil)
	_ rekey.Rewrapper      = (*Client)(nil)
	_ rekey.BatchRewrapper = (*Client)(nil)
	_ rekey.VersionRetirer = (*Client)(nil)
	_ rekey.Pinger         = (*Client)(nil)
	_ io.Closer            = (*Client)(nil)
)

// New returns a Client for cfg. It does not contact Vault (a Vault that is
// down or sealed when rekey starts is reported by the first call and by
// Ping, and the backend works once Vault is back); it reads the token
// file and the CA file, and returns an error naming the backend and the
// setting when one is missing, empty or readable by everyone.
func New(ctx context.Context, cfg Config) (*Client, error) {
	name := cfg.Name
	if name == "" {
		name = "vault"
	}
	fail := func(format string, args ...any) (*Client, error) {
		return nil, fmt.Errorf("vault backend %s: "+format, append([]any{name}, args...)...)
	}
	if cfg.Address == "" {
		return fail("no address: set address to Vault's address, e.g. https://vault.example.com:8200")
	}
	ways := 0
	for _, set := range []bool{cfg.Token != "", cfg.TokenFile != "", cfg.AppRole != nil} {
		if set {
			ways++
		}
	}
	if ways != 1 {
		return fail("give exactly one way to log in (a token, a token file or AppRole), got %d", ways)
	}
	if cfg.AppRole != nil && (cfg.AppRole.RoleID == "" || (cfg.AppRole.SecretID == "") == (cfg.AppRole.SecretIDFile == "")) {
		return fail("AppRole needs a role ID and one secret ID source (the environment or a file)")
	}
	mount := strings.Trim(cfg.Mount, "/")
	if mount == "" {
		mount = "transit"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	hc := cfg.HTTPClient
	if hc == nil {
		timeout := cfg.Timeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CACertFile != "" {
			pem, err := os.ReadFile(cfg.CACertFile)
			if err != nil {
				return fail("ca_cert: %v: give a readable PEM file of the CA that signs Vault's certificate", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fail("ca_cert %s holds no PEM certificate: give the CA certificate that signs Vault's certificate", cfg.CACertFile)
			}
			tlsConf.RootCAs = pool
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsConf
		tr.MaxIdleConnsPerHost = 32
		hc = &http.Client{Transport: tr, Timeout: timeout}
	}
	newAPI := func() (*api.Client, error) {
		// MaxRetries 0: kmsmw retries, once, for every backend. Timeout 0:
		// the HTTP client's own timeout bounds each request, body
		// included (the API client's would end the request's context
		// before the caller has read a large answer).
		c, err := api.NewClient(&api.Config{Address: cfg.Address, HttpClient: hc, MaxRetries: 0})
		if err != nil {
			return nil, err
		}
		// NewClient takes VAULT_TOKEN and VAULT_NAMESPACE from the
		// environment: the settings decide, not a stray variable.
		c.ClearToken()
		if cfg.Namespace != "" {
			c.SetNamespace(cfg.Namespace)
		} else {
			c.ClearNamespace()
		}
		return c, nil
	}
	apiClient, err := newAPI()
	if err != nil {
		return fail("address %s: %v", cfg.Address, err)
	}
	loginClient, err := newAPI()
	if err != nil {
		return fail("address %s: %v", cfg.Address, err)
	}
	c := &Client{
		name: name, service: "kms:" + name, addr: cfg.Address, mount: mount,
		api: apiClient, login: loginClient, http: hc, log: log,
	}
	c.auth = &authSource{c: c, now: now, static: cfg.Token, file: cfg.TokenFile, appRole: cfg.AppRole}
	if cfg.TokenFile != "" {
		if _, err := c.auth.readTokenFile(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Close closes idle connections. It returns nil.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// reply is a Vault answer: its status and the parts of the body rekey
// reads.
type reply struct {
	status   int
	Data     json.RawMessage `json:"data"`
	Warnings []string        `json:"warnings"`
	Errors   []string        `json:"errors"`
}

// call sends one request (GET when body is nil and get is true, else PUT)
// with the current token, and answers the reply and nil, or the reply
// (when Vault answered) and the mapped error. A 403 with a token that can
// be renewed (a file that changed, an AppRole login) is tried once more
// with the new token: that is a fresh login, not a retry of a transient
// failure. body is zeroed after the request (it may hold a plaintext DEK).
func (c *Client) call(ctx context.Context, op, ref string, get bool, path string, body []byte) (*reply, error) {
	method := http.MethodPut
	if get {
		method = http.MethodGet
	}
	return c.callMethod(ctx, op, ref, method, path, body)
}

// callMethod is call with the HTTP method given: GET, PUT or DELETE.
func (c *Client) callMethod(ctx context.Context, op, ref, method, path string, body []byte) (*reply, error) {
	defer clear(body)
	for attempt := 0; ; attempt++ {
		token, err := c.auth.token(ctx)
		if err != nil {
			return nil, err
		}
		rep, status, err := c.send(ctx, method, path, body)
		if err != nil {
			return nil, c.transportErr(ctx, op, err)
		}
		if status == http.StatusForbidden && attempt == 0 && c.auth.renewable() {
			c.auth.invalidate(token)
			continue
		}
		if status >= 400 {
			return rep, c.statusErr(op, ref, path, rep)
		}
		return rep, nil
	}
}

// send makes one HTTP request and decodes the reply. err is a transport
// failure (no HTTP answer, or one that could not be read).
func (c *Client) send(ctx context.Context, method, path string, body []byte) (*reply, int, error) {
	var (
		resp *api.Response
		err  error
	)
	switch method {
	case http.MethodGet:
		resp, err = c.api.Logical().ReadRawWithContext(ctx, path)
	case http.MethodDelete:
		resp, err = c.api.Logical().DeleteRawWithContext(ctx, path)
	default:
		resp, err = c.api.Logical().WriteRawWithContext(ctx, path, body)
	}
	if resp == nil {
		if err == nil {
			err = errors.New("no answer")
		}
		return nil, 0, err
	}
	defer resp.Body.Close()
	raw, rerr := io.ReadAll(resp.Body)
	defer clear(raw) // a decrypt answer holds a plaintext DEK
	if rerr != nil {
		return nil, 0, rerr
	}
	rep := &reply{status: resp.StatusCode}
	if len(bytes.TrimSpace(raw)) > 0 {
		if jerr := json.Unmarshal(raw, rep); jerr != nil {
			if resp.StatusCode < 400 {
				return nil, 0, fmt.Errorf("answer is not JSON (HTTP %d): %v", resp.StatusCode, jerr)
			}
			rep.Errors = []string{strings.TrimSpace(string(raw[:min(len(raw), 200)]))}
		}
	}
	// rep.Data is a copy (json.RawMessage copies), raw is zeroed above.
	rep.Data = bytes.Clone(rep.Data)
	return rep, resp.StatusCode, nil
}

// transportErr maps a failure to get any answer from Vault.
func (c *Client) transportErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("vault backend %s: %s: %w", c.name, op, err)
	}
	return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("Vault at %s: %s: %w", c.addr, op, err)}
}

// statusErr maps an HTTP error answer of Vault: the one place where Vault's
// errors become rekey's.
func (c *Client) statusErr(op, ref, path string, rep *reply) error {
	msg := strings.Join(rep.Errors, "; ")
	switch {
	case rep.status == http.StatusServiceUnavailable && strings.Contains(strings.ToLower(msg), "sealed"):
		return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("Vault at %s is sealed (%s of key %s): unseal it (vault operator unseal); rekey carries on once it is", c.addr, op, ref)}
	case rep.status == http.StatusTooManyRequests:
		return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("%w: Vault at %s refused %s of key %s with HTTP 429 (a rate limit quota: %s): lower rate_limit of backend %s or raise the quota", rekey.ErrThrottled, c.addr, op, ref, msg, c.name)}
	case rep.status >= 500:
		return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("Vault at %s failed %s of key %s with HTTP %d: %s", c.addr, op, ref, rep.status, msg)}
	case rep.status == http.StatusForbidden:
		return fmt.Errorf("vault backend %s: permission denied for %s of key %s (%s): the token (%s) is invalid, expired or revoked, or its Vault policy does not allow update on %s: renew the token or fix the policy",
			c.name, op, ref, path, c.auth.describe(), path)
	case rep.status == http.StatusNotFound:
		return fmt.Errorf("vault backend %s: %s: no Transit key %s at mount %s: %w", c.name, op, ref, c.mount, rekey.ErrKeyNotFound)
	}
	if s := transitSentinel(msg); s != nil {
		return fmt.Errorf("vault backend %s: %s of key %s: %s: %w", c.name, op, ref, msg, s)
	}
	return fmt.Errorf("vault backend %s: %s of key %s: Vault answered HTTP %d: %s", c.name, op, ref, rep.status, msg)
}

// transitSentinel returns the rekey error a Transit error message means,
// or nil. Transit reports these as HTTP 400 with a message only.
func transitSentinel(msg string) error {
	m := strings.ToLower(msg)
	switch {
	case strings.Contains(m, "encryption key not found"), m == "key not found",
		strings.Contains(m, "no existing key named"), strings.Contains(m, "invalid key name"):
		return rekey.ErrKeyNotFound
	case strings.Contains(m, "disallowed by policy (too old)"),
		strings.Contains(m, "less than the minimum encryption key version"):
		return rekey.ErrVersionDisabled
	case strings.Contains(m, "higher than the latest key version"), strings.Contains(m, "version is too new"):
		return rekey.ErrVersionNotFound
	case strings.Contains(m, "message authentication failed"), strings.Contains(m, "invalid ciphertext"),
		strings.Contains(m, "could not decode base64"):
		return rekey.ErrInvalidCiphertext
	}
	return nil
}

// keyPath returns MOUNT/KIND/REF, refusing a reference that cannot name
// a Transit key (ErrKeyNotFound; it also keeps a reference from reaching
// another path).
func (c *Client) keyPath(op, kind, ref string) (string, error) {
	if !validKeyName(ref) {
		return "", fmt.Errorf("vault backend %s: %s: %q cannot name a Transit key (letters, digits, '_', '-', '.'): %w", c.name, op, ref, rekey.ErrKeyNotFound)
	}
	return c.mount + "/" + kind + "/" + ref, nil
}

// validKeyName is Transit's key-name pattern: \w(([\w-.]+)?\w)?
func validKeyName(name string) bool {
	word := func(c byte) bool {
		return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	}
	if name == "" || !word(name[0]) || !word(name[len(name)-1]) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if ch := name[i]; !word(ch) && ch != '-' && ch != '.' {
			return false
		}
	}
	return true
}

// keyInfo is what rekey reads of a Transit key.
type keyInfo struct {
	Type                 string `json:"type"`
	LatestVersion        int    `json:"latest_version"`
	MinDecryptionVersion int    `json:"min_decryption_version"`
	MinEncryptionVersion int    `json:"min_encryption_version"`
	MinAvailableVersion  int    `json:"min_available_version"`
	DeletionAllowed      bool   `json:"deletion_allowed"`
}

// floor is the oldest version that can still decrypt.
func (k keyInfo) floor() int { return max(1, k.MinDecryptionVersion) }

func (c *Client) readKey(ctx context.Context, op, ref string) (keyInfo, error) {
	path, err := c.keyPath(op, "keys", ref)
	if err != nil {
		return keyInfo{}, err
	}
	rep, err := c.call(ctx, op, ref, true, path, nil)
	if err != nil {
		return keyInfo{}, err
	}
	return c.decodeKey(op, ref, rep)
}

func (c *Client) decodeKey(op, ref string, rep *reply) (keyInfo, error) {
	var k keyInfo
	if len(rep.Data) == 0 || string(rep.Data) == "null" {
		return k, fmt.Errorf("vault backend %s: %s: no Transit key %s at mount %s: %w", c.name, op, ref, c.mount, rekey.ErrKeyNotFound)
	}
	if err := json.Unmarshal(rep.Data, &k); err != nil || k.LatestVersion < 1 {
		return k, fmt.Errorf("vault backend %s: %s of key %s: unexpected answer from Vault (latest_version %d, %v)", c.name, op, ref, k.LatestVersion, err)
	}
	return k, nil
}

// CreateKey implements rekey.KMS: it creates the Transit key name (type
// aes256-gcm96) and returns name as the reference. It returns
// ErrKeyExists when Transit already has a key by that name (of any type),
// ErrInvalidArgument for a name Transit cannot take.
func (c *Client) CreateKey(ctx context.Context, name string) (string, error) {
	if !validKeyName(name) {
		return "", rekey.Invalidf("vault backend %s: %q cannot name a Transit key: use letters, digits, '_', '-' and '.' (not first or last)", c.name, name)
	}
	path := c.mount + "/keys/" + name
	rep, err := c.call(ctx, kmsOpCreate, name, false, path, []byte(`{"type":"`+KeyType+`"}`))
	if err != nil {
		return "", err
	}
	for _, w := range rep.Warnings {
		if strings.Contains(w, "already existed") {
			return "", fmt.Errorf("vault backend %s: Transit key %s exists already at mount %s: %w", c.name, name, c.mount, rekey.ErrKeyExists)
		}
	}
	return name, nil
}

const (
	kmsOpCreate  = "create key"
	kmsOpCurrent = "read key"
	kmsOpRotate  = "rotate"
	kmsOpWrap    = "encrypt"
	kmsOpUnwrap  = "decrypt"
	kmsOpRewrap  = "rewrap"
	kmsOpRetire  = "retire version"
	kmsOpDestroy = "destroy version"
	kmsOpDelete  = "delete key"
)

// CurrentVersion implements rekey.KMS: the Transit key's latest_version.
func (c *Client) CurrentVersion(ctx context.Context, ref string) (int, error) {
	k, err := c.readKey(ctx, kmsOpCurrent, ref)
	if err != nil {
		return 0, err
	}
	return k.LatestVersion, nil
}

// RotateKey implements rekey.KMS with Transit rotate. The new version is
// the latest_version of rotate's answer, which Transit gives under the
// key's lock; a Vault that answers rotate without the key (an old one) is
// read afterwards, which is exact while nobody else rotates the key at
// the same moment (rekey rotates a key under its lease).
func (c *Client) RotateKey(ctx context.Context, ref string) (int, error) {
	path, err := c.keyPath(kmsOpRotate, "keys", ref)
	if err != nil {
		return 0, err
	}
	rep, err := c.call(ctx, kmsOpRotate, ref, false, path+"/rotate", []byte(`{}`))
	if err != nil {
		return 0, err
	}
	if len(rep.Data) == 0 || string(rep.Data) == "null" {
		return c.CurrentVersion(ctx, ref)
	}
	k, err := c.decodeKey(kmsOpRotate, ref, rep)
	if err != nil {
		return 0, err
	}
	return k.LatestVersion, nil
}

// Wrap implements rekey.KMS with Transit encrypt at key_version. It
// returns ErrVersionNotFound for a version the key does not have yet
// (Transit would read version 0 as the latest: refused here),
// ErrVersionDisabled for one below min_encryption_version.
func (c *Client) Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 {
		return nil, rekey.Invalidf("vault backend %s: wrap under key %s: empty plaintext", c.name, ref)
	}
	if version < 1 {
		return nil, fmt.Errorf("vault backend %s: wrap under key %s: version %d: %w", c.name, ref, version, rekey.ErrVersionNotFound)
	}
	path, err := c.keyPath(kmsOpWrap, "encrypt", ref)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, 64+base64.StdEncoding.EncodedLen(len(plaintext)))
	body = append(body, `{"plaintext":"`...)
	body = base64.StdEncoding.AppendEncode(body, plaintext)
	body = append(body, `","key_version":`...)
	body = strconv.AppendInt(body, int64(version), 10)
	body = append(body, '}')
	rep, err := c.call(ctx, kmsOpWrap, ref, false, path, body)
	if err != nil {
		return nil, err
	}
	var out struct {
		Ciphertext string `json:"ciphertext"`
	}
	if err := json.Unmarshal(rep.Data, &out); err != nil {
		return nil, fmt.Errorf("vault backend %s: encrypt under key %s: unexpected answer from Vault: %v", c.name, ref, err)
	}
	if got, err := parseWrapped([]byte(out.Ciphertext)); err != nil || got != version {
		return nil, fmt.Errorf("vault backend %s: encrypt under key %s version %d: Vault answered a ciphertext that is not a version %d Transit ciphertext", c.name, ref, version, version)
	}
	return []byte(out.Ciphertext), nil
}

// Unwrap implements rekey.KMS with Transit decrypt, after checking that
// wrapped is a well-formed "vault:vN:" ciphertext (else
// ErrInvalidCiphertext) of the version asked for (else ErrWrongVersion).
// A version below min_decryption_version gives ErrVersionDisabled.
func (c *Client) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	if err := c.checkWrapped(kmsOpUnwrap, ref, version, wrapped); err != nil {
		return nil, err
	}
	path, err := c.keyPath(kmsOpUnwrap, "decrypt", ref)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, len(wrapped)+20)
	body = append(append(append(body, `{"ciphertext":"`...), wrapped...), `"}`...)
	rep, err := c.call(ctx, kmsOpUnwrap, ref, false, path, body)
	if err != nil {
		return nil, err
	}
	defer clear(rep.Data)
	var out struct {
		Plaintext []byte `json:"plaintext"` // base64 in JSON
	}
	if err := json.Unmarshal(rep.Data, &out); err != nil {
		return nil, fmt.Errorf("vault backend %s: decrypt under key %s: unexpected answer from Vault: %v", c.name, ref, err)
	}
	if len(out.Plaintext) == 0 {
		return nil, fmt.Errorf("vault backend %s: decrypt under key %s version %d: empty plaintext: %w", c.name, ref, version, rekey.ErrInvalidCiphertext)
	}
	return out.Plaintext, nil
}

// checkWrapped checks wrapped against the version it must be under.
func (c *Client) checkWrapped(op, ref string, version int, wrapped []byte) error {
	got, err := parseWrapped(wrapped)
	if err != nil {
		return fmt.Errorf("vault backend %s: %s under key %s: %w", c.name, op, ref, err)
	}
	if got != version {
		return fmt.Errorf("vault backend %s: %s under key %s: the ciphertext is under version %d, not %d: %w", c.name, op, ref, got, version, rekey.ErrWrongVersion)
	}
	return nil
}

// minCiphertext is the shortest AES-GCM Transit ciphertext: a 12-byte
// nonce and a 16-byte tag.
const minCiphertext = 12 + 16

// parseWrapped returns the version of a Transit ciphertext
// "vault:vN:BASE64". It returns an error matching ErrInvalidCiphertext
// unless N is a canonical decimal number from 1 and BASE64 is canonical
// standard base64 of at least a nonce and a tag: Transit itself reads
// "v0" as v1, "v02" as v2 and ignores stray padding bits, so that two
// spellings of one ciphertext would otherwise both unwrap.
func parseWrapped(w []byte) (int, error) {
	rest, ok := bytes.CutPrefix(w, []byte("vault:v"))
	if !ok {
		return 0, fmt.Errorf("not a Transit ciphertext (no vault:v prefix): %w", rekey.ErrInvalidCiphertext)
	}
	num, payload, ok := bytes.Cut(rest, []byte(":"))
	if !ok || len(num) == 0 || len(num) > 9 || num[0] == '0' {
		return 0, fmt.Errorf("not a Transit ciphertext (no version number): %w", rekey.ErrInvalidCiphertext)
	}
	v := 0
	for _, ch := range num {
		if ch < '0' || ch > '9' {
			return 0, fmt.Errorf("not a Transit ciphertext (bad version number): %w", rekey.ErrInvalidCiphertext)
		}
		v = v*10 + int(ch-'0')
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(string(payload))
	if err != nil || len(raw) < minCiphertext || base64.StdEncoding.EncodeToString(raw) != string(payload) {
		return 0, fmt.Errorf("not a Transit ciphertext (bad or short base64): %w", rekey.ErrInvalidCiphertext)
	}
	return v, nil
}

// Rewrap implements rekey.Rewrapper with Transit rewrap at key_version
// toVersion: the DEK is decrypted and encrypted again inside Vault.
func (c *Client) Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	if err := c.checkWrapped(kmsOpRewrap, ref, fromVersion, wrapped); err != nil {
		return nil, err
	}
	if toVersion < 1 {
		return nil, fmt.Errorf("vault backend %s: rewrap under key %s: version %d: %w", c.name, ref, toVersion, rekey.ErrVersionNotFound)
	}
	path, err := c.keyPath(kmsOpRewrap, "rewrap", ref)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]any{"ciphertext": string(wrapped), "key_version": toVersion})
	rep, err := c.call(ctx, kmsOpRewrap, ref, false, path, body)
	if err != nil {
		return nil, err
	}
	var out struct {
		Ciphertext string `json:"ciphertext"`
	}
	if err := json.Unmarshal(rep.Data, &out); err != nil {
		return nil, fmt.Errorf("vault backend %s: rewrap under key %s: unexpected answer from Vault: %v", c.name, ref, err)
	}
	return c.checkRewrapped(ref, toVersion, out.Ciphertext)
}

func (c *Client) checkRewrapped(ref string, toVersion int, ct string) ([]byte, error) {
	if got, err := parseWrapped([]byte(ct)); err != nil || got != toVersion {
		return nil, fmt.Errorf("vault backend %s: rewrap under key %s: Vault answered a ciphertext that is not a version %d Transit ciphertext", c.name, ref, toVersion)
	}
	return []byte(ct), nil
}

// RewrapBatch implements rekey.BatchRewrapper with Transit rewrap and
// batch_input: one request per MaxBatch items. Items that are not
// well-formed ciphertexts of their stated version fail here (not sent);
// Transit's per-item errors map as Unwrap's do.
func (c *Client) RewrapBatch(ctx context.Context, ref string, toVersion int, items []rekey.RewrapItem) ([]rekey.RewrapResult, error) {
	results := make([]rekey.RewrapResult, len(items))
	if len(items) == 0 {
		return results, nil
	}
	if toVersion < 1 {
		return nil, fmt.Errorf("vault backend %s: rewrap under key %s: version %d: %w", c.name, ref, toVersion, rekey.ErrVersionNotFound)
	}
	path, err := c.keyPath(kmsOpRewrap, "rewrap", ref)
	if err != nil {
		return nil, err
	}
	type input struct {
		Ciphertext string `json:"ciphertext"`
		KeyVersion int    `json:"key_version"`
	}
	var (
		send []int // indexes of items to send
		in   []input
	)
	for i, it := range items {
		if err := c.checkWrapped(kmsOpRewrap, ref, it.Version, it.Wrapped); err != nil {
			results[i].Err = err
			continue
		}
		send = append(send, i)
		in = append(in, input{string(it.Wrapped), toVersion})
	}
	for start := 0; start < len(send); start += MaxBatch {
		end := min(start+MaxBatch, len(send))
		body, _ := json.Marshal(map[string]any{"batch_input": in[start:end], "key_version": toVersion})
		rep, err := c.call(ctx, kmsOpRewrap, ref, false, path, body)
		var out struct {
			BatchResults []struct {
				Ciphertext string `json:"ciphertext"`
				Error      string `json:"error"`
			} `json:"batch_results"`
		}
		if rep != nil && len(rep.Data) > 0 {
			if jerr := json.Unmarshal(rep.Data, &out); jerr != nil && err == nil {
				return nil, fmt.Errorf("vault backend %s: rewrap under key %s: unexpected answer from Vault: %v", c.name, ref, jerr)
			}
		}
		// Transit answers 400 when every item of a batch failed, with the
		// items' errors in the body: those are per-item failures.
		if err != nil && (len(out.BatchResults) == 0 || rekey.IsTransient(err)) {
			return nil, err
		}
		if len(out.BatchResults) != end-start {
			return nil, fmt.Errorf("vault backend %s: rewrap under key %s: Vault answered %d results for %d items", c.name, ref, len(out.BatchResults), end-start)
		}
		for j, r := range out.BatchResults {
			i := send[start+j]
			if r.Error != "" {
				s := transitSentinel(r.Error)
				if s == nil {
					results[i].Err = fmt.Errorf("vault backend %s: rewrap under key %s: %s", c.name, ref, r.Error)
				} else {
					results[i].Err = fmt.Errorf("vault backend %s: rewrap under key %s: %s: %w", c.name, ref, r.Error, s)
				}
				continue
			}
			results[i].Wrapped, results[i].Err = c.checkRewrapped(ref, toVersion, r.Ciphertext)
		}
	}
	return results, nil
}

// RetireVersion implements rekey.VersionRetirer: it sets the key's
// min_decryption_version (and min_encryption_version, if lower) to
// version+1, so that version can neither wrap nor unwrap.
//
// Transit has floors, not per-version switches: raising the floor past
// version disables every older version too. So that retiring one version
// never disables an older one that DEKs may still use (the engine retires
// each version only on evidence that no DEK references it, and a blocked
// older version may still have some), RetireVersion refuses, with an
// error naming the older version, to retire a version while an older one
// can still decrypt: versions retire oldest first. A version already below
// the floor is retired (nil: idempotent). The newest version cannot be
// retired (Transit keeps the floor at or below latest_version): rotate
// first (ErrInvalidArgument). It returns ErrKeyNotFound or
// ErrVersionNotFound.
func (c *Client) RetireVersion(ctx context.Context, ref string, version int) error {
	k, err := c.readKey(ctx, kmsOpRetire, ref)
	if err != nil {
		return err
	}
	if version < 1 || version > k.LatestVersion {
		return fmt.Errorf("vault backend %s: retire key %s version %d: the key has versions 1 to %d: %w", c.name, ref, version, k.LatestVersion, rekey.ErrVersionNotFound)
	}
	floor := k.floor()
	switch {
	case version < floor:
		return nil
	case version == k.LatestVersion:
		return fmt.Errorf("vault backend %s: cannot retire key %s version %d: %w: it is the newest Transit version, and Transit keeps min_decryption_version at or below the newest: rotate the key first", c.name, ref, version, rekey.ErrInvalidArgument)
	case version > floor:
		return fmt.Errorf("vault backend %s: cannot retire key %s version %d while version %d can still decrypt: Transit retires by raising min_decryption_version, which would disable versions %d to %d too; retire version %d first (rekey does once no DEK references it)",
			c.name, ref, version, floor, floor, version, floor)
	}
	path, err := c.keyPath(kmsOpRetire, "keys", ref)
	if err != nil {
		return err
	}
	cfg := map[string]any{"min_decryption_version": version + 1}
	if k.MinEncryptionVersion < version+1 {
		cfg["min_encryption_version"] = version + 1
	}
	body, _ := json.Marshal(cfg)
	_, err = c.call(ctx, kmsOpRetire, ref, false, path+"/config", body)
	return err
}

// DestroyVersion implements rekey.VersionRetirer with Transit trim: it
// sets min_available_version to version+1, which deletes the key material
// of version and every older version (all retired, see RetireVersion). A
// version that is not retired yet is refused (retire it first); one
// already trimmed is destroyed (nil). It returns ErrKeyNotFound or
// ErrVersionNotFound.
func (c *Client) DestroyVersion(ctx context.Context, ref string, version int) error {
	k, err := c.readKey(ctx, kmsOpDestroy, ref)
	if err != nil {
		return err
	}
	if version < 1 || version > k.LatestVersion {
		return fmt.Errorf("vault backend %s: destroy key %s version %d: the key has versions 1 to %d: %w", c.name, ref, version, k.LatestVersion, rekey.ErrVersionNotFound)
	}
	switch {
	case version < k.MinAvailableVersion:
		return nil
	case version >= k.floor():
		return fmt.Errorf("vault backend %s: cannot destroy key %s version %d: it is not retired (min_decryption_version is %d): retire it first", c.name, ref, version, k.floor())
	}
	path, err := c.keyPath(kmsOpDestroy, "keys", ref)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]any{"min_available_version": version + 1})
	_, err = c.call(ctx, kmsOpDestroy, ref, false, path+"/trim", body)
	return err
}

// Ping implements rekey.Pinger: Vault's sys/health (a sealed or
// uninitialised Vault, or no answer, is an *rekey.UnreachableError), then
// auth/token/lookup-self, so that a rejected token shows in /readyz too.
func (c *Client) Ping(ctx context.Context) error {
	h, err := c.api.Sys().HealthWithContext(ctx)
	if err != nil {
		var re *api.ResponseError
		if errors.As(err, &re) {
			return c.statusErr("health check", "-", "sys/health", &reply{status: re.StatusCode, Errors: re.Errors})
		}
		return c.transportErr(ctx, "health check", err)
	}
	switch {
	case h.Sealed:
		return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("Vault at %s is sealed: unseal it (vault operator unseal); rekey carries on once it is", c.addr)}
	case !h.Initialized:
		return &rekey.UnreachableError{Service: c.service, Err: fmt.Errorf("Vault at %s is not initialised: initialise and unseal it", c.addr)}
	}
	_, err = c.call(ctx, "token check", "-", true, "auth/token/lookup-self", nil)
	return err
}

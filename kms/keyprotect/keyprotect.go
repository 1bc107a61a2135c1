// Package keyprotect is the rekey.KMS backend for IBM Key Protect, spoken
// over its REST API v2 with net/http (no maintained Go client is available
// to this build).
//
// A rekey root key is one Key Protect root key (extractable: false) named
// after the rekey key, with an alias derived from that name (aliases are
// unique in an instance, so two processes creating one name cannot both
// succeed). Rotation is Key Protect's rotate action; rekey's version
// numbers 1, 2, 3, … are Key Protect's key versions in order of creation.
// Wrapped DEKs are Key Protect's own ciphertexts (base64-decoded), with
// associated data that binds the rekey key name. Re-wrap is Key Protect's
// rewrap action: the plaintext DEK never leaves the service.
//
// What Key Protect does not offer, this backend does not pretend to:
//   - Key Protect wraps only under a key's newest version. Wrap under an
//     older version fails with rekey.ErrVersionDisabled.
//   - Versions cannot be disabled or destroyed one by one, so the backend
//     is no rekey.VersionRetirer: rekey retires old versions in its own
//     store only (applications refuse them), and Key Protect can still
//     unwrap with them until the whole key is deleted.
//
// Credentials: an IBM Cloud API key, exchanged at IAM for a bearer token
// that is cached and refreshed at 80% of its lifetime (and once more when
// Key Protect answers 401). The API key never appears in an error or a log
// line.
package keyprotect

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rekeyhq/rekey"
)

// Media types of Key Protect's request and reply bodies.
const (
	MediaKey       = "application/vnd.ibm.kms.key+json"
	MediaKeyAction = "application/vnd.ibm.kms.key_action+json"
	MediaError     = "application/vnd.ibm.kms.error+json"
)

// maxBody bounds every reply body read.
const maxBody = 1 << 20

// aliasPrefix starts the alias of every key this backend creates.
const aliasPrefix = "rekey-"

// Config is what New needs. The API key is a value here: the program
// reads it from the environment or a file (see APIKey), never from the
// configuration file.
type Config struct {
	Name        string // backend name (config key): errors and the "kms:NAME" service
	Endpoint    string // Key Protect base URL, e.g. https://us-south.kms.cloud.ibm.com
	IAMEndpoint string // IAM base URL; "" means DefaultIAMEndpoint
	InstanceID  string // the bluemix-instance header
	APIKey      string // never logged, never in an error
	// KeySource says where the API key came from ("$IBMCLOUD_API_KEY",
	// "file /etc/rekey/kp.key"), for error messages.
	KeySource  string
	HTTPClient *http.Client     // nil: a client with a 30 s timeout
	Logger     *slog.Logger     // nil: discard
	Now        func() time.Time // nil: time.Now
}

// Client is a rekey.KMS (and rekey.Rewrapper, rekey.Pinger) on one Key
// Protect instance. It is safe for concurrent use.
type Client struct {
	name      string
	service   string
	base      string
	instance  string
	apiKey    func() string // a func, so that printing a Client (%+v) cannot show the key
	keySource string
	hc        *http.Client
	log       *slog.Logger
	now       func() time.Time
	tokens    *tokenSource

	apiRequests atomic.Int64
	iamRequests atomic.Int64

	mu   sync.Mutex
	keys map[string]*keyState // by ref
}

// keyState is what the client caches about one key.
type keyState struct {
	rotate sync.Mutex // one rotation at a time per key in this process

	mu       sync.Mutex
	name     string   // the Key Protect key name (the rekey key name), "" until read
	versions []string // version ids, oldest first: versions[n-1] is version n
}

var (
	_ rekey.KMS       = (*Client)(nil)
	_ rekey.Rewrapper = (*Client)(nil)
	_ rekey.Pinger    = (*Client)(nil)
)

// New returns a Client for cfg. It makes no request (a backend that is
// down must not stop rekey from starting); the first call exchanges the
// API key. It returns an error wrapping rekey.ErrInvalidArgument when a
// field is missing.
func New(cfg Config) (*Client, error) {
	if cfg.Name == "" {
		cfg.Name = "keyprotect"
	}
	switch {
	case cfg.Endpoint == "":
		return nil, fmt.Errorf("%w: keyprotect backend %s: no endpoint: set region or endpoint", rekey.ErrInvalidArgument, cfg.Name)
	case cfg.InstanceID == "":
		return nil, fmt.Errorf("%w: keyprotect backend %s: no instance_id", rekey.ErrInvalidArgument, cfg.Name)
	case strings.TrimSpace(cfg.APIKey) == "":
		return nil, fmt.Errorf("%w: keyprotect backend %s: no API key: set %s", rekey.ErrInvalidArgument, cfg.Name, orDefault(cfg.KeySource, "$"+DefaultAPIKeyEnv))
	}
	c := &Client{
		name: cfg.Name, service: "kms:" + cfg.Name,
		base: strings.TrimRight(cfg.Endpoint, "/"), instance: cfg.InstanceID,
		keySource: orDefault(cfg.KeySource, "the configured API key"),
		hc:        cfg.HTTPClient, log: cfg.Logger, now: cfg.Now, keys: map[string]*keyState{},
	}
	if c.hc == nil {
		c.hc = &http.Client{Timeout: 30 * time.Second}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	iam := strings.TrimRight(cfg.IAMEndpoint, "/")
	if iam == "" {
		iam = DefaultIAMEndpoint
	}
	key := strings.TrimSpace(cfg.APIKey)
	c.apiKey = func() string { return key }
	c.tokens = &tokenSource{c: c, url: iam}
	return c, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// APIKey reads the API key that s designates: the file api_key_file
// (refused when group or others can read it), else the environment
// variable api_key_env (default IBMCLOUD_API_KEY) through getenv. It also
// returns where the key came from, for messages. Errors name the file or
// variable, never the key.
func APIKey(s *Settings, getenv func(string) string) (key, source string, err error) {
	if s.APIKeyFile != "" {
		source = "file " + s.APIKeyFile
		fi, err := os.Stat(s.APIKeyFile)
		if err != nil {
			return "", source, fmt.Errorf("api_key_file: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", source, fmt.Errorf("api_key_file %s can be read by group or others (mode %04o): chmod 600 %s", s.APIKeyFile, fi.Mode().Perm(), s.APIKeyFile)
		}
		b, err := os.ReadFile(s.APIKeyFile)
		if err != nil {
			return "", source, fmt.Errorf("api_key_file: %w", err)
		}
		key = strings.TrimSpace(string(b))
		clear(b)
		if key == "" {
			return "", source, fmt.Errorf("api_key_file %s is empty: write the IBM Cloud API key into it", s.APIKeyFile)
		}
		return key, source, nil
	}
	v := s.APIKeyVar()
	source = "$" + v
	key = strings.TrimSpace(getenv(v))
	if key == "" {
		return "", source, fmt.Errorf("the IBM Cloud API key is not set: export %s=<API key> (or set api_key_file)", v)
	}
	return key, source, nil
}

// Stats are counts of the requests a Client made.
type Stats struct {
	API int64 // requests to Key Protect
	IAM int64 // token requests to IAM
}

// Stats returns the requests made so far.
func (c *Client) Stats() Stats {
	return Stats{API: c.apiRequests.Load(), IAM: c.iamRequests.Load()}
}

// redact removes the API key from a text a service sent back.
func (c *Client) redact(s string) string {
	return strings.ReplaceAll(s, c.apiKey(), "[redacted]")
}

// do sends one Key Protect request and decodes a 2xx reply into out (when
// not nil). A 401 refreshes the token once and tries again. Failures are
// mapped by mapStatus; transport failures are returned wrapped (the
// middleware classifies them as unreachable).
func (c *Client) do(ctx context.Context, op, what, method, path, mediaType string, in, out any, hdr http.Header) (int, error) {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return 0, fmt.Errorf("keyprotect backend %s: %s %s: %w", c.name, op, what, err)
		}
		defer clear(body) // it may carry a plaintext DEK (best effort)
	}
	stale := ""
	for attempt := 0; ; attempt++ {
		tok, err := c.tokens.get(ctx, stale)
		if err != nil {
			return 0, err
		}
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
		if err != nil {
			return 0, fmt.Errorf("keyprotect backend %s: %s %s: %w", c.name, op, what, err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("bluemix-instance", c.instance)
		req.Header.Set("Accept", "application/json")
		if body != nil {
			req.Header.Set("Content-Type", mediaType)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		c.apiRequests.Add(1)
		resp, err := c.hc.Do(req)
		if err != nil {
			return 0, fmt.Errorf("keyprotect backend %s: %s %s: %w", c.name, op, what, err)
		}
		reply, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		if err != nil {
			return 0, fmt.Errorf("keyprotect backend %s: %s %s: reading the reply: %w", c.name, op, what, err)
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			c.log.Debug("Key Protect refused the token: fetching a new one", "backend", c.name, "op", op)
			stale = tok
			continue
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return resp.StatusCode, c.mapStatus(op, what, resp.StatusCode, reply, c.redact(serviceMessage(reply)))
		}
		if out != nil && resp.StatusCode != http.StatusNoContent {
			if err := json.Unmarshal(reply, out); err != nil {
				return resp.StatusCode, fmt.Errorf("keyprotect backend %s: %s %s: unreadable reply (HTTP %d): %v", c.name, op, what, resp.StatusCode, err)
			}
		}
		clear(reply)
		return resp.StatusCode, nil
	}
}

// keyPath returns /api/v2/keys/REF plus sub, with ref escaped.
func keyPath(ref, sub string) string {
	return "/api/v2/keys/" + url.PathEscape(ref) + sub
}

func (c *Client) state(ref string) *keyState {
	c.mu.Lock()
	defer c.mu.Unlock()
	ks := c.keys[ref]
	if ks == nil {
		ks = &keyState{}
		c.keys[ref] = ks
	}
	return ks
}

// AliasFor returns the Key Protect alias of the rekey key name: "rekey-"
// and the name with '_' written "__" and '.' written "_d" (aliases allow
// only letters, digits, '-' and '_'), so that distinct names get distinct
// aliases.
func AliasFor(name string) string {
	var b strings.Builder
	b.WriteString(aliasPrefix)
	for _, r := range name {
		switch r {
		case '_':
			b.WriteString("__")
		case '.':
			b.WriteString("_d")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// keyResource is a key in Key Protect's key collection bodies.
type keyResource struct {
	Type        string      `json:"type,omitempty"`
	ID          string      `json:"id,omitempty"`
	Name        string      `json:"name,omitempty"`
	Description string      `json:"description,omitempty"`
	Aliases     []string    `json:"aliases,omitempty"`
	Extractable bool        `json:"extractable"`
	State       int         `json:"state,omitempty"`
	KeyVersion  *keyVersion `json:"keyVersion,omitempty"`
}

// keyVersion is a version reference in Key Protect's bodies.
type keyVersion struct {
	ID           string    `json:"id"`
	CreationDate time.Time `json:"creationDate"`
}

// collectionMeta is the metadata of a collection body.
type collectionMeta struct {
	CollectionType  string `json:"collectionType"`
	CollectionTotal int    `json:"collectionTotal"`
	TotalCount      *int   `json:"totalCount,omitempty"`
}

type keyCollection struct {
	Metadata  collectionMeta `json:"metadata"`
	Resources []keyResource  `json:"resources"`
}

type versionCollection struct {
	Metadata  collectionMeta `json:"metadata"`
	Resources []keyVersion   `json:"resources"`
}

// actionBody is the request and reply body of wrap, unwrap and rewrap.
type actionBody struct {
	Plaintext           string      `json:"plaintext,omitempty"`
	Ciphertext          string      `json:"ciphertext,omitempty"`
	AAD                 []string    `json:"aad,omitempty"`
	KeyVersion          *keyVersion `json:"keyVersion,omitempty"`
	RewrappedKeyVersion *keyVersion `json:"rewrappedKeyVersion,omitempty"`
	RewrappedKey        string      `json:"rewrappedKey,omitempty"`
}

// CreateKey implements rekey.KMS: a root key named name (extractable:
// false) with the alias AliasFor(name). It returns the key's id, and
// rekey.ErrKeyExists when the instance already has a key with that alias.
func (c *Client) CreateKey(ctx context.Context, name string) (string, error) {
	if err := rekey.ValidateKeyName(name); err != nil {
		return "", fmt.Errorf("keyprotect backend %s: create key: %w", c.name, err)
	}
	alias := AliasFor(name)
	if len(alias) > 90 {
		return "", rekey.Invalidf("keyprotect backend %s: key name %q makes the alias %q, longer than Key Protect's 90 characters: use a shorter name", c.name, name, alias)
	}
	var existing keyCollection
	switch _, err := c.do(ctx, "look up key", name, http.MethodGet, keyPath(alias, "/metadata"), "", nil, &existing, nil); {
	case err == nil:
		id := ""
		if len(existing.Resources) > 0 {
			id = existing.Resources[0].ID
		}
		return "", fmt.Errorf("keyprotect backend %s: create key %s: %w: instance %s has key %s with alias %s", c.name, name, rekey.ErrKeyExists, c.instance, id, alias)
	case !errors.Is(err, rekey.ErrKeyNotFound):
		return "", err
	}
	req := keyCollection{
		Metadata: collectionMeta{CollectionType: MediaKey, CollectionTotal: 1},
		Resources: []keyResource{{
			Type: MediaKey, Name: name, Aliases: []string{alias}, Extractable: false,
			Description: "rekey root key " + name,
		}},
	}
	var reply keyCollection
	hdr := http.Header{"Prefer": {"return=representation"}}
	if _, err := c.do(ctx, "create key", name, http.MethodPost, "/api/v2/keys", MediaKey, req, &reply, hdr); err != nil {
		return "", err
	}
	if len(reply.Resources) == 0 || reply.Resources[0].ID == "" {
		return "", fmt.Errorf("keyprotect backend %s: create key %s: the reply names no key id", c.name, name)
	}
	k := reply.Resources[0]
	ks := c.state(k.ID)
	ks.mu.Lock()
	ks.name = name
	ks.mu.Unlock()
	c.log.Info("key protect root key created", "backend", c.name, "key_id", name, "backend_ref", k.ID)
	return k.ID, nil
}

// listVersions reads every version of ref from Key Protect, oldest first
// (by creationDate; the reply's order breaks ties).
func (c *Client) listVersions(ctx context.Context, ref string) ([]keyVersion, error) {
	const page = 5000
	var all []keyVersion
	for offset := 0; ; offset += page {
		q := url.Values{"limit": {strconv.Itoa(page)}, "offset": {strconv.Itoa(offset)}, "totalCount": {"true"}}
		var vc versionCollection
		if _, err := c.do(ctx, "list versions of key", ref, http.MethodGet, keyPath(ref, "/versions")+"?"+q.Encode(), "", nil, &vc, nil); err != nil {
			return nil, err
		}
		all = append(all, vc.Resources...)
		total := len(all)
		if vc.Metadata.TotalCount != nil {
			total = *vc.Metadata.TotalCount
		}
		if len(vc.Resources) == 0 || len(all) >= total {
			break
		}
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("keyprotect backend %s: key %s lists no versions", c.name, ref)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].CreationDate.Before(all[j].CreationDate) })
	return all, nil
}

// refresh re-reads ref's versions and returns the ids, oldest first. Ids
// already numbered keep their numbers; new ones are appended.
func (c *Client) refresh(ctx context.Context, ref string) ([]string, error) {
	vs, err := c.listVersions(ctx, ref)
	if err != nil {
		return nil, err
	}
	ks := c.state(ref)
	ks.mu.Lock()
	defer ks.mu.Unlock()
	for _, v := range vs {
		if !slices.Contains(ks.versions, v.ID) {
			ks.versions = append(ks.versions, v.ID)
		}
	}
	return slices.Clone(ks.versions), nil
}

// versions returns the cached version ids of ref, reading them when none
// are cached or when need (a version number) is beyond them.
func (c *Client) versions(ctx context.Context, ref string, need int) ([]string, error) {
	ks := c.state(ref)
	ks.mu.Lock()
	vs := slices.Clone(ks.versions)
	ks.mu.Unlock()
	if len(vs) > 0 && need <= len(vs) {
		return vs, nil
	}
	return c.refresh(ctx, ref)
}

// numberOf returns the version number of the version id, re-reading the
// versions once when id is not known yet. It returns 0 when ref has no
// such version.
func (c *Client) numberOf(ctx context.Context, ref, id string) (int, error) {
	vs, err := c.versions(ctx, ref, 0)
	if err != nil {
		return 0, err
	}
	if i := slices.Index(vs, id); i >= 0 {
		return i + 1, nil
	}
	if vs, err = c.refresh(ctx, ref); err != nil {
		return 0, err
	}
	return slices.Index(vs, id) + 1, nil
}

// aad returns the associated data that binds wraps of ref to the rekey key
// name (the Key Protect key's name, read once).
func (c *Client) aad(ctx context.Context, ref string) ([]string, error) {
	ks := c.state(ref)
	ks.mu.Lock()
	name := ks.name
	ks.mu.Unlock()
	if name == "" {
		var kc keyCollection
		if _, err := c.do(ctx, "read metadata of key", ref, http.MethodGet, keyPath(ref, "/metadata"), "", nil, &kc, nil); err != nil {
			return nil, err
		}
		if len(kc.Resources) == 0 || kc.Resources[0].Name == "" {
			return nil, fmt.Errorf("keyprotect backend %s: key %s has no name", c.name, ref)
		}
		name = kc.Resources[0].Name
		ks.mu.Lock()
		ks.name = name
		ks.mu.Unlock()
	}
	return []string{"rekey-key:" + name}, nil
}

// CurrentVersion implements rekey.KMS: the number of versions Key Protect
// lists for ref (read afresh every call).
func (c *Client) CurrentVersion(ctx context.Context, ref string) (int, error) {
	vs, err := c.refresh(ctx, ref)
	if err != nil {
		return 0, err
	}
	return len(vs), nil
}

// RotateKey implements rekey.KMS with Key Protect's rotate action. Within
// one process rotations of a key run one at a time, so the version that
// appeared is this call's; it returns its number.
func (c *Client) RotateKey(ctx context.Context, ref string) (int, error) {
	ks := c.state(ref)
	ks.rotate.Lock()
	defer ks.rotate.Unlock()
	before, err := c.refresh(ctx, ref)
	if err != nil {
		return 0, err
	}
	if _, err := c.do(ctx, "rotate", "key "+ref, http.MethodPost, keyPath(ref, "/actions/rotate"), MediaKeyAction, struct{}{}, nil, nil); err != nil {
		return 0, err
	}
	after, err := c.refresh(ctx, ref)
	if err != nil {
		return 0, fmt.Errorf("keyprotect backend %s: key %s rotated, but its versions could not be read: %w", c.name, ref, err)
	}
	if len(after) <= len(before) {
		return 0, fmt.Errorf("keyprotect backend %s: key %s: rotate succeeded but no new version is listed (still %d)", c.name, ref, len(after))
	}
	v := len(after)
	c.log.Info("key protect key rotated", "backend", c.name, "backend_ref", ref, "version", v, "version_id", after[v-1])
	return v, nil
}

// checkVersion refuses a version number below 1 or beyond what ref has.
func (c *Client) checkVersion(ctx context.Context, ref string, v int) ([]string, error) {
	if v < 1 {
		return nil, fmt.Errorf("keyprotect backend %s: key %s version %d: %w", c.name, ref, v, rekey.ErrVersionNotFound)
	}
	vs, err := c.versions(ctx, ref, v)
	if err != nil {
		return nil, err
	}
	if v > len(vs) {
		return nil, fmt.Errorf("keyprotect backend %s: key %s version %d: %w: it has %d", c.name, ref, v, rekey.ErrVersionNotFound, len(vs))
	}
	return vs, nil
}

// notNewest is the error for a wrap under a version that is not the
// key's newest.
func (c *Client) notNewest(ref string, v, newest int) error {
	return fmt.Errorf("keyprotect backend %s: key %s version %d: %w: Key Protect wraps only under a key's newest version (v%d)", c.name, ref, v, rekey.ErrVersionDisabled, newest)
}

// Wrap implements rekey.KMS with Key Protect's wrap action. version must
// be the key's newest: Key Protect cannot wrap under an older one
// (rekey.ErrVersionDisabled). The reply's keyVersion is checked, so a
// rotation that slipped in between gives ErrVersionDisabled too, never a
// wrap labelled with the wrong version.
func (c *Client) Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 {
		return nil, rekey.Invalidf("keyprotect backend %s: wrap: empty plaintext", c.name)
	}
	vs, err := c.checkVersion(ctx, ref, version)
	if err != nil {
		return nil, err
	}
	if version < len(vs) {
		return nil, c.notNewest(ref, version, len(vs))
	}
	aad, err := c.aad(ctx, ref)
	if err != nil {
		return nil, err
	}
	in := actionBody{Plaintext: base64.StdEncoding.EncodeToString(plaintext), AAD: aad}
	var out actionBody
	_, err = c.do(ctx, "wrap", "under key "+ref, http.MethodPost, keyPath(ref, "/actions/wrap"), MediaKeyAction, in, &out, nil)
	in.Plaintext = ""
	if err != nil {
		return nil, err
	}
	ct, err := base64.StdEncoding.DecodeString(out.Ciphertext)
	if err != nil || len(ct) == 0 || out.KeyVersion == nil {
		return nil, fmt.Errorf("keyprotect backend %s: wrap under key %s: the reply has no ciphertext or keyVersion", c.name, ref)
	}
	got, err := c.numberOf(ctx, ref, out.KeyVersion.ID)
	if err != nil {
		return nil, err
	}
	if got != version {
		return nil, c.notNewest(ref, version, got)
	}
	return ct, nil
}

// Unwrap implements rekey.KMS with Key Protect's unwrap action. Bytes Key
// Protect cannot open give rekey.ErrInvalidCiphertext; bytes it opens
// under another version than version give rekey.ErrWrongVersion (the
// plaintext is zeroed, not returned).
func (c *Client) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	if len(wrapped) == 0 {
		return nil, fmt.Errorf("keyprotect backend %s: unwrap under key %s: %w: empty", c.name, ref, rekey.ErrInvalidCiphertext)
	}
	if _, err := c.checkVersion(ctx, ref, version); err != nil {
		return nil, err
	}
	aad, err := c.aad(ctx, ref)
	if err != nil {
		return nil, err
	}
	in := actionBody{Ciphertext: base64.StdEncoding.EncodeToString(wrapped), AAD: aad}
	var out actionBody
	if _, err := c.do(ctx, "unwrap", "under key "+ref, http.MethodPost, keyPath(ref, "/actions/unwrap"), MediaKeyAction, in, &out, nil); err != nil {
		return nil, err
	}
	pt, err := base64.StdEncoding.DecodeString(out.Plaintext)
	out.Plaintext = ""
	if err != nil || len(pt) == 0 || out.KeyVersion == nil {
		clear(pt)
		return nil, fmt.Errorf("keyprotect backend %s: unwrap under key %s: the reply has no plaintext or keyVersion", c.name, ref)
	}
	got, err := c.numberOf(ctx, ref, out.KeyVersion.ID)
	if err != nil {
		clear(pt)
		return nil, err
	}
	if got != version {
		clear(pt)
		return nil, fmt.Errorf("keyprotect backend %s: unwrap under key %s: %w: the bytes are under version %d, not %d", c.name, ref, rekey.ErrWrongVersion, got, version)
	}
	return pt, nil
}

// Rewrap implements rekey.Rewrapper with Key Protect's rewrap action: the
// plaintext never leaves the service. toVersion must be the key's newest
// (Key Protect re-wraps under it only: rekey.ErrVersionDisabled
// otherwise); bytes under another version than fromVersion give
// rekey.ErrWrongVersion.
func (c *Client) Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	if len(wrapped) == 0 {
		return nil, fmt.Errorf("keyprotect backend %s: rewrap under key %s: %w: empty", c.name, ref, rekey.ErrInvalidCiphertext)
	}
	if _, err := c.checkVersion(ctx, ref, fromVersion); err != nil {
		return nil, err
	}
	vs, err := c.checkVersion(ctx, ref, toVersion)
	if err != nil {
		return nil, err
	}
	if toVersion < len(vs) {
		return nil, c.notNewest(ref, toVersion, len(vs))
	}
	aad, err := c.aad(ctx, ref)
	if err != nil {
		return nil, err
	}
	in := actionBody{Ciphertext: base64.StdEncoding.EncodeToString(wrapped), AAD: aad}
	var out actionBody
	if _, err := c.do(ctx, "rewrap", "under key "+ref, http.MethodPost, keyPath(ref, "/actions/rewrap"), MediaKeyAction, in, &out, nil); err != nil {
		return nil, err
	}
	ct, err := base64.StdEncoding.DecodeString(out.Ciphertext)
	if err != nil || len(ct) == 0 || out.KeyVersion == nil || out.RewrappedKeyVersion == nil {
		return nil, fmt.Errorf("keyprotect backend %s: rewrap under key %s: the reply has no ciphertext, keyVersion or rewrappedKeyVersion", c.name, ref)
	}
	from, err := c.numberOf(ctx, ref, out.RewrappedKeyVersion.ID)
	if err != nil {
		return nil, err
	}
	if from != fromVersion {
		return nil, fmt.Errorf("keyprotect backend %s: rewrap under key %s: %w: the bytes were under version %d, not %d", c.name, ref, rekey.ErrWrongVersion, from, fromVersion)
	}
	to, err := c.numberOf(ctx, ref, out.KeyVersion.ID)
	if err != nil {
		return nil, err
	}
	if to != toVersion {
		// Not the DEK's fault (the key was rotated meanwhile): a plain
		// error fails the batch instead of marking the DEK bad.
		return nil, fmt.Errorf("keyprotect backend %s: rewrap under key %s: Key Protect re-wrapped under version %d, not %d: the key was rotated outside rekey meanwhile; run the rotation again", c.name, ref, to, toVersion)
	}
	return ct, nil
}

// Ping implements rekey.Pinger: it lists at most one key. Refused
// credentials give an *AuthError (not transient).
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.do(ctx, "ping", "instance "+c.instance, http.MethodGet, "/api/v2/keys?limit=1", "", nil, nil, nil)
	return err
}

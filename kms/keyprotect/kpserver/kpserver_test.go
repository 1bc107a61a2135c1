package kpserver_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey/kms/keyprotect/kpserver"
)

const inst = "inst-1"

type fixture struct {
	t   *testing.T
	srv *kpserver.Server
	url string
	tok string
}

func setup(t *testing.T) *fixture {
	t.Helper()
	srv := kpserver.New(kpserver.Options{InstanceID: inst, APIKeys: []string{"good-key"}, TokenTTL: 30 * time.Second})
	u := srv.Start()
	t.Cleanup(srv.Close)
	f := &fixture{t: t, srv: srv, url: u}
	status, body := f.token("good-key")
	if status != 200 {
		t.Fatalf("token: %d %s", status, body)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &tok); err != nil || tok.AccessToken == "" || tok.TokenType != "Bearer" || tok.ExpiresIn != 30 {
		t.Fatalf("token reply %s: %v", body, err)
	}
	f.tok = tok.AccessToken
	return f
}

func (f *fixture) token(apiKey string) (int, []byte) {
	f.t.Helper()
	resp, err := http.PostForm(f.url+"/identity/token", url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {apiKey}})
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// call sends a request with the fixture's token and instance and decodes
// the reply.
func (f *fixture) call(method, path, ctype string, body any, hdr map[string]string) (int, map[string]any) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, f.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+f.tok)
	req.Header.Set("bluemix-instance", inst)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out); err != nil {
			f.t.Fatalf("%s %s: reply is not JSON: %s", method, path, b)
		}
	}
	return resp.StatusCode, out
}

func (f *fixture) create(name, alias string) (int, map[string]any) {
	res := map[string]any{"type": "application/vnd.ibm.kms.key+json", "name": name, "extractable": false}
	if alias != "" {
		res["aliases"] = []string{alias}
	}
	return f.call("POST", "/api/v2/keys", "application/vnd.ibm.kms.key+json", map[string]any{
		"metadata":  map[string]any{"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": 1},
		"resources": []any{res},
	}, nil)
}

func first(m map[string]any) map[string]any {
	rs, _ := m["resources"].([]any)
	if len(rs) == 0 {
		return nil
	}
	r, _ := rs[0].(map[string]any)
	return r
}

// errorMsg checks the error envelope and returns errorMsg.
func errorMsg(t *testing.T, m map[string]any) string {
	t.Helper()
	meta, _ := m["metadata"].(map[string]any)
	if meta["collectionType"] != "application/vnd.ibm.kms.error+json" {
		t.Fatalf("error body without the error envelope: %v", m)
	}
	msg, _ := first(m)["errorMsg"].(string)
	return msg
}

func TestTokenAndAuth(t *testing.T) {
	t.Parallel()
	f := setup(t)
	status, body := f.token("bad-key")
	if status != 400 || !strings.Contains(string(body), "BXNIM0415E") {
		t.Fatalf("unknown API key: %d %s", status, body)
	}
	good := f.tok
	f.tok = "nope"
	if st, m := f.call("GET", "/api/v2/keys", "", nil, nil); st != 401 || !strings.HasPrefix(errorMsg(t, m), "Unauthorized") {
		t.Fatalf("bad token: %d %v", st, m)
	}
	f.tok = good
	if st, _ := f.call("GET", "/api/v2/keys", "", nil, map[string]string{"bluemix-instance": "other"}); st != 403 {
		t.Fatalf("other instance: %d", st)
	}
	if st, _ := f.call("GET", "/api/v2/keys", "", nil, nil); st != 200 {
		t.Fatalf("list keys: %d", st)
	}
	f.srv.ExpireTokens()
	if st, _ := f.call("GET", "/api/v2/keys", "", nil, nil); st != 401 {
		t.Fatalf("expired token: %d", st)
	}
	f.srv.Refuse(true)
	if st, _ := f.token("good-key"); st != 400 {
		t.Fatalf("IAM while refusing: %d", st)
	}
}

func TestTokenExpiresOnTheServerClock(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := kpserver.New(kpserver.Options{InstanceID: inst, APIKeys: []string{"k"}, TokenTTL: 5 * time.Second, Now: clock})
	u := srv.Start()
	defer srv.Close()
	f := &fixture{t: t, srv: srv, url: u}
	_, body := f.token("k")
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	json.Unmarshal(body, &tok)
	f.tok = tok.AccessToken
	if st, _ := f.call("GET", "/api/v2/keys", "", nil, nil); st != 200 {
		t.Fatalf("fresh token: %d", st)
	}
	mu.Lock()
	now = now.Add(5 * time.Second)
	mu.Unlock()
	if st, _ := f.call("GET", "/api/v2/keys", "", nil, nil); st != 401 {
		t.Fatalf("token past expires_in: %d, want 401", st)
	}
}

func TestKeysVersionsAndActions(t *testing.T) {
	t.Parallel()
	f := setup(t)
	st, m := f.create("payments", "rekey-payments")
	if st != 201 {
		t.Fatalf("create: %d %v", st, m)
	}
	k := first(m)
	id, _ := k["id"].(string)
	if id == "" || k["extractable"] != false || k["name"] != "payments" {
		t.Fatalf("created key %v", k)
	}
	if st, m := f.create("payments", "rekey-payments"); st != 409 || !strings.HasPrefix(errorMsg(t, m), "Conflict") {
		t.Fatalf("duplicate alias: %d %v", st, m)
	}
	if st, _ := f.call("GET", "/api/v2/keys/rekey-payments/metadata", "", nil, nil); st != 200 {
		t.Fatalf("get by alias: %d", st)
	}
	if st, m := f.call("GET", "/api/v2/keys/nope/metadata", "", nil, nil); st != 404 || !strings.HasPrefix(errorMsg(t, m), "Not Found") {
		t.Fatalf("unknown key: %d %v", st, m)
	}

	act := func(action string, body any) (int, map[string]any) {
		return f.call("POST", "/api/v2/keys/"+id+"/actions/"+action, "application/vnd.ibm.kms.key_action+json", body, nil)
	}
	pt := base64.StdEncoding.EncodeToString([]byte("a 32-byte data encryption key!!!"))
	aad := []string{"ctx"}
	st, w1 := act("wrap", map[string]any{"plaintext": pt, "aad": aad})
	if st != 200 || w1["ciphertext"] == nil || w1["keyVersion"] == nil || w1["plaintext"] != nil {
		t.Fatalf("wrap: %d %v", st, w1)
	}
	v1 := w1["keyVersion"].(map[string]any)["id"]
	if st, _ := act("rotate", nil); st != 204 {
		t.Fatalf("rotate: %d", st)
	}
	if f.srv.Versions(id) != 2 {
		t.Fatalf("versions after rotate = %d", f.srv.Versions(id))
	}
	st, vs := f.call("GET", "/api/v2/keys/"+id+"/versions?totalCount=true", "", nil, nil)
	rs, _ := vs["resources"].([]any)
	if st != 200 || len(rs) != 2 || vs["metadata"].(map[string]any)["totalCount"] != float64(2) {
		t.Fatalf("versions: %d %v", st, vs)
	}
	if rs[1].(map[string]any)["id"] != v1 {
		t.Fatalf("versions are not newest first: %v (v1 %v)", rs, v1)
	}
	v2 := rs[0].(map[string]any)["id"]

	// unwrap of a v1 ciphertext: plaintext, keyVersion v1, rewrappedKey.
	st, u := act("unwrap", map[string]any{"ciphertext": w1["ciphertext"], "aad": aad})
	if st != 200 || u["plaintext"] != pt || u["keyVersion"].(map[string]any)["id"] != v1 || u["rewrappedKey"] == nil {
		t.Fatalf("unwrap: %d %v", st, u)
	}
	// rewrap: to the newest, naming both versions.
	st, r := act("rewrap", map[string]any{"ciphertext": w1["ciphertext"], "aad": aad})
	if st != 200 || r["keyVersion"].(map[string]any)["id"] != v2 || r["rewrappedKeyVersion"].(map[string]any)["id"] != v1 {
		t.Fatalf("rewrap: %d %v", st, r)
	}
	// The re-wrapped ciphertext opens under v2 without rewrappedKey.
	st, u = act("unwrap", map[string]any{"ciphertext": r["ciphertext"], "aad": aad})
	if st != 200 || u["plaintext"] != pt || u["keyVersion"].(map[string]any)["id"] != v2 || u["rewrappedKey"] != nil {
		t.Fatalf("unwrap of the re-wrap: %d %v", st, u)
	}
	// Wrong aad, corrupt bytes, another key's ciphertext: 400.
	if st, m := act("unwrap", map[string]any{"ciphertext": w1["ciphertext"], "aad": []string{"other"}}); st != 400 || !strings.HasPrefix(errorMsg(t, m), "Bad Request") {
		t.Fatalf("wrong aad: %d %v", st, m)
	}
	raw, _ := base64.StdEncoding.DecodeString(w1["ciphertext"].(string))
	raw[len(raw)-1] ^= 1
	if st, _ := act("unwrap", map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(raw), "aad": aad}); st != 400 {
		t.Fatalf("corrupt ciphertext: %d", st)
	}
	_, m2 := f.create("other", "")
	id2 := first(m2)["id"].(string)
	if st, _ := f.call("POST", "/api/v2/keys/"+id2+"/actions/unwrap", "application/json", map[string]any{"ciphertext": w1["ciphertext"], "aad": aad}, nil); st != 400 {
		t.Fatalf("another key's ciphertext: %d", st)
	}
	// wrap without plaintext generates a 32-byte DEK.
	st, g := act("wrap", map[string]any{})
	if dek, _ := base64.StdEncoding.DecodeString(g["plaintext"].(string)); st != 200 || len(dek) != 32 {
		t.Fatalf("generated wrap: %d %v", st, g)
	}
}

func TestKnobsAndCounts(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.srv.Down(true)
	if st, m := f.call("GET", "/api/v2/keys", "", nil, nil); st != 503 || errorMsg(t, m) == "" {
		t.Fatalf("down: %d %v", st, m)
	}
	f.srv.Down(false)
	f.srv.Throttle(2)
	for i := range 2 {
		if st, _ := f.call("GET", "/api/v2/keys", "", nil, nil); st != 429 {
			t.Fatalf("throttled request %d: %d", i, st)
		}
	}
	if st, _ := f.call("GET", "/api/v2/keys", "", nil, nil); st != 200 {
		t.Fatalf("after the throttled ones: %d", st)
	}
	if f.srv.Count("list") != 4 || f.srv.Count("token") != 1 || f.srv.Requests() != 5 {
		t.Fatalf("counts: list %d token %d total %d; want 4, 1, 5", f.srv.Count("list"), f.srv.Count("token"), f.srv.Requests())
	}
	if st, _ := f.call("POST", "/api/v2/keys", "text/plain", map[string]any{}, nil); st != 415 {
		t.Fatalf("wrong media type: %d", st)
	}
}

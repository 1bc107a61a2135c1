package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"
	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

// env is one test's environment: a fresh REKEY_HOME and everything the CLI
// printed, so that a test can search all of it for leaked key material.
type env struct {
	t    *testing.T
	home string
	vars map[string]string
	all  bytes.Buffer // every byte any command wrote to stdout or stderr
}

func newEnv(t *testing.T) *env {
	t.Helper()
	home := filepath.Join(t.TempDir(), "rekey-data")
	return &env{t: t, home: home, vars: map[string]string{"REKEY_HOME": home, "USER": "tester"}}
}

func (e *env) getenv(k string) string { return e.vars[k] }

// rekey runs one command in process and returns its exit code and output.
func (e *env) rekey(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	return e.rekeyIn(nil, args...)
}

func (e *env) rekeyIn(stdin []byte, args ...string) (int, string, string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"--log-level", "debug"}, args...), bytes.NewReader(stdin), &out, &errb, e.getenv)
	// Data written to stdout by encrypt/decrypt is the product, not a log:
	// only the other output is searched for leaks.
	if len(args) == 0 || (args[0] != "decrypt" && args[0] != "encrypt") {
		e.all.Write(out.Bytes())
	}
	e.all.Write(errb.Bytes())
	return code, out.String(), errb.String()
}

// must runs a command that has to succeed.
func (e *env) must(args ...string) string {
	e.t.Helper()
	code, out, errs := e.rekey(args...)
	if code != 0 {
		e.t.Fatalf("rekey %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func (e *env) writeFile(name string, data []byte) string {
	e.t.Helper()
	p := filepath.Join(filepath.Dir(e.home), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// openDirect opens the embedded default's store and keyring the way a
// library user would, to check what the CLI did.
func (e *env) openDirect() (*sqlitestore.Store, *localkms.Client, *rekey.Keyring) {
	e.t.Helper()
	ctx := context.Background()
	s, err := sqlitestore.Open(ctx, sqlitestore.Config{Path: filepath.Join(e.home, "rekey.db")})
	if err != nil {
		e.t.Fatal(err)
	}
	k, err := localkms.New(ctx, localkms.Config{Keyring: filepath.Join(e.home, "keyring"), MasterKeyFile: filepath.Join(e.home, "master.key")})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close(); k.Close() })
	return s, k, rekey.NewKeyring(s, map[string]rekey.KMS{"local": k})
}

// TestWalkthrough is the README's five minutes: init, a key, 10,000 DEKs,
// files sealed and opened byte for byte, status. It then searches every log
// line and message of the whole walkthrough for every plaintext it handled:
// the master key, each DEK that sealed a file, and the file contents.
func TestWalkthrough(t *testing.T) {
	e := newEnv(t)
	out := e.must("init")
	if !strings.Contains(out, "initialized rekey in") {
		t.Fatalf("init printed %q", out)
	}
	if out := e.must("init"); !strings.Contains(out, "already initialized") {
		t.Fatalf("second init printed %q", out)
	}
	e.must("key", "create", "payments")
	var created struct{ Created int }
	if err := json.Unmarshal([]byte(e.must("dek", "create", "--key", "payments", "--count", "10000", "--json")), &created); err != nil || created.Created != 10000 {
		t.Fatalf("dek create --count: %+v %v", created, err)
	}
	var show struct {
		Name          string `json:"name"`
		ActiveVersion int    `json:"active_version"`
		Versions      []struct {
			Version int    `json:"version"`
			State   string `json:"state"`
			DEKs    int64  `json:"deks"`
		} `json:"versions"`
	}
	if err := json.Unmarshal([]byte(e.must("key", "show", "payments", "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if show.ActiveVersion != 1 || len(show.Versions) != 1 || show.Versions[0].DEKs != 10000 || show.Versions[0].State != "active" {
		t.Fatalf("key show: %+v", show)
	}

	var single struct {
		ID      string `json:"id"`
		Key     string `json:"key"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal([]byte(e.must("dek", "create", "--key", "payments", "--label", "one", "--json")), &single); err != nil || !rekey.ValidID(single.ID) || single.Version != 1 {
		t.Fatalf("dek create: %+v %v", single, err)
	}
	if out := e.must("dek", "show", single.ID); !strings.Contains(out, "unwraps   yes") {
		t.Fatalf("dek show: %s", out)
	}

	var plaintexts [][]byte
	var dekIDs []string
	for _, size := range []int{0, 1, 1 << 20, 3<<16 + 5} {
		plain := randomBytes(t, size)
		plaintexts = append(plaintexts, plain)
		in := e.writeFile("plain.bin", plain)
		sealed := in + ".rekey"
		back := in + ".back"
		e.must("encrypt", "--key", "payments", "--in", in, "--out", sealed)
		e.must("decrypt", "--in", sealed, "--out", back)
		got, err := os.ReadFile(back)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: decrypt differs (err %v)", size, err)
		}
		st, _ := os.Stat(back)
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("decrypted file mode %v, want 0600", st.Mode().Perm())
		}
		f, _ := os.Open(sealed)
		h, err := rekey.ReadEnvelopeHeader(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		dekIDs = append(dekIDs, h.DEKID)
	}
	// stdin to stdout too.
	plain := randomBytes(t, 1000)
	plaintexts = append(plaintexts, plain)
	code, sealed, errs := e.rekeyIn(plain, "encrypt", "--key", "payments")
	if code != 0 {
		t.Fatalf("encrypt stdin: %d %s", code, errs)
	}
	code, back, errs := e.rekeyIn([]byte(sealed), "decrypt")
	if code != 0 || back != string(plain) {
		t.Fatalf("decrypt stdin: %d %s", code, errs)
	}
	if out := e.must("status"); !strings.Contains(out, "key payments") || !strings.Contains(out, "10006") {
		t.Fatalf("status: %s", out)
	}

	// Now the leak search.
	mkText, err := os.ReadFile(filepath.Join(e.home, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	master, err := localkms.ParseMasterKey(strings.TrimSpace(string(mkText)))
	if err != nil {
		t.Fatal(err)
	}
	secrets := [][]byte{master}
	_, _, kr := e.openDirect()
	for _, id := range append(dekIDs, single.ID) {
		p, err := kr.OpenDEK(context.Background(), id)
		if err != nil {
			t.Fatalf("open dek %s: %v", id, err)
		}
		secrets = append(secrets, p)
	}
	for _, p := range plaintexts {
		if len(p) >= 16 {
			secrets = append(secrets, p[:16])
		}
	}
	assertNoLeak(t, e.all.Bytes(), secrets)
}

// assertNoLeak fails if any secret appears in text as raw bytes, hex
// (either case) or any base64 alphabet.
func assertNoLeak(t *testing.T, text []byte, secrets [][]byte) {
	t.Helper()
	lower := bytes.ToLower(text)
	for i, s := range secrets {
		forms := map[string][]byte{
			"raw":        s,
			"hex":        []byte(hex.EncodeToString(s)),
			"base64":     []byte(base64.StdEncoding.EncodeToString(s)),
			"base64-raw": []byte(base64.RawStdEncoding.EncodeToString(s)),
			"base64-url": []byte(base64.RawURLEncoding.EncodeToString(s)),
		}
		for form, f := range forms {
			hay := text
			if form == "hex" {
				hay = lower
			}
			if bytes.Contains(hay, f) {
				t.Errorf("secret %d leaked in the output as %s", i, form)
			}
		}
	}
	if len(text) == 0 {
		t.Error("the walkthrough printed nothing: the leak search searched nothing")
	}
}

func fileDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st, _ := d.Info()
		sum := sha256.Sum256(b)
		out[p] = hex.EncodeToString(sum[:]) + st.ModTime().String() + st.Mode().String()
		return nil
	})
	return out
}

// TestKeyFilesArePrivate: every file holding key material is 0600, and after
// chmod 644 on the keyring or the master key file every command refuses,
// naming the file.
func TestKeyFilesArePrivate(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	e.must("dek", "create", "--key", "payments")
	for _, f := range []string{"master.key", "keyring", "rekey.db"} {
		st, err := os.Stat(filepath.Join(e.home, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	for _, f := range []string{"keyring", "master.key"} {
		p := filepath.Join(e.home, f)
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"status"}, {"key", "list"}, {"key", "show", "payments"}, {"dek", "create", "--key", "payments"}, {"key", "create", "other"}} {
			code, _, errs := e.rekey(args...)
			if code != 1 || !strings.Contains(errs, p) || !strings.Contains(errs, "chmod 600") {
				t.Errorf("%s 0644, rekey %v: exit %d, stderr %q; want exit 1 naming the file and chmod 600", f, args, code, errs)
			}
		}
		os.Chmod(p, 0o600)
	}
	e.must("status")
}

// TestWrongMasterKey: a clear error, exit 1, and no file changed.
func TestWrongMasterKey(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	e.must("dek", "create", "--key", "payments", "--count", "3")
	before := fileDigests(t, e.home)
	e.vars["REKEY_MASTER_KEY"] = base64.StdEncoding.EncodeToString(randomBytes(t, 32))
	for _, args := range [][]string{{"status"}, {"dek", "create", "--key", "payments"}, {"key", "create", "other"}} {
		code, _, errs := e.rekey(args...)
		if code != 1 || !strings.Contains(errs, "master key") {
			t.Errorf("rekey %v with a wrong master key: exit %d, stderr %q", args, code, errs)
		}
	}
	e.vars["REKEY_MASTER_KEY"] = "not base64!"
	if code, _, errs := e.rekey("status"); code != 1 || !strings.Contains(errs, "REKEY_MASTER_KEY") {
		t.Errorf("malformed REKEY_MASTER_KEY: exit %d, %q", code, errs)
	}
	after := fileDigests(t, e.home)
	for p, d := range before {
		if after[p] != d {
			t.Errorf("%s changed after a wrong master key", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok && !strings.HasSuffix(p, ".lock") {
			t.Errorf("%s appeared after a wrong master key", p)
		}
	}
}

// TestCorruptWrappedDEK flips one byte of one stored wrapped DEK: dek show
// and decrypt of data under it fail naming the DEK id, every other DEK
// still works.
func TestCorruptWrappedDEK(t *testing.T) {
	e := newEnv(t)
	e.must("init")
	e.must("key", "create", "payments")
	var ids []string
	var sealed []string
	for i := 0; i < 3; i++ {
		in := e.writeFile("f"+string(rune('a'+i)), randomBytes(t, 5000))
		e.must("encrypt", "--key", "payments", "--in", in, "--out", in+".rekey")
		f, _ := os.Open(in + ".rekey")
		h, err := rekey.ReadEnvelopeHeader(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, h.DEKID)
		sealed = append(sealed, in+".rekey")
	}
	db, err := sql.Open("sqlite3", filepath.Join(e.home, "rekey.db"))
	if err != nil {
		t.Fatal(err)
	}
	var w []byte
	if err := db.QueryRow(`SELECT wrapped FROM deks WHERE id = ?`, ids[1]).Scan(&w); err != nil {
		t.Fatal(err)
	}
	w[len(w)/2] ^= 0x40
	if _, err := db.Exec(`UPDATE deks SET wrapped = ? WHERE id = ?`, w, ids[1]); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if code, _, errs := e.rekey("dek", "show", ids[1]); code != 1 || !strings.Contains(errs, ids[1]) {
		t.Errorf("dek show of the corrupt DEK: exit %d, stderr %q", code, errs)
	}
	out := filepath.Join(filepath.Dir(e.home), "out")
	if code, _, errs := e.rekey("decrypt", "--in", sealed[1], "--out", out); code != 1 || !strings.Contains(errs, ids[1]) {
		t.Errorf("decrypt under the corrupt DEK: exit %d, stderr %q", code, errs)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed decrypt left an output file")
	}
	for _, i := range []int{0, 2} {
		e.must("dek", "show", ids[i])
		e.must("decrypt", "--in", sealed[i], "--out", out)
	}
}

// TestConfigValidate: each kind of bad config exits non-zero naming the
// field path.
func TestConfigValidate(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	good := string(config.DefaultYAML())
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown field", good + "\nbogus: 1\n", []string{"bogus"}},
		{"bad duration", strings.Replace(good, "check_interval: 1m", "check_interval: 5x", 1), []string{"worker.check_interval"}},
		{"unknown backend type", strings.Replace(good, "type: local", "type: aws", 1), []string{"backends.local.type"}},
		{"missing dsn", strings.Replace(good, "dsn: rekey.db", "dsn: \"\"", 1), []string{"store.dsn"}},
		{"all at once", strings.Replace(strings.Replace(good, "check_interval: 1m", "check_interval: 5x", 1), "type: local", "type: aws", 1),
			[]string{"worker.check_interval", "backends.local.type"}},
	}
	for _, tc := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml")
		os.WriteFile(p, []byte(tc.yaml), 0o600)
		code, _, errs := e.rekey("config", "validate", "--config", p)
		if code == 0 {
			t.Errorf("%s: exit 0", tc.name)
		}
		for _, w := range tc.want {
			if !strings.Contains(errs, w) {
				t.Errorf("%s: stderr %q does not name %s", tc.name, errs, w)
			}
		}
	}
	p := filepath.Join(dir, "good.yaml")
	os.WriteFile(p, []byte(good), 0o600)
	if code, out, errs := e.rekey("config", "validate", "--config", p); code != 0 || !strings.Contains(out, "valid") {
		t.Errorf("good config: exit %d %s %s", code, out, errs)
	}
}

// TestUsageErrors: misuse exits 2 with a message saying what is wrong.
func TestUsageErrors(t *testing.T) {
	e := newEnv(t)
	for _, args := range [][]string{{"key", "show"}, {"dek", "create"}, {"nosuch"}, {"key", "create", "x", "--period", "soon"}, {"--bogus"}, {"dek", "show", "xyz"}} {
		if code, _, errs := e.rekey(args...); code != 2 || errs == "" {
			t.Errorf("rekey %v: exit %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
	if code, _, errs := e.rekey("key", "show", "nosuch"); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("unknown key: exit %d %q", code, errs)
	}
}

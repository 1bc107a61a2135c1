package localkms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/fileutil"
	"github.com/rekeyhq/rekey/kmstest"
)

func TestConformance(t *testing.T) {
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return setup(t).open(t) })
}

// fixture is a directory with a master key file and room for a keyring.
type fixture struct {
	dir, keyring, masterFile string
}

func setup(t testing.TB) fixture {
	t.Helper()
	dir := t.TempDir()
	f := fixture{dir: dir, keyring: filepath.Join(dir, "keyring"), masterFile: filepath.Join(dir, "master.key")}
	if err := CreateMasterKeyFile(f.masterFile); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f fixture) config() Config {
	return Config{Keyring: f.keyring, MasterKeyFile: f.masterFile, Create: true}
}

// open returns a Client on the fixture's keyring, closed at the end of the
// test; edit changes its Config.
func (f fixture) open(t testing.TB, edit ...func(*Config)) *Client {
	t.Helper()
	cfg := f.config()
	for _, e := range edit {
		e(&cfg)
	}
	c, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// snapshot is a file's bytes and modification time.
type snapshot struct {
	data  []byte
	mtime time.Time
}

func snap(t *testing.T, path string) snapshot {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{data, fi.ModTime()}
}

func (s snapshot) assertUnchanged(t *testing.T, path string) {
	t.Helper()
	now := snap(t, path)
	if !bytes.Equal(now.data, s.data) || !now.mtime.Equal(s.mtime) {
		t.Errorf("%s was changed", path)
	}
}

func mustWrap(t testing.TB, c *Client, ref string, v int, pt []byte) []byte {
	t.Helper()
	w, err := c.Wrap(t.Context(), ref, v, pt)
	if err != nil {
		t.Fatalf("Wrap(%s v%d): %v", ref, v, err)
	}
	return w
}

func mustUnwrap(t testing.TB, c *Client, ref string, v int, w, want []byte) {
	t.Helper()
	got, err := c.Unwrap(t.Context(), ref, v, w)
	if err != nil {
		t.Fatalf("Unwrap(%s v%d): %v", ref, v, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Unwrap(%s v%d) returned other bytes than were wrapped", ref, v)
	}
}

func mustCreate(t testing.TB, c *Client, name string) string {
	t.Helper()
	ref, err := c.CreateKey(t.Context(), name)
	if err != nil {
		t.Fatalf("CreateKey(%s): %v", name, err)
	}
	return ref
}

func dek(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 32) }

func TestFilePermissions(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.keyring = filepath.Join(f.dir, "sub", "keyring")
	c := f.open(t)
	mustCreate(t, c, "payments")
	for _, p := range []string{f.keyring, f.keyring + ".lock", f.masterFile} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", p, perm)
		}
	}
	if fi, err := os.Stat(filepath.Dir(f.keyring)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("created keyring directory: %v, mode %v; want 0700", err, fi.Mode())
	}

	for _, p := range []string{f.keyring, f.masterFile} {
		for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
			before := snap(t, p)
			_, err := New(t.Context(), f.config())
			if err == nil {
				t.Fatalf("New with %s mode %04o succeeded, want refusal", p, mode)
			}
			if msg := err.Error(); !strings.Contains(msg, p) || !strings.Contains(msg, "chmod 600 "+p) {
				t.Errorf("refusal of %s mode %04o does not name the file and the fix: %v", p, mode, err)
			}
			before.assertUnchanged(t, p)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.open(t) // accepted again
}

func TestCheckPrivate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	err := CheckPrivate(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("CheckPrivate(missing) = %v, want a not-exist error naming the file", err)
	}
	if err := CheckPrivate(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("CheckPrivate(dir) = %v, want not a regular file", err)
	}
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivate(p); err != nil {
		t.Errorf("CheckPrivate(0600) = %v", err)
	}
	os.Chmod(p, 0o400)
	if err := CheckPrivate(p); err != nil {
		t.Errorf("CheckPrivate(0400) = %v", err)
	}
	os.Chmod(p, 0o602)
	if err := CheckPrivate(p); err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Errorf("CheckPrivate(0602) = %v, want refusal with the fix", err)
	}
}

func TestParseMasterKey(t *testing.T) {
	t.Parallel()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(250 - i) // has bytes that differ between std and url alphabets
	}
	std := base64.StdEncoding.EncodeToString(key)
	rawURL := base64.RawURLEncoding.EncodeToString(key)
	for _, s := range []string{std, rawURL, std + "\n", "  " + rawURL + "\r\n"} {
		got, err := ParseMasterKey(s)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("ParseMasterKey(%d chars) = %v; want the key", len(s), err)
		}
	}
	bad := []struct{ in, want string }{
		{"", "empty"},
		{"   \n", "empty"},
		{base64.StdEncoding.EncodeToString(key[:31]), "31 bytes"},
		{base64.StdEncoding.EncodeToString(append(key, 1)), "33 bytes"},
		{base64.RawStdEncoding.EncodeToString(key[:24]) + "!!!!", "not valid base64"},
		{hex.EncodeToString(key), "48 bytes"},
		{base64.URLEncoding.EncodeToString(key), "not valid base64"},
	}
	for _, b := range bad {
		_, err := ParseMasterKey(b.in)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseMasterKey(%d chars) = %v, want an error saying %q", len(b.in), err, b.want)
			continue
		}
		if trimmed := strings.TrimSpace(b.in); len(trimmed) > 4 && strings.Contains(err.Error(), trimmed[:5]) {
			t.Errorf("error echoes the value: %v", err)
		}
	}
}

func TestCreateMasterKeyFile(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "master.key")
	if err := CreateMasterKeyFile(p); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 45 || data[44] != '\n' {
		t.Errorf("master key file is %d bytes, want 44 characters of base64 and a newline", len(data))
	}
	if k, err := ParseMasterKey(string(data)); err != nil || len(k) != 32 {
		t.Errorf("the file does not parse: %v", err)
	}
	if err := CheckPrivate(p); err != nil {
		t.Error(err)
	}
	if err := CreateMasterKeyFile(p); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second CreateMasterKeyFile = %v, want ErrExist", err)
	}
	if again, _ := os.ReadFile(p); !bytes.Equal(again, data) {
		t.Error("second CreateMasterKeyFile changed the file")
	}
	p2 := filepath.Join(filepath.Dir(p), "other.key")
	CreateMasterKeyFile(p2)
	if other, _ := os.ReadFile(p2); bytes.Equal(other, data) {
		t.Error("two master keys are equal")
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	f := setup(t)
	key := make([]byte, 32)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no keyring", Config{MasterKeyFile: f.masterFile}, "no keyring file"},
		{"no master key", Config{Keyring: f.keyring, Create: true}, "REKEY_MASTER_KEY or master_key_file"},
		{"short master key", Config{Keyring: f.keyring, MasterKey: key[:16], Create: true}, "16 bytes, want 32"},
		{"missing master key file", Config{Keyring: f.keyring, MasterKeyFile: f.masterFile + ".nope", Create: true}, f.masterFile + ".nope"},
		{"missing keyring", Config{Keyring: f.keyring, MasterKeyFile: f.masterFile}, "rekey init"},
		{"usage limit too high", Config{Keyring: f.keyring, MasterKeyFile: f.masterFile, Create: true, UsageLimit: 1<<32 + 1}, "safe bound"},
	}
	for _, tc := range tests {
		_, err := New(t.Context(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := os.Stat(f.keyring); !errors.Is(err, fs.ErrNotExist) {
		t.Error("a refused New created the keyring")
	}
	// The master key may also come from the environment (decoded by the caller).
	c := f.open(t, func(c *Config) { c.MasterKey, c.MasterKeyFile = key, "" })
	mustCreate(t, c, "k")
}

func TestWrongMasterKey(t *testing.T) {
	t.Parallel()
	f := setup(t)
	mustCreate(t, f.open(t), "payments")
	before := snap(t, f.keyring)

	other := make([]byte, 32)
	other[0] = 1
	_, err := New(t.Context(), Config{Keyring: f.keyring, MasterKey: other, Create: true})
	if !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("New with another master key = %v, want ErrWrongMasterKey", err)
	}
	want := "keyring " + f.keyring + ": the master key does not match this keyring (check REKEY_MASTER_KEY)"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}

	otherFile := filepath.Join(f.dir, "other.key")
	if err := CreateMasterKeyFile(otherFile); err != nil {
		t.Fatal(err)
	}
	_, err = New(t.Context(), Config{Keyring: f.keyring, MasterKeyFile: otherFile, Create: true})
	if !errors.Is(err, ErrWrongMasterKey) || !strings.Contains(err.Error(), "check master_key_file "+otherFile) {
		t.Errorf("New with another master key file = %v, want ErrWrongMasterKey naming the file", err)
	}
	before.assertUnchanged(t, f.keyring)
	mustCreate(t, f.open(t), "still-works")
}

func TestCorruptKeyring(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := f.open(t)
	mustCreate(t, c, "payments")
	c.Close()
	good, err := os.ReadFile(f.keyring)
	if err != nil {
		t.Fatal(err)
	}
	kcvAt := len(keyringMagic) + 1
	flip := func(i int) func([]byte) []byte {
		return func(b []byte) []byte { b[i] ^= 0x10; return b }
	}
	tests := []struct {
		name   string
		mutate func([]byte) []byte
		want   error
	}{
		{"last byte", flip(len(good) - 1), ErrKeyringCorrupt},
		{"middle of payload", flip(keyringHeaderSize + (len(good)-keyringHeaderSize)/2), ErrKeyringCorrupt},
		{"nonce", flip(keyringHeaderSize - 1), ErrKeyringCorrupt},
		{"magic", flip(0), ErrKeyringCorrupt},
		{"key check value", flip(kcvAt), ErrWrongMasterKey},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, ErrKeyringCorrupt},
		{"header only", func(b []byte) []byte { return b[:keyringHeaderSize] }, ErrKeyringCorrupt},
		{"empty", func(b []byte) []byte { return b[:0] }, ErrKeyringCorrupt},
		{"appended", func(b []byte) []byte { return append(b, 0) }, ErrKeyringCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := tc.mutate(bytes.Clone(good))
			if err := os.WriteFile(f.keyring, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			before := snap(t, f.keyring)
			_, err := New(t.Context(), f.config()) // Create is set: it must still not replace the file
			if !errors.Is(err, tc.want) {
				t.Fatalf("New = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), f.keyring) {
				t.Errorf("error does not name the keyring: %v", err)
			}
			if tc.want == ErrKeyringCorrupt && !strings.Contains(err.Error(), "the file was not changed") {
				t.Errorf("error does not say the file is untouched: %v", err)
			}
			before.assertUnchanged(t, f.keyring)
		})
	}

	bad := bytes.Clone(good)
	bad[len(keyringMagic)] = 9
	os.WriteFile(f.keyring, bad, 0o600)
	if _, err := New(t.Context(), f.config()); err == nil || !strings.Contains(err.Error(), "unsupported keyring format 9") {
		t.Errorf("New with format 9 = %v, want unsupported format", err)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestCorruptedWhileRunning(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var logs lockedBuffer
	c := f.open(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	c.refreshEvery = 0 // re-read on every call
	ref := mustCreate(t, c, "payments")
	w := mustWrap(t, c, ref, 1, dek(1))

	data, _ := os.ReadFile(f.keyring)
	data[len(data)-1] ^= 1
	os.WriteFile(f.keyring, data, 0o600)
	before := snap(t, f.keyring)

	if _, err := c.RotateKey(t.Context(), ref); !errors.Is(err, ErrKeyringCorrupt) {
		t.Errorf("RotateKey on a corrupted keyring = %v, want ErrKeyringCorrupt", err)
	}
	if _, err := c.CreateKey(t.Context(), "other"); !errors.Is(err, ErrKeyringCorrupt) {
		t.Errorf("CreateKey on a corrupted keyring = %v, want ErrKeyringCorrupt", err)
	}
	if _, err := c.CurrentVersion(t.Context(), ref); !errors.Is(err, ErrKeyringCorrupt) {
		t.Errorf("CurrentVersion on a corrupted keyring = %v, want ErrKeyringCorrupt", err)
	}
	// What was read while the file was good is still used.
	mustUnwrap(t, c, ref, 1, w, dek(1))
	if !strings.Contains(logs.String(), "cannot re-read the keyring") {
		t.Errorf("the failed re-read was not logged; log:\n%s", logs.String())
	}
	before.assertUnchanged(t, f.keyring)
}

func TestTwoClientsOneFile(t *testing.T) {
	t.Parallel()
	f := setup(t)
	a, b := f.open(t), f.open(t)
	ref := mustCreate(t, a, "payments")
	w1 := mustWrap(t, b, ref, 1, dek(1)) // b learns of the key from the file

	type wrapped struct {
		v int
		w []byte
		i int
	}
	const rounds = 6
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		all     []wrapped
		seenVer = map[int]bool{}
	)
	for ci, c := range []*Client{a, b} {
		wg.Go(func() {
			for i := range rounds {
				v, err := c.RotateKey(t.Context(), ref)
				if err != nil {
					t.Errorf("client %d RotateKey: %v", ci, err)
					return
				}
				n := ci*rounds + i + 2
				w, err := c.Wrap(t.Context(), ref, v, dek(n))
				if err != nil {
					t.Errorf("client %d Wrap(v%d): %v", ci, v, err)
					return
				}
				mu.Lock()
				if seenVer[v] {
					t.Errorf("version %d was created twice", v)
				}
				seenVer[v] = true
				all = append(all, wrapped{v, w, n})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, c := range []*Client{a, b} {
		if v, err := c.CurrentVersion(t.Context(), ref); err != nil || v != 2*rounds+1 {
			t.Errorf("CurrentVersion = %d, %v; want %d (no version lost)", v, err, 2*rounds+1)
		}
		mustUnwrap(t, c, ref, 1, w1, dek(1))
		for _, x := range all {
			mustUnwrap(t, c, ref, x.v, x.w, dek(x.i))
		}
	}
	// And a third Client, reading the file cold, agrees.
	cold := f.open(t)
	for _, x := range all {
		mustUnwrap(t, cold, ref, x.v, x.w, dek(x.i))
	}
}

func TestRetireSeenByOtherClient(t *testing.T) {
	t.Parallel()
	f := setup(t)
	a, b := f.open(t), f.open(t)
	ref := mustCreate(t, a, "payments")
	w := mustWrap(t, a, ref, 1, dek(1))
	if _, err := b.RotateKey(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	mustUnwrap(t, b, ref, 1, w, dek(1))
	if err := b.RetireVersion(t.Context(), ref, 1); err != nil {
		t.Fatal(err)
	}
	// a has not re-read yet: it still has version 1 usable in memory.
	mustUnwrap(t, a, ref, 1, w, dek(1))
	// Its periodic re-read picks the retirement up.
	a.refreshEvery = 0
	if _, err := a.Unwrap(t.Context(), ref, 1, w); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Errorf("Unwrap under a version another client retired = %v, want ErrVersionDisabled", err)
	}
}

func TestRetireAndDestroyRules(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := f.open(t)
	ctx := t.Context()
	ref := mustCreate(t, c, "payments")
	if err := c.RetireVersion(ctx, ref, 1); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("RetireVersion(newest) = %v, want ErrInvalidArgument", err)
	}
	c.RotateKey(ctx, ref)
	if err := c.DestroyVersion(ctx, ref, 1); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("DestroyVersion(not retired) = %v, want ErrInvalidArgument", err)
	}
	if err := c.RetireVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	d := readFile(t, f)
	if v := d.Keys[ref].Versions[0]; v.State != stateRetired || len(v.Material) != 32 || v.Retired.IsZero() {
		t.Errorf("retired version in the file: state %s, %d bytes of material, retired %v", v.State, len(v.Material), v.Retired)
	}
	if err := c.DestroyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	d = readFile(t, f)
	if v := d.Keys[ref].Versions[0]; v.State != stateDestroyed || v.Material != nil || v.Destroyed.IsZero() {
		t.Errorf("destroyed version in the file: state %s, %d bytes of material", v.State, len(v.Material))
	}
	if v := d.Keys[ref].Versions[1]; v.State != stateUsable || len(v.Material) != 32 {
		t.Errorf("version 2 in the file: state %s", v.State)
	}
}

// readFile decodes the fixture's keyring file.
func readFile(t *testing.T, f fixture) *keyringData {
	t.Helper()
	master, err := readMasterKeyFile(f.masterFile)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(f.keyring)
	if err != nil {
		t.Fatal(err)
	}
	d, err := decodeKeyring(data, master)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestUsageLimit(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := f.open(t, func(c *Config) { c.UsageLimit, c.CounterBlock = 10, 4 })
	ctx := t.Context()
	ref := mustCreate(t, c, "payments")
	var ws [][]byte
	for i := range 10 {
		ws = append(ws, mustWrap(t, c, ref, 1, dek(i)))
	}
	if _, err := c.Wrap(ctx, ref, 1, dek(10)); !errors.Is(err, rekey.ErrUsageLimit) {
		t.Fatalf("wrap 11 of 10 = %v, want ErrUsageLimit", err)
	}
	if _, err := c.Rewrap(ctx, ref, 1, ws[0], 1); !errors.Is(err, rekey.ErrUsageLimit) {
		t.Errorf("Rewrap into an exhausted version = %v, want ErrUsageLimit", err)
	}
	// Unwrapping is not limited, and a new version starts afresh.
	mustUnwrap(t, c, ref, 1, ws[9], dek(9))
	v2, err := c.RotateKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Rewrap(ctx, ref, 1, ws[0], v2)
	if err != nil {
		t.Fatal(err)
	}
	mustUnwrap(t, c, ref, v2, w, dek(0))
	if got := readFile(t, f).Keys[ref].Versions[0].Reserved; got != 10 {
		t.Errorf("version 1 reserved %d counts in the file, want 10", got)
	}
}

func TestUsageLimitAcrossClients(t *testing.T) {
	t.Parallel()
	f := setup(t)
	const limit = 100
	limits := func(c *Config) { c.UsageLimit, c.CounterBlock = limit, 7 }
	a, b := f.open(t, limits), f.open(t, limits)
	ref := mustCreate(t, a, "payments")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
	)
	for _, c := range []*Client{a, b, a, b} {
		wg.Go(func() {
			for {
				_, err := c.Wrap(t.Context(), ref, 1, dek(1))
				if errors.Is(err, rekey.ErrUsageLimit) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if total != limit {
		t.Errorf("two clients wrapped %d times under one version, want exactly the limit %d", total, limit)
	}
}

func TestCountsSurviveRestart(t *testing.T) {
	t.Parallel()
	f := setup(t)
	limits := func(c *Config) { c.UsageLimit, c.CounterBlock = 20, 7 }
	a := f.open(t, limits)
	ref := mustCreate(t, a, "payments")
	for i := range 4 {
		mustWrap(t, a, ref, 1, dek(i)) // reserves blocks of 1, 2 and 4: 0..7, uses 4
	}
	// a "crashes" (no Close): its 3 unused counts are gone, never reused.

	b := f.open(t, limits)
	n := 0
	for ; n < 100; n++ {
		if _, err := b.Wrap(t.Context(), ref, 1, dek(1)); errors.Is(err, rekey.ErrUsageLimit) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if n != 13 {
		t.Errorf("after a restart the version wrapped %d more times, want 20-7 = 13", n)
	}
}

func TestInterruptedWriteIgnored(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := f.open(t)
	ref := mustCreate(t, c, "payments")
	w := mustWrap(t, c, ref, 1, dek(1))
	c.Close()

	// A crash between writing the temporary file and renaming it leaves the
	// temporary file: here a complete newer keyring, and a half-written one.
	good := snap(t, f.keyring).data
	newer := f.open(t)
	mustCreate(t, newer, "never-committed")
	newer.Close()
	newerBytes := snap(t, f.keyring).data
	if err := os.WriteFile(f.keyring, good, 0o600); err != nil {
		t.Fatal(err)
	}
	stale1 := filepath.Join(f.dir, fileutil.TempPrefix(f.keyring)+"123")
	stale2 := filepath.Join(f.dir, fileutil.TempPrefix(f.keyring)+"456")
	os.WriteFile(stale1, newerBytes, 0o600)
	os.WriteFile(stale2, newerBytes[:len(newerBytes)/2], 0o600)

	c2 := f.open(t)
	mustUnwrap(t, c2, ref, 1, w, dek(1))
	if _, err := c2.CurrentVersion(t.Context(), "never-committed"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("a key only in a temporary file is visible: %v", err)
	}
	if _, err := c2.RotateKey(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{stale1, stale2} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale temporary file %s was not removed under the lock: %v", p, err)
		}
	}
	entries, _ := os.ReadDir(f.dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left after a successful write", e.Name())
		}
	}
}

func TestNoSecretsInLogsOrErrors(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var logs lockedBuffer
	c := f.open(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.UsageLimit, c.CounterBlock = 3, 1
	})
	ctx := t.Context()
	var errs []error
	note := func(_ any, err error) { errs = append(errs, err) }
	ref := mustCreate(t, c, "payments")
	w := mustWrap(t, c, ref, 1, dek(7))
	note(c.Wrap(ctx, ref, 1, dek(7)))
	note(c.Wrap(ctx, ref, 1, dek(7)))
	note(c.Wrap(ctx, ref, 1, dek(7))) // usage limit
	note(c.Unwrap(ctx, ref, 1, append(bytes.Clone(w), 1)))
	note(c.Unwrap(ctx, ref, 2, w))
	note(c.RotateKey(ctx, ref))
	errs = append(errs, c.RetireVersion(ctx, ref, 1), c.DestroyVersion(ctx, ref, 1))
	note(c.Unwrap(ctx, ref, 1, w))
	note(c.CreateKey(ctx, "payments"))

	master, _ := readMasterKeyFile(f.masterFile)
	secrets := [][]byte{master, dek(7)}
	for _, k := range readFile(t, f).Keys {
		for _, v := range k.Versions {
			secrets = append(secrets, v.Material)
		}
	}
	var text strings.Builder
	text.WriteString(logs.String())
	for _, err := range errs {
		if err != nil {
			text.WriteString(err.Error())
		}
	}
	if !strings.Contains(text.String(), "reserved encryption counts") || !strings.Contains(text.String(), "encryption limit") {
		t.Fatalf("the test did not exercise logging and errors:\n%s", text.String())
	}
	for _, s := range secrets {
		if len(s) == 0 {
			continue
		}
		for _, enc := range []string{string(s), hex.EncodeToString(s), base64.StdEncoding.EncodeToString(s), base64.RawURLEncoding.EncodeToString(s), fmt.Sprint(s)} {
			if strings.Contains(text.String(), enc) {
				t.Fatalf("a secret appears in a log record or an error")
			}
		}
	}
}

func TestMACKeys(t *testing.T) {
	t.Parallel()
	f := setup(t)
	a, b := f.open(t), f.open(t)
	ctx := t.Context()
	ma, _ := a.MAC(ctx, "audit", []byte("head"))
	mb, _ := b.MAC(ctx, "audit", []byte("head"))
	if !bytes.Equal(ma, mb) || len(ma) != 32 {
		t.Error("two clients with one master key compute different MACs")
	}
	other := setup(t).open(t)
	if mo, _ := other.MAC(ctx, "audit", []byte("head")); bytes.Equal(ma, mo) {
		t.Error("different master keys give equal MACs")
	}
	if _, err := a.MAC(ctx, "", nil); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("MAC with no purpose = %v, want ErrInvalidArgument", err)
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := f.open(t)
	if err := c.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	os.Rename(f.keyring, f.keyring+".moved")
	if err := c.Ping(t.Context()); !rekey.IsTransient(err) {
		t.Errorf("Ping without a keyring file = %v, want an UnreachableError", err)
	}
}

func TestWrapFormat(t *testing.T) {
	t.Parallel()
	c := setup(t).open(t)
	ref := mustCreate(t, c, "payments")
	for range 2 {
		c.RotateKey(t.Context(), ref)
	}
	w := mustWrap(t, c, ref, 3, dek(1))
	if len(w) != 1+4+12+32+16 || w[0] != 0x01 || !bytes.Equal(w[1:5], []byte{0, 0, 0, 3}) {
		t.Errorf("wrap is % x, want 0x01 | 00 00 00 03 | 12-byte nonce | 48 bytes", w)
	}
	// The name and version are bound: the same bytes under another name
	// with the same version number do not authenticate.
	other := mustCreate(t, c, "payments2")
	c.RotateKey(t.Context(), other)
	c.RotateKey(t.Context(), other)
	if _, err := c.Unwrap(t.Context(), other, 3, w); !errors.Is(err, rekey.ErrInvalidCiphertext) {
		t.Errorf("Unwrap under another key = %v, want ErrInvalidCiphertext", err)
	}
	if _, err := c.Wrap(t.Context(), ref, 1, make([]byte, MaxPlaintext+1)); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("Wrap of %d bytes = %v, want ErrInvalidArgument", MaxPlaintext+1, err)
	}
	big := make([]byte, MaxPlaintext)
	mustUnwrap(t, c, ref, 1, mustWrap(t, c, ref, 1, big), big)
}

func TestClose(t *testing.T) {
	t.Parallel()
	c := setup(t).open(t)
	ref := mustCreate(t, c, "payments")
	w := mustWrap(t, c, ref, 1, dek(1))
	c.Close()
	if !bytes.Equal(c.master, make([]byte, 32)) {
		t.Error("Close left the master key in memory")
	}
	if _, err := c.Unwrap(t.Context(), ref, 1, w); err == nil {
		t.Error("Unwrap after Close succeeded")
	}
	if _, err := c.RotateKey(t.Context(), ref); err == nil {
		t.Error("RotateKey after Close succeeded")
	}
	if _, err := c.MAC(t.Context(), "p", nil); err == nil {
		t.Error("MAC after Close succeeded")
	}
}

func TestPayloadValidation(t *testing.T) {
	t.Parallel()
	master := bytes.Repeat([]byte{7}, 32)
	material := `"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `"`
	short := `"` + base64.StdEncoding.EncodeToString(make([]byte, 16)) + `"`
	version := func(n int, state, mat string) string {
		s := fmt.Sprintf(`{"version":%d,"state":%q,"created":"2026-01-01T00:00:00Z","reserved":0`, n, state)
		if mat != "" {
			s += `,"material":` + mat
		}
		return s + "}"
	}
	key := func(name string, versions ...string) string {
		return fmt.Sprintf(`{"keys":{%q:{"created":"2026-01-01T00:00:00Z","versions":[%s]}}}`, name, strings.Join(versions, ","))
	}
	good := key("k", version(1, "retired", material), version(2, "usable", material))
	if _, err := decodeKeyring(sealPayload([]byte(good), master), master); err != nil {
		t.Fatalf("valid payload refused: %v", err)
	}
	tests := []struct{ name, payload, want string }{
		{"not json", `{"keys":`, "truncated"},
		{"syntax", `{"keys":x}`, "not valid JSON"},
		{"wrong type", `{"keys":[]}`, "wrong type"},
		{"unknown field", `{"keys":{},"extra":1}`, "invalid or unknown field"},
		{"trailing data", `{"keys":{}} {}`, "data after the payload"},
		{"bad name", key("Bad Name", version(1, "usable", material)), "invalid key name"},
		{"no versions", key("k"), "no versions"},
		{"gap", key("k", version(1, "usable", material), version(3, "usable", material)), "not version 2"},
		{"unknown state", key("k", version(1, "paused", material)), "unknown state"},
		{"short material", key("k", version(1, "usable", short)), "16 bytes, want 32"},
		{"no material", key("k", version(1, "usable", "")), "0 bytes, want 32"},
		{"destroyed with material", key("k", version(1, "destroyed", material), version(2, "usable", material)), "still has key material"},
		{"newest retired", key("k", version(1, "usable", material), version(2, "retired", material)), "newest version 2 is retired"},
		{"reserved beyond limit", strings.Replace(key("k", version(1, "usable", material)), `"reserved":0`, `"reserved":4294967297`, 1), "beyond any usage limit"},
	}
	for _, tc := range tests {
		_, err := decodeKeyring(sealPayload([]byte(tc.payload), master), master)
		if !errors.Is(err, ErrKeyringCorrupt) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrKeyringCorrupt saying %q", tc.name, err, tc.want)
		}
	}
}

func TestLockWaitEndsWithContext(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := f.open(t)
	ref := mustCreate(t, c, "payments")
	// Another process holds the keyring lock.
	unlock, err := fileutil.Lock(t.Context(), f.keyring+".lock")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := c.RotateKey(ctx, ref); !errors.Is(err, context.Canceled) {
		t.Errorf("RotateKey while the lock is held, context cancelled = %v, want context.Canceled", err)
	}
	unlock()
	if v, err := c.RotateKey(t.Context(), ref); err != nil || v != 2 {
		t.Errorf("RotateKey after the lock was released = %d, %v; want 2, nil", v, err)
	}
}

// TestLockWaitBounded: a change waits at most LockTimeout for a lock
// another process holds, then fails naming the lock file, with
// ErrKeyringLocked and nothing changed.
func TestLockWaitBounded(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := f.open(t, func(c *Config) { c.LockTimeout = 100 * time.Millisecond })
	ref := mustCreate(t, c, "payments")
	before, err := os.ReadFile(f.keyring)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := fileutil.Lock(t.Context(), f.keyring+".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	start := time.Now()
	_, err = c.RotateKey(t.Context(), ref)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("RotateKey while the lock is held took %v, want about the 100ms LockTimeout", took)
	}
	if !errors.Is(err, ErrKeyringLocked) || errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), f.keyring+".lock") || !strings.Contains(err.Error(), "stop it") {
		t.Errorf("RotateKey while the lock is held = %v, want ErrKeyringLocked naming the lock file and what to do (and not a deadline a retry would repeat)", err)
	}
	if after, _ := os.ReadFile(f.keyring); !bytes.Equal(before, after) {
		t.Error("the keyring changed")
	}
}

// TestRewrapBatchLockedFailsOnce: a batch whose counts need the keyring's
// lock, held by another process (one stopped while reserving), fails as
// a whole with ErrKeyringLocked after one LockTimeout, changing nothing:
// its items do not each wait and fail (a 200-DEK batch would wait 200
// LockTimeouts). Once the lock is free, the same batch re-wraps with one
// reservation.
func TestRewrapBatchLockedFailsOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	const items = 20
	a := f.open(t)
	ref := mustCreate(t, a, "payments")
	batch := make([]rekey.RewrapItem, items)
	for i := range batch {
		batch[i] = rekey.RewrapItem{Version: 1, Wrapped: mustWrap(t, a, ref, 1, dek(i))}
	}
	v2, err := a.RotateKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	b := f.open(t, func(c *Config) { c.LockTimeout = 50 * time.Millisecond }) // no counts of v2 yet
	before, err := os.ReadFile(f.keyring)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := fileutil.Lock(ctx, f.keyring+".lock")
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.RewrapBatch(ctx, ref, v2, batch)
	unlock()
	if !errors.Is(err, ErrKeyringLocked) || res != nil {
		t.Fatalf("RewrapBatch while another process holds the lock = %d results, %v; want no results and ErrKeyringLocked for the call", len(res), err)
	}
	if after, _ := os.ReadFile(f.keyring); !bytes.Equal(before, after) {
		t.Error("the keyring changed")
	}
	res, err = b.RewrapBatch(ctx, ref, v2, batch)
	if err != nil || len(res) != items {
		t.Fatalf("RewrapBatch after the lock was released = %d results, %v", len(res), err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("item %d: %v", i, r.Err)
		}
		mustUnwrap(t, b, ref, v2, r.Wrapped, dek(i))
	}
	if got := readFile(t, f).Keys[ref].Versions[v2-1].Reserved; got != items {
		t.Errorf("version %d reserved %d counts in the file after one batch of %d, want %d (one reservation for the batch)", v2, got, items, items)
	}
}

// TestRewrapBatchUsageLimit: a batch needing more counts than its target
// version has left fails as a whole with the usage limit, while a DEK that
// cannot be unwrapped fails alone and takes no count.
func TestRewrapBatchUsageLimit(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	c := f.open(t, func(c *Config) { c.UsageLimit, c.CounterBlock = 30, 8 })
	ref := mustCreate(t, c, "payments")
	batch := make([]rekey.RewrapItem, 20)
	for i := range batch {
		batch[i] = rekey.RewrapItem{Version: 1, Wrapped: mustWrap(t, c, ref, 1, dek(i))}
	}
	v2, err := c.RotateKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(batch)
	bad[3].Wrapped = append([]byte(nil), bad[3].Wrapped...)
	bad[3].Wrapped[len(bad[3].Wrapped)-1] ^= 1
	res, err := c.RewrapBatch(ctx, ref, v2, bad)
	if err != nil || len(res) != len(bad) {
		t.Fatalf("RewrapBatch with one damaged item = %d results, %v", len(res), err)
	}
	for i, r := range res {
		if (i == 3) != (r.Err != nil) || (i == 3 && !errors.Is(r.Err, rekey.ErrInvalidCiphertext)) {
			t.Errorf("item %d: %v", i, r.Err)
		}
	}
	// 19 counts used, 11 left: a batch of 20 is refused as a whole.
	if res, err := c.RewrapBatch(ctx, ref, v2, batch); !errors.Is(err, rekey.ErrUsageLimit) || res != nil {
		t.Errorf("RewrapBatch of 20 with 11 counts left = %d results, %v; want the usage limit for the call", len(res), err)
	}
}

// TestMessagesSayWhatToDo: the errors for a damaged master key file, a
// keyring path that is a directory and a keyring without a version the
// caller names say what to do.
func TestMessagesSayWhatToDo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		damage func(f fixture) error
		want   []string
	}{
		{"empty master key", func(f fixture) error { return os.WriteFile(f.masterFile, nil, 0o600) }, []string{"empty", "restore master.key", "REKEY_MASTER_KEY"}},
		{"short master key", func(f fixture) error { return os.WriteFile(f.masterFile, []byte("AAAAAAAAAAAAAAAAAAAA"), 0o600) }, []string{"15 bytes", "restore master.key"}},
		{"master key a directory", func(f fixture) error {
			if err := os.Remove(f.masterFile); err != nil {
				return err
			}
			return os.Mkdir(f.masterFile, 0o700)
		}, []string{"not a regular file", "remove what is there", "restore master.key"}},
		{"keyring a directory", func(f fixture) error {
			if err := os.Remove(f.keyring); err != nil {
				return err
			}
			return os.Mkdir(f.keyring, 0o700)
		}, []string{"not a regular file", "restore the keyring file"}},
	} {
		f := setup(t)
		f.open(t).Close()
		if err := tc.damage(f); err != nil {
			t.Fatal(err)
		}
		c, err := New(t.Context(), Config{Keyring: f.keyring, MasterKeyFile: f.masterFile})
		if err == nil {
			c.Close()
			t.Errorf("%s: New succeeded", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want it to say %q", tc.name, err, w)
			}
		}
	}
	f := setup(t)
	c := f.open(t)
	ref := mustCreate(t, c, "payments")
	_, err := c.Wrap(t.Context(), ref, 2, dek(1))
	if !errors.Is(err, rekey.ErrVersionNotFound) || !strings.Contains(err.Error(), "restore this home's latest keyring") {
		t.Errorf("Wrap under a version the keyring lacks = %v, want ErrVersionNotFound saying to restore the keyring", err)
	}
}

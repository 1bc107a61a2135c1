package torture

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"
	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// checkEnv is a home made in-process (no binary), the model of what was
// written to it, and a checker.
type checkEnv struct {
	t     *testing.T
	ctx   context.Context
	home  string
	sys   *setup.System
	db    *sql.DB
	model *model
	check *checker
	ids   []string
	file  sealed
}

// newCheckEnv makes a home with key k (v1 active, default policy: a
// rotation keeps v1 pending retirement), 5 DEKs made through the library
// and one sealed file, all recorded in the model; the first check passes.
func newCheckEnv(t *testing.T) *checkEnv {
	t.Helper()
	ctx := context.Background()
	home := filepath.Join(t.TempDir(), "home")
	sys, err := setup.Open(ctx, setup.Options{Home: home, Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeQuietly(sys) })
	e := &checkEnv{t: t, ctx: ctx, home: home, sys: sys, model: newModel()}
	if _, err := sys.Keyring.CreateKey(ctx, "k", "local", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		id, plain, err := sys.Keyring.NewDEK(ctx, "k", "")
		if err != nil {
			t.Fatal(err)
		}
		e.model.addKnown("k", id, plain)
		e.ids = append(e.ids, id)
	}
	data := []byte("the original bytes of a sealed file")
	e.file = sealed{path: filepath.Join(t.TempDir(), "f.rekey"), key: "k", sum: sha256.Sum256(data), size: len(data)}
	var out bytes.Buffer
	if _, err := sys.Keyring.SealStream(ctx, "k", &out, bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.file.path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	e.model.addUnknown("k", 1)
	e.model.addFile(e.file)
	if e.db, err = sql.Open("sqlite3", "file:"+filepath.Join(home, "rekey.db")+"?_busy_timeout=5000"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	if e.check, err = newChecker(ctx, home, e.model); err != nil {
		t.Fatal(err)
	}
	e.mustPass()
	return e
}

func (e *checkEnv) mustPass() {
	e.t.Helper()
	if err := e.check.run(e.ctx, e.model.filesToCheck(true, 0, nil)); err != nil {
		e.t.Fatalf("check of an intact home: %v", err)
	}
}

func (e *checkEnv) exec(query string, args ...any) {
	e.t.Helper()
	res, err := e.db.Exec(query, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		e.t.Fatalf("%s: %d rows, want 1", query, n)
	}
}

func (e *checkEnv) rotate() {
	e.t.Helper()
	if _, err := e.sys.Engine.Rotate(e.ctx, "k", rekey.ReasonManual, ""); err != nil {
		e.t.Fatal(err)
	}
}

// TestCheckerCatches proves the invariant checks can fail: each case
// breaks one thing in an intact home (the check passed before) and the
// check must name it. A real rotation in between must pass.
func TestCheckerCatches(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		break_ func(e *checkEnv)
		want   string
	}{
		{"lost DEK", func(e *checkEnv) {
			e.exec(`DELETE FROM deks WHERE id = ?`, e.ids[0])
		}, "is gone from the store"},
		{"DEK with another plaintext", func(e *checkEnv) {
			e.exec(`UPDATE deks SET wrapped = (SELECT wrapped FROM deks WHERE id = ?) WHERE id = ?`, e.ids[1], e.ids[0])
		}, "unwraps to another plaintext"},
		{"DEK nobody made", func(e *checkEnv) {
			if _, _, err := e.sys.Keyring.NewDEK(e.ctx, "k", ""); err != nil {
				e.t.Fatal(err)
			}
		}, "1 new DEK(s) in the store, the writers made 0"},
		{"extra backend version", func(e *checkEnv) {
			if _, err := e.sys.Backends["local"].RotateKey(e.ctx, "k"); err != nil {
				e.t.Fatal(err)
			}
		}, "backend local is at v2, the store has v1..v1"},
		{"retired while referenced", func(e *checkEnv) {
			var old []byte
			if err := e.db.QueryRow(`SELECT wrapped FROM deks WHERE id = ?`, e.ids[0]).Scan(&old); err != nil {
				e.t.Fatal(err)
			}
			e.rotate()
			e.mustPass()
			e.exec(`UPDATE deks SET version = 1, wrapped = ? WHERE id = ?`, old, e.ids[0])
			e.exec(`UPDATE key_versions SET state = 'retired' WHERE key = 'k' AND version = 1`)
		}, "1 DEK(s) on v1, which is retired: retired while a DEK references it"},
		{"counter off", func(e *checkEnv) {
			e.exec(`UPDATE dek_counts SET n = n + 1 WHERE key = 'k' AND version = 1`)
		}, "CountDEKs says 7 DEK(s) on v1, ListDEKs lists 6"},
		{"rotation state back", func(e *checkEnv) {
			e.rotate()
			e.mustPass()
			e.exec(`UPDATE rotations SET state = 'rewrapping' WHERE key = 'k'`)
		}, "went back from done to rewrapping"},
		{"version state back", func(e *checkEnv) {
			e.rotate()
			e.mustPass()
			e.exec(`UPDATE key_versions SET state = 'created' WHERE key = 'k' AND version = 1`)
		}, "v1 went back from pending_retirement to created"},
		{"file does not decrypt", func(e *checkEnv) {
			b, err := os.ReadFile(e.file.path)
			if err != nil {
				e.t.Fatal(err)
			}
			b[len(b)-3] ^= 1
			if err := os.WriteFile(e.file.path, b, 0o600); err != nil {
				e.t.Fatal(err)
			}
		}, "does not decrypt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newCheckEnv(t)
			tc.break_(e)
			err := e.check.run(e.ctx, e.model.filesToCheck(true, 0, nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check after %s = %v, want an error containing %q", tc.name, err, tc.want)
			}
		})
	}
}

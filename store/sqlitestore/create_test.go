package sqlitestore

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// TestOpenMissingWithoutCreate: without Create a missing database is an
// error matching fs.ErrNotExist that names the file, and no file appears.
func TestOpenMissingWithoutCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rekey.db")
	for _, cfg := range []Config{{Path: path}, {Path: path, ReadOnly: true}} {
		s, err := Open(t.Context(), cfg)
		if err == nil {
			s.Close()
			t.Fatalf("Open(%+v) of a missing file succeeded", cfg)
		}
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Errorf("Open(%+v): %v; want fs.ErrNotExist naming %s", cfg, err, path)
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Open without Create created %s (%v)", path, err)
		}
	}
	if _, err := Open(t.Context(), Config{Path: path, Create: true, ReadOnly: true}); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("Create with ReadOnly: %v, want ErrInvalidArgument", err)
	}
}

// TestOpenReadOnly: a read-only open reads what a read-write open wrote,
// refuses writes, and works in a directory it cannot write (a read-only
// copy of a home) without creating any file there.
func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "rekey.db")
	s, err := Open(ctx, Config{Path: path, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	k := rekey.Key{Name: "payments", Backend: "local", BackendRef: "payments", ActiveVersion: 1, ExpiresAt: now.Add(time.Hour), Policy: rekey.DefaultPolicy(), CreatedAt: now, UpdatedAt: now}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Key: "payments", Version: 1, State: rekey.VersionActive, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	ro := readOnlyCopy(t, dir)
	before := dirListing(t, ro)
	r, err := Open(ctx, Config{Path: filepath.Join(ro, "rekey.db"), ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open of a read-only copy: %v", err)
	}
	got, err := r.GetKey(ctx, "payments")
	if err != nil || got.Name != "payments" {
		t.Errorf("GetKey read-only: %+v, %v", got, err)
	}
	if err := r.Ping(ctx); err != nil {
		t.Errorf("Ping read-only: %v", err)
	}
	k.Name, k.BackendRef = "other", "other"
	if err := r.CreateKey(ctx, k, rekey.KeyVersion{Key: "other", Version: 1, State: rekey.VersionActive, CreatedAt: now}); err == nil {
		t.Error("CreateKey on a read-only store succeeded")
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if after := dirListing(t, ro); after != before {
		t.Errorf("the read-only directory changed: %s → %s", before, after)
	}
}

// readOnlyCopy copies dir's files into a new directory that this process
// cannot write: mode 0500, or, for root (whom modes do not stop), a
// read-only bind mount when the test may make one. It fails the test when
// neither is possible.
func readOnlyCopy(t *testing.T, dir string) string {
	t.Helper()
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ro, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	makeReadOnly(t, ro)
	if !readOnlyDir(ro) {
		t.Fatalf("%s is still writable: the test cannot make a read-only directory here", ro)
	}
	return ro
}

func dirListing(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, e.Name()+":"+info.ModTime().String()+":"+strconv.FormatInt(info.Size(), 10))
	}
	return strings.Join(names, ",")
}

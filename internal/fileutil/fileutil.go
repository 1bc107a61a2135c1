// Package fileutil holds the two file primitives rekey's local state
// needs: replacing a file atomically (WriteAtomic) and an exclusive lock
// shared between processes (Lock). The keyring of kms/localkms and the
// audit anchor use them.
//
// Locking is flock(2) on Linux and the BSDs (macOS included) and LockFileEx
// on Windows; elsewhere Lock returns an error matching ErrLockUnsupported.
package fileutil

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// ErrLockUnsupported means this platform has no file lock rekey can use:
// Lock refuses rather than pretend to exclude other processes.
var ErrLockUnsupported = errors.New("file locking is not supported on " + runtime.GOOS)

// TempPrefix is how the name of a temporary file that WriteAtomic(path)
// creates starts ("." + the base name of path + ".tmp-"). A crash may leave
// one behind; RemoveStaleTemps removes them.
func TempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// WriteAtomic replaces the file at path with data: it writes a temporary
// file in the same directory with mode perm, syncs it, renames it over path
// and syncs the directory (not on Windows, which cannot open a directory
// for syncing; NTFS journals the rename). After a crash path holds either
// its old or its new content, never a mix; the temporary file may be left
// behind (see RemoveStaleTemps) and is never read. Errors name the failing
// step and wrap the os error; on error path is unchanged.
func WriteAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, TempPrefix(path)+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp makes 0600; set perm explicitly whatever the umask.
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: sync %s: %w", path, tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir flushes the directory dir to stable storage, so that a file
// created or renamed in it survives a crash. On Windows it does nothing
// (a directory cannot be opened for syncing there).
func SyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// RemoveStaleTemps removes the temporary files that interrupted
// WriteAtomic calls for path left behind, and returns their paths. Call it
// only while holding the lock that serializes writers of path: an
// unlocked writer's temporary file is not stale.
func RemoveStaleTemps(path string) (removed []string) {
	dir := filepath.Dir(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	prefix := TempPrefix(path)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && e.Type().IsRegular() {
			p := filepath.Join(dir, e.Name())
			if os.Remove(p) == nil {
				removed = append(removed, p)
			}
		}
	}
	return removed
}

// Lock takes an exclusive lock on the lock file at path (created with mode
// 0600 if missing; its content is never used), waiting until the lock is
// free or ctx is done. The lock excludes every other Lock of the same path,
// in this process or another one on the same machine. The returned unlock
// releases it; call it exactly once.
//
// Errors: ctx's error (wrapped) when the wait ends with ctx, an error
// matching ErrLockUnsupported on platforms without file locking, and the
// os error (wrapped, naming path) when the file cannot be opened or locked.
func Lock(ctx context.Context, path string) (unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := lockFile(ctx, f); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		unlockFile(f)
		f.Close()
	}, nil
}

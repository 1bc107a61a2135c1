//go:build windows

package fileutil

import (
	"context"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

// lockAll is the byte range locked: all of it, whatever the file's size.
const lockAll = ^uint32(0)

// lockFile takes an exclusive LockFileEx lock on f. A blocking LockFileEx
// cannot be interrupted, so it polls with LOCKFILE_FAIL_IMMEDIATELY until
// ctx ends. It closes f on every error.
func lockFile(ctx context.Context, f *os.File) error {
	h := windows.Handle(f.Fd())
	err := pollLock(ctx, func() (bool, error) {
		ol := new(windows.Overlapped)
		err := windows.LockFileEx(h, windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, lockAll, lockAll, ol)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, windows.ERROR_LOCK_VIOLATION), errors.Is(err, windows.ERROR_IO_PENDING):
			return false, nil
		}
		return false, err
	})
	if err != nil {
		f.Close()
	}
	return err
}

func unlockFile(f *os.File) {
	windows.UnlockFileEx(windows.Handle(f.Fd()), 0, lockAll, lockAll, new(windows.Overlapped))
}

// pollLock is the wait of platforms whose lock call cannot be interrupted:
// it retries try, with a growing pause, until it takes the lock, fails, or
// ctx ends.
func pollLock(ctx context.Context, try func() (bool, error)) error {
	pause := time.Millisecond
	for {
		ok, err := try()
		if err != nil || ok {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

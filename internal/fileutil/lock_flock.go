//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package fileutil

import (
	"context"
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes an exclusive flock on f. It closes f on every error.
func lockFile(ctx context.Context, f *os.File) error {
	fd := int(f.Fd())
	err := flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return err
	}
	// Held elsewhere: wait in the kernel's queue, which is fair, on a
	// goroutine so that ctx can end the wait.
	done := make(chan error, 1)
	go func() { done <- flock(fd, unix.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
		}
		return err
	case <-ctx.Done():
		// Closing the file drops the lock if the waiter gets it after all.
		go func() { <-done; f.Close() }()
		return ctx.Err()
	}
}

func unlockFile(f *os.File) { flock(int(f.Fd()), unix.LOCK_UN) }

func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}

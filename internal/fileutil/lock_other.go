//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly || windows)

package fileutil

import (
	"context"
	"os"
)

// lockFile refuses: this platform has no file lock rekey uses. It closes f.
func lockFile(_ context.Context, f *os.File) error {
	f.Close()
	return ErrLockUnsupported
}

func unlockFile(*os.File) {}

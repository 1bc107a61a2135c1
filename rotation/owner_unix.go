//go:build unix

package rotation

import (
	"errors"
	"syscall"
)

// processGone reports whether no process has this pid: signal 0 checks
// existence and permission without signalling. ESRCH is the only proof;
// EPERM means a process exists (of another user).
func processGone(pid int) bool {
	return pid > 0 && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

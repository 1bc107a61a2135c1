//go:build unix

package sqlitestore

import "golang.org/x/sys/unix"

// readOnlyDir reports whether this process cannot create files in dir (a
// read-only file system, or no write permission), without writing there.
func readOnlyDir(dir string) bool { return unix.Access(dir, unix.W_OK) != nil }

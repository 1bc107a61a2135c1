//go:build !unix

package sqlitestore

import "os"

// readOnlyDir reports whether this process cannot create files in dir. It
// probes with a temporary file (removed at once) where no access(2) call
// exists.
func readOnlyDir(dir string) bool {
	f, err := os.CreateTemp(dir, ".rekey-write-probe-*")
	if err != nil {
		return true
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	return false
}

//go:build !linux

package sqlitestore

import (
	"os"
	"testing"
)

// makeReadOnly makes dir unwritable with chmod 0500.
func makeReadOnly(t *testing.T, dir string) {
	t.Helper()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
}

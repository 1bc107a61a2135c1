package audit

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/fileutil"
	"github.com/rekeyhq/rekey/kms/memkms"
)

// TestAnchorLockWaitBounded: a process that holds the anchor's lock and
// never lets go (stopped while moving the anchor) makes AdvanceAnchor fail
// after the bounded wait with ErrAnchorLocked, naming the lock file and
// what to do, and write nothing; it does not wait forever. Not parallel:
// it shortens the package's wait.
func TestAnchorLockWaitBounded(t *testing.T) {
	defer func(d time.Duration) { anchorLockTimeout = d }(anchorLockTimeout)
	anchorLockTimeout = 50 * time.Millisecond
	p := filepath.Join(t.TempDir(), "audit.anchor")
	m := memkms.New()
	unlock, err := fileutil.Lock(t.Context(), p+".lock")
	if err != nil {
		t.Fatal(err)
	}
	err = AdvanceAnchor(t.Context(), p, "a", rekey.AuditCheckpoint{Seq: 1, Hash: "h"}, m)
	if !errors.Is(err, ErrAnchorLocked) || !strings.Contains(err.Error(), p+".lock") || !strings.Contains(err.Error(), "stop it") {
		t.Errorf("AdvanceAnchor while another process holds the lock = %v, want ErrAnchorLocked naming the lock file and what to do", err)
	}
	unlock()
	if _, ok, err := ReadAnchor(t.Context(), p, "a", m); err != nil || ok {
		t.Errorf("anchor written without the lock: ok=%v err=%v", ok, err)
	}
	if err := AdvanceAnchor(t.Context(), p, "a", rekey.AuditCheckpoint{Seq: 1, Hash: "h"}, m); err != nil {
		t.Errorf("AdvanceAnchor after the lock was released: %v", err)
	}
}

//go:build cgo

package main

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/torture"
)

// TestTorturePKCS11: the crash torture (see torture_backends_test.go) with
// the keys on pkcs11, against SoftHSM2. The torture's key names are fixed
// and a token outlives a test, so the run makes a token of its own
// (softhsm2-util --init-token in the SOFTHSM2_CONF of scripts/softhsm,
// with a random PIN in a 0600 file) and deletes it at the end. It must
// not run in parallel with another test of this process that holds the
// PKCS#11 library open: SoftHSM2 sees a new token only when the library is
// initialised again.
func TestTorturePKCS11(t *testing.T) {
	module, _, _ := pkcs11Peer(t)
	if os.Getenv("SOFTHSM2_CONF") == "" {
		t.Fatal("SOFTHSM2_CONF is not set: the torture makes a SoftHSM2 token of its own in that configuration; start the peer with `eval \"$(scripts/softhsm start)\"`")
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		t.Fatalf("softhsm2-util: %v: the torture makes a token of its own with it (apt-get install softhsm2, or scripts/softhsm start)", err)
	}
	h := newE2EHome(t, e2eOpts{})
	id := strings.ToLower(rekey.NewID())
	label := "torture-" + id[len(id)-12:]
	pin := rand.Text()[:16] // a throwaway token's PIN, only in the 0600 file
	pinFile := filepath.Join(h.dir, "hsm.pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(util, "--init-token", "--free", "--label", label, "--so-pin", "so-"+pin, "--pin", pin).CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token --label %s: %v\n%s", label, err, strings.ReplaceAll(string(out), pin, "<pin>"))
	}
	t.Cleanup(func() {
		if out, err := exec.Command(util, "--delete-token", "--token", label).CombinedOutput(); err != nil {
			t.Logf("softhsm2-util --delete-token --token %s: %v\n%s", label, err, out)
		}
	})
	runBackendTorture(t, h, "TestTorturePKCS11", torture.SQLitePKCS11, "hsm", map[string]string{
		"module":   module,
		"token":    label,
		"pin_file": pinFile,
	})
}

//go:build cgo

package pkcs11

import (
	"crypto/rand"
	"os"
	"os/exec"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/rekeyhq/rekey"
)

// TestNewRescansForMissingToken: SoftHSM2 reads its tokens when the
// library is initialised, so a token that was not readable then (another
// process writing it, softhsm/SoftHSMv2#757) is missing for the whole
// process. New then initialises the library again and finds it. Here the
// token is made (with softhsm2-util) only after New's first look, just
// before its first re-initialisation: without the re-initialisation New
// fails with "no token labelled". Not parallel: another Client holding the
// library open would (rightly) stop New from re-initialising it.
func TestNewRescansForMissingToken(t *testing.T) {
	p := testPeer(t)
	if os.Getenv("SOFTHSM2_CONF") == "" {
		t.Fatal("SOFTHSM2_CONF is not set: this test makes a SoftHSM2 token in that configuration (scripts/softhsm start sets it)")
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		t.Fatalf("softhsm2-util: %v: apt-get install softhsm2 (scripts/softhsm does)", err)
	}
	label := "rescan-" + strings.ToLower(rand.Text()[:12])
	pin := rand.Text()[:16]
	made := 0
	beforeRescan = func() {
		if made++; made > 1 {
			return
		}
		if out, err := exec.Command(util, "--init-token", "--free", "--label", label, "--so-pin", "so-"+pin, "--pin", pin).CombinedOutput(); err != nil {
			t.Errorf("softhsm2-util --init-token --label %s: %v\n%s", label, err, strings.ReplaceAll(string(out), pin, "<pin>"))
		}
	}
	t.Cleanup(func() {
		beforeRescan = nil
		if made > 0 {
			if out, err := exec.Command(util, "--delete-token", "--token", label).CombinedOutput(); err != nil {
				t.Logf("softhsm2-util --delete-token --token %s: %v\n%s", label, err, out)
			}
		}
	})
	c, err := New(t.Context(), Config{Module: p.module, TokenLabel: label, PIN: pin})
	if err != nil {
		t.Fatalf("New for a token made after the library's first look (re-initialisations: %d): %v", made, err)
	}
	defer c.Close()
	if made != 1 {
		t.Errorf("the library was initialised again %d times, want 1 (the token was there the second time)", made)
	}
	if _, err := c.CreateKey(t.Context(), "rescan"); err != nil {
		t.Errorf("CreateKey on the token found on the second look: %v", err)
	}
}

// TestClassifyTransient: the PKCS#11 errors of a token that may answer on
// the next try are transient (*rekey.UnreachableError, so kmsmw retries
// them), CKR_GENERAL_ERROR among them (SoftHSM2's file store under
// concurrent writers); a wrong mechanism or argument is not.
func TestClassifyTransient(t *testing.T) {
	c := &Client{token: "t"}
	for _, code := range []uint{p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED, p11.CKR_DEVICE_ERROR, p11.CKR_SESSION_HANDLE_INVALID} {
		if err := c.classify("generate", p11.Error(code)); !rekey.IsTransient(err) {
			t.Errorf("classify(%v) = %v: want a transient error", p11.Error(code), err)
		}
	}
	for _, code := range []uint{p11.CKR_MECHANISM_INVALID, p11.CKR_ARGUMENTS_BAD, p11.CKR_KEY_HANDLE_INVALID} {
		if err := c.classify("generate", p11.Error(code)); rekey.IsTransient(err) {
			t.Errorf("classify(%v) = %v: want an error that is not transient", p11.Error(code), err)
		}
	}
}

package localkms

import (
	"errors"
	"testing"

	"github.com/rekeyhq/rekey"
)

// TestDeleteKey: the key and all its versions leave the keyring, for this
// client, another one and a fresh open of the file; another key stays;
// a second delete (or one of an unknown key) is nil.
func TestDeleteKey(t *testing.T) {
	t.Parallel()
	f := setup(t)
	a, b := f.open(t), f.open(t)
	ref := mustCreate(t, a, "moved")
	other := mustCreate(t, a, "stays")
	if _, err := a.RotateKey(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	w := mustWrap(t, a, other, 1, dek(1))
	if err := a.DeleteKey(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	b.refreshEvery = 0
	for name, c := range map[string]*Client{"same client": a, "other client": b, "fresh open": f.open(t)} {
		if _, err := c.CurrentVersion(t.Context(), ref); !errors.Is(err, rekey.ErrKeyNotFound) {
			t.Errorf("%s: CurrentVersion of the deleted key = %v, want ErrKeyNotFound", name, err)
		}
		mustUnwrap(t, c, other, 1, w, dek(1))
	}
	if err := b.DeleteKey(t.Context(), ref); err != nil {
		t.Errorf("second DeleteKey = %v, want nil", err)
	}
	if err := a.DeleteKey(t.Context(), "never-there"); err != nil {
		t.Errorf("DeleteKey of an unknown key = %v, want nil", err)
	}
}

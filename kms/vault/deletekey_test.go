package vault_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/vault"
	"github.com/rekeyhq/rekey/kms/vault/transitserver"
)

// TestDeleteKey: Transit deletes a key only with deletion_allowed. Without
// it DeleteKey changes nothing and its error (ErrUnsupported) gives the
// command that allows it; with it the key is gone, and a second DeleteKey
// is nil.
func TestDeleteKey(t *testing.T) {
	s := startServer(t, transitserver.Options{})
	c := newClient(t, vault.Config{Name: "vault", Address: s.URL, Token: s.Token()})
	ctx := t.Context()
	ref, err := c.CreateKey(ctx, "moved.away")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	err = c.DeleteKey(ctx, ref)
	if !errors.Is(err, rekey.ErrUnsupported) || !strings.Contains(err.Error(), "deletion_allowed=true") || !strings.Contains(err.Error(), "transit/keys/moved.away/config") {
		t.Fatalf("DeleteKey without deletion_allowed = %v; want ErrUnsupported with the command to allow it", err)
	}
	if v, err := c.CurrentVersion(ctx, ref); err != nil || v != 2 {
		t.Fatalf("after a refused delete: version %d, %v; want the key unchanged at 2", v, err)
	}
	if !s.AllowDeletion(ref, true) {
		t.Fatal("AllowDeletion: no such key")
	}
	if err := c.DeleteKey(ctx, ref); err != nil {
		t.Fatalf("DeleteKey with deletion_allowed = %v", err)
	}
	if _, _, _, ok := s.KeyVersions(ref); ok {
		t.Fatal("the Transit key still exists after DeleteKey")
	}
	if _, err := c.CurrentVersion(ctx, ref); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("CurrentVersion after DeleteKey = %v, want ErrKeyNotFound", err)
	}
	if err := c.DeleteKey(ctx, ref); err != nil {
		t.Fatalf("second DeleteKey = %v, want nil", err)
	}
	if n := s.Counts().Delete; n != 1 {
		t.Fatalf("the server saw %d DELETE requests, want 1 (none while deletion was not allowed)", n)
	}
}

package keyprotect_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/keyprotect/kpserver"
	"github.com/rekeyhq/rekey/kms/kmsmw"
)

// TestFindKey: the key CreateKey made is found by name from another
// client (another process, as after a crash), through the middleware as
// setup opens it; an unknown name is ErrKeyNotFound; a key another program
// made under rekey's alias with another name is refused, naming both.
func TestFindKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kpserver.Options{})
	ctx := t.Context()
	ref, err := e.client(t).CreateKey(ctx, "pay.ments")
	if err != nil {
		t.Fatal(err)
	}
	k := kmsmw.Wrap(e.client(t), kmsmw.Options{Name: "kp"})
	if !rekey.CapabilitiesOf(k).FindKey {
		t.Fatal("keyprotect through kmsmw does not offer FindKey")
	}
	var f rekey.KeyFinder = k
	got, err := f.FindKey(ctx, "pay.ments")
	if err != nil || got != ref {
		t.Fatalf("FindKey(pay.ments) = %q, %v; want %q", got, err, ref)
	}
	if v, err := k.CurrentVersion(ctx, got); err != nil || v != 1 {
		t.Fatalf("CurrentVersion of the found key = %d, %v", v, err)
	}
	if _, err := f.FindKey(ctx, "pay_ments"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("FindKey(unknown) = %v, want ErrKeyNotFound", err)
	}
	other := e.srv.AddKey("someone-else", "rekey-taken")
	if _, err := f.FindKey(ctx, "taken"); err == nil || errors.Is(err, rekey.ErrKeyNotFound) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), "someone-else") {
		t.Fatalf("FindKey of an alias on a foreign key = %v; want a refusal naming key %s and its name", err, other)
	}
	if _, err := f.FindKey(ctx, "Bad Name"); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Fatalf("FindKey(bad name) = %v, want ErrInvalidArgument", err)
	}
	if e.srv.Keys() != 2 {
		t.Fatalf("the server holds %d keys, want 2: FindKey must not create any", e.srv.Keys())
	}
}

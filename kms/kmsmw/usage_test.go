package kmsmw_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

// TestUsageCountedInStore: a backend that does not count its wraps is
// counted in the store, every wrap path included (Wrap, Rewrap, each item
// of RewrapBatch, each try of a retried call), and wraps past the key's
// limit are refused without reaching the backend, naming the limit.
func TestUsageCountedInStore(t *testing.T) {
	t.Parallel()
	st := memstore.New()
	f := setup(t, kmsmw.Options{Name: "vaultish", Retry: fast, Usage: &kmsmw.UsageOptions{
		Counter: st,
		Limit:   func(context.Context, string) (int64, error) { return 20, nil },
	}}, map[string]func(int) error{memkms.OpWrap: failFirst(1, errDown)})
	ctx := t.Context()
	count := func() int64 {
		t.Helper()
		n, err := f.k.Encryptions(ctx, f.ref, 1)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	var ws [][]byte
	for i := range 5 {
		w, err := f.k.Wrap(ctx, f.ref, 1, []byte{byte(i + 1)})
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	// 5 wraps and one failed try. The store holds what was reserved in
	// blocks of 1, 2, 4: at least the 6 tries, at most 7.
	if n := count(); n < 6 || n > 7 {
		t.Fatalf("count after 5 wraps and a retried try = %d, want 6 or 7", n)
	}
	if _, err := f.k.Rewrap(ctx, f.ref, 1, ws[0], 1); err != nil {
		t.Fatal(err)
	}
	items := []rekey.RewrapItem{{Version: 1, Wrapped: ws[1]}, {Version: 1, Wrapped: ws[2]}, {Version: 1, Wrapped: ws[3]}}
	if _, err := f.k.RewrapBatch(ctx, f.ref, 1, items); err != nil {
		t.Fatal(err)
	}
	if n := count(); n < 10 {
		t.Fatalf("count after 6 tries, a rewrap and a batch of 3 = %d, want at least 10", n)
	}
	done := 10
	var err error
	for range 30 {
		if _, err = f.k.Wrap(ctx, f.ref, 1, []byte{1}); err != nil {
			break
		}
		done++
	}
	var ule *rekey.UsageLimitError
	if !errors.As(err, &ule) || ule.Limit != 20 || ule.Backend != "vaultish" || !strings.Contains(err.Error(), "max_encryptions=20") {
		t.Fatalf("wrap past the limit = %v, want a *UsageLimitError naming backend vaultish and max_encryptions=20", err)
	}
	if done > 20 {
		t.Errorf("%d wraps done under a limit of 20", done)
	}
	if n := count(); n != 20 {
		t.Errorf("count at the limit = %d, want 20", n)
	}
	before := f.calls(memkms.OpWrap)
	if _, err := f.k.Wrap(ctx, f.ref, 1, []byte{1}); !errors.Is(err, rekey.ErrUsageLimit) {
		t.Fatalf("wrap at the limit = %v, want ErrUsageLimit", err)
	}
	if f.calls(memkms.OpWrap) != before {
		t.Error("a refused wrap reached the backend")
	}
	// Another version counts on its own.
	v2, err := f.k.RotateKey(ctx, f.ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.k.Wrap(ctx, f.ref, v2, []byte{1}); err != nil {
		t.Errorf("wrap under a new version = %v", err)
	}
}

// TestUsageNotCountedTwice: a backend that counts its own wraps (the local
// keyring) is not counted in the store; Encryptions is the backend's.
func TestUsageNotCountedTwice(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := localkms.CreateMasterKeyFile(dir + "/master.key"); err != nil {
		t.Fatal(err)
	}
	inner, err := localkms.New(t.Context(), localkms.Config{Keyring: dir + "/keyring", MasterKeyFile: dir + "/master.key", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	st := memstore.New()
	k := kmsmw.Wrap(inner, kmsmw.Options{Name: "local", Usage: &kmsmw.UsageOptions{Counter: st}})
	defer k.Close()
	ref, err := k.CreateKey(t.Context(), "payments")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := k.Wrap(t.Context(), ref, 1, []byte("0123456789abcdef")); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := st.WrapCount(t.Context(), "local", ref, 1); err != nil || n != 0 {
		t.Errorf("store count of a self-counting backend = (%d, %v), want 0", n, err)
	}
	if n, err := k.Encryptions(t.Context(), ref, 1); err != nil || n < 3 {
		t.Errorf("Encryptions = (%d, %v), want the keyring's count, at least 3", n, err)
	}
}

// TestUsageUnsupported: without UsageOptions nothing counts.
func TestUsageUnsupported(t *testing.T) {
	t.Parallel()
	f := setup(t, kmsmw.Options{}, nil)
	if _, err := f.k.Encryptions(t.Context(), f.ref, 1); !errors.Is(err, rekey.ErrUnsupported) {
		t.Errorf("Encryptions without a counter = %v, want ErrUnsupported", err)
	}
}

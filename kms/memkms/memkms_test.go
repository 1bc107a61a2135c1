package memkms_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/kmstest"
)

func TestConformance(t *testing.T) {
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return memkms.New() })
}

func TestConformanceSharedInstance(t *testing.T) {
	shared := memkms.New()
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return shared })
}

func TestFailHook(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	k := memkms.New()
	ref, err := k.CreateKey(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	w, err := k.Wrap(ctx, ref, 1, []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}

	var seen []string
	outage := &rekey.UnreachableError{Service: "kms:mem", Err: errors.New("injected")}
	k.Fail = func(op, r string) error {
		seen = append(seen, op+" "+r)
		return outage
	}
	calls := []struct {
		op, ref string
		call    func() error
	}{
		{memkms.OpCreate, "other", func() error { _, err := k.CreateKey(ctx, "other"); return err }},
		{memkms.OpCurrent, ref, func() error { _, err := k.CurrentVersion(ctx, ref); return err }},
		{memkms.OpRotate, ref, func() error { _, err := k.RotateKey(ctx, ref); return err }},
		{memkms.OpWrap, ref, func() error { _, err := k.Wrap(ctx, ref, 1, []byte("x")); return err }},
		{memkms.OpUnwrap, ref, func() error { _, err := k.Unwrap(ctx, ref, 1, w); return err }},
		{memkms.OpRewrap, ref, func() error { _, err := k.Rewrap(ctx, ref, 1, w, 1); return err }},
		{memkms.OpRewrap, ref, func() error {
			_, err := k.RewrapBatch(ctx, ref, 1, []rekey.RewrapItem{{Version: 1, Wrapped: w}})
			return err
		}},
		{memkms.OpRetire, ref, func() error { return k.RetireVersion(ctx, ref, 1) }},
		{memkms.OpDestroy, ref, func() error { return k.DestroyVersion(ctx, ref, 1) }},
		{memkms.OpPing, "", func() error { return k.Ping(ctx) }},
		{memkms.OpMAC, "", func() error { _, err := k.MAC(ctx, "p", nil); return err }},
	}
	for _, c := range calls {
		seen = seen[:0]
		err := c.call()
		if !rekey.IsTransient(err) || !errors.Is(err, outage) {
			t.Errorf("%s: error %v, want the injected UnreachableError", c.op, err)
		}
		if len(seen) != 1 || seen[0] != c.op+" "+c.ref {
			t.Errorf("%s: Fail saw %q, want [%q]", c.op, seen, c.op+" "+c.ref)
		}
	}

	// Nothing happened while failing: still one key at version 1.
	k.Fail = nil
	if v, err := k.CurrentVersion(ctx, ref); err != nil || v != 1 {
		t.Fatalf("CurrentVersion = %d, %v; want 1, nil", v, err)
	}
	if _, err := k.CurrentVersion(ctx, memkms.RefPrefix+"other"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("a failed CreateKey created the key: %v", err)
	}
}

func TestFailTransiently(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	k := memkms.New()
	ref, err := k.CreateKey(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	k.Fail = func(op, _ string) error {
		if op == memkms.OpRotate && n.Add(1) <= 2 {
			return &rekey.UnreachableError{Service: "kms:mem", Err: errors.New("throttled")}
		}
		return nil
	}
	for i := 1; i <= 2; i++ {
		if _, err := k.RotateKey(ctx, ref); !rekey.IsTransient(err) {
			t.Fatalf("attempt %d: %v, want a transient error", i, err)
		}
	}
	if v, err := k.RotateKey(ctx, ref); err != nil || v != 2 {
		t.Fatalf("third attempt = %d, %v; want 2, nil", v, err)
	}
}

func TestRetireNewestRefused(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	k := memkms.New()
	ref, _ := k.CreateKey(ctx, "k")
	if err := k.RetireVersion(ctx, ref, 1); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("RetireVersion(newest) = %v, want ErrInvalidArgument", err)
	}
	k.RotateKey(ctx, ref)
	if err := k.DestroyVersion(ctx, ref, 1); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("DestroyVersion(not retired) = %v, want ErrInvalidArgument", err)
	}
}

func TestRefIsNotName(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	k := memkms.New()
	ref, _ := k.CreateKey(ctx, "k")
	if ref == "k" {
		t.Fatal("the reference equals the name")
	}
	if _, err := k.CurrentVersion(ctx, "k"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("CurrentVersion(name) = %v, want ErrKeyNotFound", err)
	}
}

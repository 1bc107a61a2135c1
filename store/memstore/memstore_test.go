package memstore_test

import (
	"errors"
	"testing"

	"go.uber.org/goleak"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/memstore"
	"github.com/rekeyhq/rekey/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) rekey.Store { return memstore.New() })
}

func TestZeroValue(t *testing.T) {
	var s memstore.Store
	if _, err := s.ListKeys(t.Context()); err != nil {
		t.Fatalf("ListKeys on a zero Store: %v", err)
	}
}

func TestFail(t *testing.T) {
	s := memstore.New()
	injected := &rekey.UnreachableError{Service: "store:memory", Err: errors.New("injected")}
	var ops []string
	s.Fail = func(op string) error {
		ops = append(ops, op)
		if op == "InsertDEKs" {
			return injected
		}
		return nil
	}
	ctx := t.Context()
	err := s.InsertDEKs(ctx, []rekey.DEK{{ID: rekey.NewID(), Key: "a", Version: 1, Wrapped: []byte("x")}})
	if err != injected {
		t.Fatalf("InsertDEKs = %v, want the injected error unchanged", err)
	}
	if !rekey.IsTransient(err) {
		t.Errorf("injected error is not transient")
	}
	if _, err := s.CountDEKs(ctx, "a"); err != nil {
		t.Errorf("CountDEKs: %v", err)
	}
	if len(ops) != 2 || ops[0] != "InsertDEKs" || ops[1] != "CountDEKs" {
		t.Errorf("Fail saw %v", ops)
	}
}

func TestClosed(t *testing.T) {
	s := memstore.New()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Use after Close is a bug, not an outage: not transient, so that no
	// decorator retries it.
	if err := s.Ping(t.Context()); err == nil || rekey.IsTransient(err) {
		t.Errorf("Ping after Close = %v, want a non-transient error", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

package kmstest_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/kmstest"
)

// brokenEnv selects, in a child test process, which flaw brokenKMS has.
const brokenEnv = "KMSTEST_BROKEN"

// brokenKMS is memkms with one deliberate flaw, to show that the suite
// notices it.
type brokenKMS struct {
	*memkms.KMS
	flaw string

	mu    sync.Mutex
	cache map[string][]byte
}

func (b *brokenKMS) CreateKey(ctx context.Context, name string) (string, error) {
	ref, err := b.KMS.CreateKey(ctx, name)
	if b.flaw == "duplicate-create" && errors.Is(err, rekey.ErrKeyExists) {
		return memkms.RefPrefix + name, nil
	}
	return ref, err
}

func (b *brokenKMS) CurrentVersion(ctx context.Context, ref string) (int, error) {
	v, err := b.KMS.CurrentVersion(ctx, ref)
	if b.flaw == "unknown-ref-untyped" && errors.Is(err, rekey.ErrKeyNotFound) {
		return 0, errors.New("no such thing")
	}
	return v, err
}

func (b *brokenKMS) RotateKey(ctx context.Context, ref string) (int, error) {
	v, err := b.KMS.RotateKey(ctx, ref)
	switch {
	case err != nil:
	case b.flaw == "rotate-twice":
		return b.KMS.RotateKey(ctx, ref)
	case b.flaw == "rotate-retires-old" && v > 1:
		_ = b.KMS.RetireVersion(ctx, ref, v-1)
	}
	return v, err
}

func (b *brokenKMS) Wrap(ctx context.Context, ref string, v int, pt []byte) ([]byte, error) {
	if b.flaw != "deterministic-wrap" {
		return b.KMS.Wrap(ctx, ref, v, pt)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := ref + "\x00" + string(rune(v)) + string(pt)
	if w, ok := b.cache[k]; ok {
		return w, nil
	}
	w, err := b.KMS.Wrap(ctx, ref, v, pt)
	if err == nil {
		if b.cache == nil {
			b.cache = make(map[string][]byte)
		}
		b.cache[k] = w
	}
	return w, err
}

func (b *brokenKMS) Unwrap(ctx context.Context, ref string, v int, w []byte) ([]byte, error) {
	switch b.flaw {
	case "ignore-asked-version":
		if len(w) >= 5 {
			v = int(binary.BigEndian.Uint32(w[1:5]))
		}
	case "panic-on-short":
		_ = w[9]
	case "untyped-unwrap-errors":
		pt, err := b.KMS.Unwrap(ctx, ref, v, w)
		if err != nil {
			return nil, errors.New(err.Error())
		}
		return pt, nil
	}
	return b.KMS.Unwrap(ctx, ref, v, w)
}

func (b *brokenKMS) Rewrap(ctx context.Context, ref string, from int, w []byte, to int) ([]byte, error) {
	if b.flaw == "rewrap-ignores-target" {
		to = from
	}
	return b.KMS.Rewrap(ctx, ref, from, w, to)
}

func (b *brokenKMS) RewrapBatch(ctx context.Context, ref string, to int, items []rekey.RewrapItem) ([]rekey.RewrapResult, error) {
	res, err := b.KMS.RewrapBatch(ctx, ref, to, items)
	if b.flaw == "batch-all-or-nothing" && err == nil {
		for _, r := range res {
			if r.Err != nil {
				return nil, r.Err
			}
		}
	}
	return res, err
}

func (b *brokenKMS) RetireVersion(ctx context.Context, ref string, v int) error {
	if b.flaw == "retire-noop" {
		return nil
	}
	return b.KMS.RetireVersion(ctx, ref, v)
}

func (b *brokenKMS) MAC(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	if b.flaw == "mac-ignores-purpose" {
		purpose = "fixed"
	}
	return b.KMS.MAC(ctx, purpose, data)
}

func (b *brokenKMS) Ping(ctx context.Context) error {
	if b.flaw == "ping-fails" {
		return &rekey.UnreachableError{Service: "kms:broken", Err: errors.New("down")}
	}
	return b.KMS.Ping(ctx)
}

// TestBrokenBackend runs the suite against brokenKMS; it is a helper for
// TestSuiteCatchesFlaws and does nothing unless KMSTEST_BROKEN is set.
func TestBrokenBackend(t *testing.T) {
	flaw, ok := os.LookupEnv(brokenEnv)
	if !ok {
		t.Skip("helper for TestSuiteCatchesFlaws; runs only in its child process")
	}
	kmstest.Run(t, func(t *testing.T) rekey.KMS { return &brokenKMS{KMS: memkms.New(), flaw: flaw} })
}

// TestSuiteCatchesFlaws runs each subtest of the suite, in a child process,
// against a backend with one flaw the subtest exists to catch, and checks
// that it fails; and against the same wrapper without a flaw, and checks
// that it passes.
func TestSuiteCatchesFlaws(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child test processes; run without -short")
	}
	cases := []struct{ flaw, subtest string }{
		{"", "CreateKey|UnknownKey|RoundTrip|WrongVersion|Malformed|Rewrapper|BatchRewrapper|VersionRetirer|MACer|Pinger"},
		{"duplicate-create", "CreateKey"},
		{"duplicate-create", "ConcurrentCreateKey"},
		{"unknown-ref-untyped", "UnknownKey"},
		{"deterministic-wrap", "WrapsDiffer"},
		{"ignore-asked-version", "WrongVersion"},
		{"ignore-asked-version", "WrapOlderVersion"},
		{"rotate-twice", "Rotate"},
		{"rotate-retires-old", "Rotate"},
		{"rotate-retires-old", "WrapOlderVersion"},
		{"panic-on-short", "Malformed"},
		{"untyped-unwrap-errors", "Malformed"},
		{"untyped-unwrap-errors", "OtherKey"},
		{"rewrap-ignores-target", "Rewrapper"},
		{"batch-all-or-nothing", "BatchRewrapper"},
		{"retire-noop", "VersionRetirer"},
		{"mac-ignores-purpose", "MACer"},
		{"ping-fails", "Pinger"},
	}
	for _, c := range cases {
		t.Run(c.flaw+"/"+c.subtest, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenBackend$/^("+c.subtest+")$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), brokenEnv+"="+c.flaw)
			out, err := cmd.CombinedOutput()
			if c.flaw == "" {
				if err != nil || !strings.Contains(string(out), "--- PASS: TestBrokenBackend/") {
					t.Fatalf("the wrapper without a flaw does not pass (%v):\n%s", err, out)
				}
				return
			}
			first := strings.SplitN(c.subtest, "|", 2)[0]
			if err == nil || !strings.Contains(string(out), "--- FAIL: TestBrokenBackend/"+first+" ") {
				t.Fatalf("subtest %s did not fail on flaw %q (exit: %v):\n%s", first, c.flaw, err, out)
			}
		})
	}
}

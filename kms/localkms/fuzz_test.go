package localkms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
)

// FuzzUnwrap feeds arbitrary bytes and versions to Unwrap: it must never
// panic, fail only with the typed errors of rekey.KMS, and succeed only on
// genuine wraps.
func FuzzUnwrap(f *testing.F) {
	fx := setup(f)
	c := fx.open(f)
	ctx := f.Context()
	ref := mustCreate(f, c, "fuzz")
	secret := bytes.Repeat([]byte{0xa5}, 32)
	var seeds [][]byte
	for v := 1; v <= 3; v++ {
		if v > 1 {
			if _, err := c.RotateKey(ctx, ref); err != nil {
				f.Fatal(err)
			}
		}
		seeds = append(seeds, mustWrap(f, c, ref, v, secret), mustWrap(f, c, ref, v, secret[:1]))
	}
	if err := c.RetireVersion(ctx, ref, 1); err != nil {
		f.Fatal(err)
	}
	for i, s := range seeds {
		v := i/2 + 1
		f.Add(v, s)
		f.Add(v, s[:len(s)-1])
		f.Add(v+1, s)
	}
	f.Add(0, []byte{})
	f.Add(-1, []byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, version int, wrapped []byte) {
		// Not t.Context(): it is cancelled when the fuzzing time is up, and
		// an Unwrap that re-reads the keyring (unknown version) would then
		// fail with the context's error, which is not the input's fault.
		pt, err := c.Unwrap(context.Background(), ref, version, wrapped)
		if err == nil {
			if !bytes.Equal(pt, secret) && !bytes.Equal(pt, secret[:1]) {
				t.Fatalf("Unwrap accepted forged bytes (version %d, %d bytes)", version, len(wrapped))
			}
			return
		}
		for _, want := range []error{rekey.ErrInvalidCiphertext, rekey.ErrWrongVersion, rekey.ErrVersionNotFound, rekey.ErrVersionDisabled} {
			if errors.Is(err, want) {
				return
			}
		}
		t.Fatalf("Unwrap error %q is none of the documented ones", err)
	})
}

// FuzzKeyringFile feeds arbitrary bytes to the keyring parser, both as a
// whole file and as a payload sealed under the right master key (so that
// the JSON validation is reached): it must never panic, fail only with its
// documented errors, and what it accepts must encode and decode to the
// same keyring.
func FuzzKeyringFile(f *testing.F) {
	fx := setup(f)
	c := fx.open(f)
	ctx := f.Context()
	ref := mustCreate(f, c, "fuzz")
	mustCreate(f, c, "other")
	c.RotateKey(ctx, ref)
	c.RotateKey(ctx, ref)
	mustWrap(f, c, ref, 3, []byte("x")) // a reservation
	c.RetireVersion(ctx, ref, 1)
	c.DestroyVersion(ctx, ref, 1)
	c.RetireVersion(ctx, ref, 2)
	master, err := readMasterKeyFile(fx.masterFile)
	if err != nil {
		f.Fatal(err)
	}
	file, err := os.ReadFile(fx.keyring)
	if err != nil {
		f.Fatal(err)
	}
	d, err := decodeKeyring(file, master)
	if err != nil {
		f.Fatal(err)
	}
	payload, _ := json.Marshal(d)
	f.Add(file)
	f.Add(payload)
	f.Add([]byte(`{"keys":{}}`))
	f.Add([]byte(`{"keys":{"a":{"created":"2026-01-01T00:00:00Z","versions":[{"version":1,"state":"usable","material":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":"2026-01-01T00:00:00Z","reserved":5}]}}}`))
	f.Add([]byte(keyringMagic))

	check := func(t *testing.T, data []byte) {
		d, err := decodeKeyring(data, master)
		if err != nil {
			if !errors.Is(err, ErrKeyringCorrupt) && !errors.Is(err, ErrWrongMasterKey) && !strings.Contains(err.Error(), "unsupported keyring format") {
				t.Fatalf("undocumented error: %v", err)
			}
			return
		}
		again, err := encodeKeyring(d, master)
		if err != nil {
			t.Fatalf("encode an accepted keyring: %v", err)
		}
		d2, err := decodeKeyring(again, master)
		if err != nil {
			t.Fatalf("decode a re-encoded keyring: %v", err)
		}
		j1, _ := json.Marshal(d)
		j2, _ := json.Marshal(d2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("round trip changed the keyring:\n%s\n%s", j1, j2)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		check(t, data)
		check(t, sealPayload(data, master))
	})
}

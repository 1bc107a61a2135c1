// Package kmstest is the conformance suite every rekey.KMS backend passes.
//
// A backend's test file starts with
//
//	func TestConformance(t *testing.T) {
//		kmstest.Run(t, func(t *testing.T) rekey.KMS { return newBackendForTest(t) })
//	}
//
// Run calls newKMS once per subtest, with the subtest's t (register cleanup
// with t.Cleanup). Subtests run in parallel and use key names unique to the
// run ("kt-" and a fresh rekey.NewID, lowercased), so one shared backend (a
// real KMS, an emulator) may be returned every time. Optional capabilities
// (Rewrapper, BatchRewrapper, VersionRetirer, MACer, Pinger) are tested only
// when the backend implements them; otherwise their subtest is skipped with
// the reason.
//
// What the suite holds a backend to, beyond the rekey.KMS doc comments:
//   - CreateKey refuses an empty name with ErrInvalidArgument; Wrap refuses
//     an empty plaintext with ErrInvalidArgument.
//   - A reference never returned by CreateKey (the suite uses a fresh key
//     name) gives ErrKeyNotFound.
//   - Corrupt, truncated, extended or misattributed wrapped bytes fail with
//     ErrInvalidCiphertext or ErrWrongVersion, never a panic, never success.
//   - Wrap copies its input and Unwrap returns a fresh buffer: a caller may
//     zero either without damaging the backend.
package kmstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey"
)

// DEKSize is the size of the data-encryption keys the suite wraps.
const DEKSize = 32

// Options adapts the suite to what a backend's service does by design.
type Options struct {
	// NewestVersionWrapsOnly: the service wraps only under a key's newest
	// version (IBM Key Protect). The suite then holds Wrap under an older
	// version to failing with rekey.ErrVersionDisabled (never to wrapping
	// under another version and labelling it the asked one), and still
	// requires every earlier wrap to unwrap under its version.
	NewestVersionWrapsOnly bool
}

// Run runs the conformance suite against the backends newKMS returns.
func Run(t *testing.T, newKMS func(t *testing.T) rekey.KMS) {
	t.Helper()
	RunWith(t, newKMS, Options{})
}

// RunWith is Run for a backend that needs Options.
func RunWith(t *testing.T, newKMS func(t *testing.T) rekey.KMS, o Options) {
	t.Helper()
	testWrapOlderVersion := func(t *testing.T, k rekey.KMS) { testWrapOlderVersion(t, k, o) }
	testConcurrent := func(t *testing.T, k rekey.KMS) { testConcurrent(t, k, o) }
	tests := []struct {
		name string
		fn   func(t *testing.T, k rekey.KMS)
	}{
		{"CreateKey", testCreateKey},
		{"ConcurrentCreateKey", testConcurrentCreateKey},
		{"UnknownKey", testUnknownKey},
		{"RoundTrip", testRoundTrip},
		{"WrapsDiffer", testWrapsDiffer},
		{"WrapInvalidInput", testWrapInvalidInput},
		{"OtherKey", testOtherKey},
		{"WrongVersion", testWrongVersion},
		{"Rotate", testRotate},
		{"WrapOlderVersion", testWrapOlderVersion},
		{"Malformed", testMalformed},
		{"Aliasing", testAliasing},
		{"Concurrent", testConcurrent},
		{"Rewrapper", testRewrapper},
		{"BatchRewrapper", testBatchRewrapper},
		{"VersionRetirer", testVersionRetirer},
		{"MACer", testMACer},
		{"Pinger", testPinger},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newKMS(t))
		})
	}
}

// keyName returns a key name no other subtest or run uses.
func keyName() string { return "kt-" + strings.ToLower(rekey.NewID()) }

func newDEK(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, DEKSize)
	rand.Read(b)
	return b
}

func createKey(t *testing.T, k rekey.KMS) string {
	t.Helper()
	name := keyName()
	ref, err := k.CreateKey(t.Context(), name)
	if err != nil {
		t.Fatalf("CreateKey(%q): %v", name, err)
	}
	if ref == "" {
		t.Fatalf("CreateKey(%q) returned an empty reference", name)
	}
	return ref
}

func wrap(t *testing.T, k rekey.KMS, ref string, v int, pt []byte) []byte {
	t.Helper()
	w, err := k.Wrap(t.Context(), ref, v, pt)
	if err != nil {
		t.Fatalf("Wrap(%s, v%d): %v", ref, v, err)
	}
	if len(w) == 0 {
		t.Fatalf("Wrap(%s, v%d) returned no bytes", ref, v)
	}
	return w
}

func mustUnwrap(t *testing.T, k rekey.KMS, ref string, v int, w, want []byte) {
	t.Helper()
	got, err := k.Unwrap(t.Context(), ref, v, w)
	if err != nil {
		t.Fatalf("Unwrap(%s, v%d): %v", ref, v, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Unwrap(%s, v%d) returned other bytes than were wrapped", ref, v)
	}
}

func rotate(t *testing.T, k rekey.KMS, ref string) int {
	t.Helper()
	v, err := k.RotateKey(t.Context(), ref)
	if err != nil {
		t.Fatalf("RotateKey(%s): %v", ref, err)
	}
	return v
}

func current(t *testing.T, k rekey.KMS, ref string) int {
	t.Helper()
	v, err := k.CurrentVersion(t.Context(), ref)
	if err != nil {
		t.Fatalf("CurrentVersion(%s): %v", ref, err)
	}
	return v
}

// wantErr fails t unless err matches one of targets.
func wantErr(t *testing.T, what string, err error, targets ...error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want %v", what, targets)
		return
	}
	for _, target := range targets {
		if errors.Is(err, target) {
			return
		}
	}
	t.Errorf("%s: error %q (%T) matches none of %v", what, err, err, targets)
}

// unwrapSafely calls Unwrap and turns a panic into an error, so that one
// bad case reports itself instead of ending the test binary.
func unwrapSafely(ctx context.Context, k rekey.KMS, ref string, v int, w []byte) (pt []byte, panicked any, err error) {
	defer func() { panicked = recover() }()
	pt, err = k.Unwrap(ctx, ref, v, w)
	return pt, nil, err
}

func testCreateKey(t *testing.T, k rekey.KMS) {
	ctx := t.Context()
	name := keyName()
	ref, err := k.CreateKey(ctx, name)
	if err != nil {
		t.Fatalf("CreateKey(%q): %v", name, err)
	}
	if ref == "" {
		t.Fatal("CreateKey returned an empty reference")
	}
	if v := current(t, k, ref); v != 1 {
		t.Errorf("CurrentVersion of a new key = %d, want 1", v)
	}
	_, err = k.CreateKey(ctx, name)
	wantErr(t, "CreateKey of an existing name", err, rekey.ErrKeyExists)

	_, err = k.CreateKey(ctx, "")
	wantErr(t, "CreateKey with an empty name", err, rekey.ErrInvalidArgument)

	// The failed calls changed nothing.
	if v := current(t, k, ref); v != 1 {
		t.Errorf("CurrentVersion after a refused duplicate CreateKey = %d, want 1", v)
	}
	mustUnwrap(t, k, ref, 1, wrap(t, k, ref, 1, []byte("dek")), []byte("dek"))
}

func testConcurrentCreateKey(t *testing.T, k rekey.KMS) {
	const racers = 6
	name := keyName()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		refs   []string
		exists int
	)
	for range racers {
		wg.Go(func() {
			ref, err := k.CreateKey(t.Context(), name)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				refs = append(refs, ref)
			case errors.Is(err, rekey.ErrKeyExists):
				exists++
			default:
				t.Errorf("CreateKey: %v", err)
			}
		})
	}
	wg.Wait()
	if len(refs) != 1 || exists != racers-1 {
		t.Fatalf("%d concurrent CreateKey of one name: %d succeeded, %d got ErrKeyExists; want 1 and %d",
			racers, len(refs), exists, racers-1)
	}
	if v := current(t, k, refs[0]); v != 1 {
		t.Errorf("CurrentVersion = %d, want 1", v)
	}
}

func testUnknownKey(t *testing.T, k rekey.KMS) {
	ctx := t.Context()
	ref := createKey(t, k)
	w := wrap(t, k, ref, 1, newDEK(t))
	missing := keyName()

	_, err := k.CurrentVersion(ctx, missing)
	wantErr(t, "CurrentVersion(unknown ref)", err, rekey.ErrKeyNotFound)
	_, err = k.RotateKey(ctx, missing)
	wantErr(t, "RotateKey(unknown ref)", err, rekey.ErrKeyNotFound)
	_, err = k.Wrap(ctx, missing, 1, newDEK(t))
	wantErr(t, "Wrap(unknown ref)", err, rekey.ErrKeyNotFound)
	_, err = k.Unwrap(ctx, missing, 1, w)
	wantErr(t, "Unwrap(unknown ref)", err, rekey.ErrKeyNotFound)
}

func testRoundTrip(t *testing.T, k rekey.KMS) {
	ref := createKey(t, k)
	for i := range 8 {
		dek := newDEK(t)
		if i == 0 {
			dek = make([]byte, DEKSize) // all zero: no special case
		}
		w := wrap(t, k, ref, 1, dek)
		if bytes.Contains(w, dek) {
			t.Errorf("wrap %d contains the plaintext DEK", i)
		}
		mustUnwrap(t, k, ref, 1, w, dek)
	}
	// Plaintexts other than 32 bytes round-trip too.
	for _, n := range []int{1, 16, 64} {
		pt := make([]byte, n)
		rand.Read(pt)
		mustUnwrap(t, k, ref, 1, wrap(t, k, ref, 1, pt), pt)
	}
}

func testWrapsDiffer(t *testing.T, k rekey.KMS) {
	ref := createKey(t, k)
	dek := newDEK(t)
	w1 := wrap(t, k, ref, 1, dek)
	w2 := wrap(t, k, ref, 1, dek)
	if bytes.Equal(w1, w2) {
		t.Fatal("two wraps of one DEK under one version are equal: the wrap is not randomized")
	}
	mustUnwrap(t, k, ref, 1, w1, dek)
	mustUnwrap(t, k, ref, 1, w2, dek)

	// The same DEK under two keys differs too.
	ref2 := createKey(t, k)
	if w3 := wrap(t, k, ref2, 1, dek); bytes.Equal(w1, w3) {
		t.Error("wraps of one DEK under two keys are equal")
	}
}

func testWrapInvalidInput(t *testing.T, k rekey.KMS) {
	ctx := t.Context()
	ref := createKey(t, k)
	_, err := k.Wrap(ctx, ref, 1, nil)
	wantErr(t, "Wrap(nil plaintext)", err, rekey.ErrInvalidArgument)
	_, err = k.Wrap(ctx, ref, 1, []byte{})
	wantErr(t, "Wrap(empty plaintext)", err, rekey.ErrInvalidArgument)
	_, err = k.Wrap(ctx, ref, 2, newDEK(t))
	wantErr(t, "Wrap(version 2 of a key at version 1)", err, rekey.ErrVersionNotFound)
	_, err = k.Wrap(ctx, ref, 0, newDEK(t))
	wantErr(t, "Wrap(version 0)", err, rekey.ErrVersionNotFound, rekey.ErrInvalidArgument)
	_, err = k.Wrap(ctx, ref, -1, newDEK(t))
	wantErr(t, "Wrap(version -1)", err, rekey.ErrVersionNotFound, rekey.ErrInvalidArgument)
	if v := current(t, k, ref); v != 1 {
		t.Errorf("CurrentVersion after refused wraps = %d, want 1", v)
	}
}

func testOtherKey(t *testing.T, k rekey.KMS) {
	ctx := t.Context()
	ref1 := createKey(t, k)
	ref2 := createKey(t, k)
	dek := newDEK(t)
	w := wrap(t, k, ref1, 1, dek)
	pt, err := k.Unwrap(ctx, ref2, 1, w)
	wantErr(t, "Unwrap under another key", err, rekey.ErrInvalidCiphertext, rekey.ErrWrongVersion)
	if pt != nil && bytes.Equal(pt, dek) {
		t.Error("Unwrap under another key returned the DEK")
	}
	mustUnwrap(t, k, ref1, 1, w, dek)
}

func testWrongVersion(t *testing.T, k rekey.KMS) {
	ctx := t.Context()
	ref := createKey(t, k)
	dek := newDEK(t)
	w1 := wrap(t, k, ref, 1, dek)
	v2 := rotate(t, k, ref)
	w2 := wrap(t, k, ref, v2, dek)

	_, err := k.Unwrap(ctx, ref, v2, w1)
	wantErr(t, "Unwrap of a v1 wrap asking v2", err, rekey.ErrWrongVersion, rekey.ErrInvalidCiphertext)
	_, err = k.Unwrap(ctx, ref, 1, w2)
	wantErr(t, "Unwrap of a v2 wrap asking v1", err, rekey.ErrWrongVersion, rekey.ErrInvalidCiphertext)
	for _, v := range []int{0, -1, v2 + 1, 1 << 20} {
		_, err = k.Unwrap(ctx, ref, v, w1)
		wantErr(t, fmt.Sprintf("Unwrap of a v1 wrap asking v%d", v), err,
			rekey.ErrWrongVersion, rekey.ErrInvalidCiphertext, rekey.ErrVersionNotFound, rekey.ErrInvalidArgument)
	}
	mustUnwrap(t, k, ref, 1, w1, dek)
	mustUnwrap(t, k, ref, v2, w2, dek)
}

func testRotate(t *testing.T, k rekey.KMS) {
	ref := createKey(t, k)
	type wrapped struct {
		v       int
		w, want []byte
	}
	var all []wrapped
	dek := newDEK(t)
	all = append(all, wrapped{1, wrap(t, k, ref, 1, dek), dek})
	for range 4 {
		before := current(t, k, ref)
		v := rotate(t, k, ref)
		if v != before+1 {
			t.Fatalf("RotateKey returned %d, want CurrentVersion+1 = %d", v, before+1)
		}
		if after := current(t, k, ref); after != v {
			t.Fatalf("CurrentVersion after RotateKey = %d, want %d", after, v)
		}
		dek := newDEK(t)
		all = append(all, wrapped{v, wrap(t, k, ref, v, dek), dek})
		// Every older version still unwraps what it wrapped.
		for _, x := range all {
			mustUnwrap(t, k, ref, x.v, x.w, x.want)
		}
	}
	// Rotating one key leaves the others alone.
	other := createKey(t, k)
	rotate(t, k, ref)
	if v := current(t, k, other); v != 1 {
		t.Errorf("rotating one key moved another to version %d", v)
	}
}

func testWrapOlderVersion(t *testing.T, k rekey.KMS, o Options) {
	ref := createKey(t, k)
	early := map[int][]byte{} // version -> a wrap made while it was the newest
	earlyDEK := map[int][]byte{}
	earlyDEK[1] = newDEK(t)
	early[1] = wrap(t, k, ref, 1, earlyDEK[1])
	v2 := rotate(t, k, ref)
	earlyDEK[v2] = newDEK(t)
	early[v2] = wrap(t, k, ref, v2, earlyDEK[v2])
	v3 := rotate(t, k, ref)
	for v := 1; v <= v3; v++ {
		dek := newDEK(t)
		var w []byte
		switch {
		case o.NewestVersionWrapsOnly && v < v3:
			_, err := k.Wrap(t.Context(), ref, v, dek)
			wantErr(t, fmt.Sprintf("Wrap under v%d with v%d the newest", v, v3), err, rekey.ErrVersionDisabled)
			w, dek = early[v], earlyDEK[v]
		default:
			w = wrap(t, k, ref, v, dek)
		}
		mustUnwrap(t, k, ref, v, w, dek)
		for other := 1; other <= v3; other++ {
			if other == v {
				continue
			}
			_, err := k.Unwrap(t.Context(), ref, other, w)
			wantErr(t, fmt.Sprintf("Unwrap of a v%d wrap asking v%d", v, other), err, rekey.ErrWrongVersion, rekey.ErrInvalidCiphertext)
		}
	}
}

// malformedCases returns named corruptions of the real wrap w.
func malformedCases(w []byte) []struct {
	name string
	b    []byte
} {
	type tc = struct {
		name string
		b    []byte
	}
	cases := []tc{
		{"nil", nil},
		{"empty", []byte{}},
		{"one byte", w[:1]},
		{"one zero byte", []byte{0}},
		{"appended byte", append(slices.Clone(w), 0)},
		{"appended 16 bytes", append(slices.Clone(w), make([]byte, 16)...)},
		{"doubled", append(slices.Clone(w), w...)},
		{"all zero", make([]byte, len(w))},
		{"all 0xff", bytes.Repeat([]byte{0xff}, len(w))},
	}
	for _, first := range []byte{0x00, w[0] + 1, w[0] - 1, 0xff} {
		if first == w[0] {
			continue
		}
		b := slices.Clone(w)
		b[0] = first
		cases = append(cases, tc{fmt.Sprintf("format byte %#02x", first), b})
	}
	for n := 0; n < len(w); n++ {
		cases = append(cases, tc{fmt.Sprintf("truncated to %d", n), slices.Clone(w[:n])})
	}
	for n := 1; n < len(w); n++ {
		cases = append(cases, tc{fmt.Sprintf("first %d bytes dropped", n), slices.Clone(w[n:])})
	}
	for i := range w {
		for bit := range 8 {
			b := slices.Clone(w)
			b[i] ^= 1 << bit
			cases = append(cases, tc{fmt.Sprintf("bit %d of byte %d flipped", bit, i), b})
		}
	}
	return cases
}

func testMalformed(t *testing.T, k rekey.KMS) {
	ctx := t.Context()
	ref := createKey(t, k)
	v := rotate(t, k, ref) // a version above 1, so version fields are not all zero
	dek := newDEK(t)
	w := wrap(t, k, ref, v, dek)
	orig := slices.Clone(w)
	failures := 0
	for _, c := range malformedCases(w) {
		pt, p, err := unwrapSafely(ctx, k, ref, v, c.b)
		switch {
		case p != nil:
			t.Errorf("%s: Unwrap panicked: %v", c.name, p)
		case err == nil:
			t.Errorf("%s: Unwrap succeeded (%d bytes), want ErrInvalidCiphertext or ErrWrongVersion", c.name, len(pt))
		case !errors.Is(err, rekey.ErrInvalidCiphertext) && !errors.Is(err, rekey.ErrWrongVersion):
			t.Errorf("%s: Unwrap error %q (%T), want ErrInvalidCiphertext or ErrWrongVersion", c.name, err, err)
		default:
			continue
		}
		if failures++; failures >= 20 {
			t.Fatal("too many failures; stopping")
		}
	}
	if !bytes.Equal(w, orig) {
		t.Error("building the cases changed the original wrap (suite bug)")
	}
	// The key still works after all that.
	mustUnwrap(t, k, ref, v, w, dek)
}

func testAliasing(t *testing.T, k rekey.KMS) {
	ref := createKey(t, k)
	dek := newDEK(t)
	want := slices.Clone(dek)

	w := wrap(t, k, ref, 1, dek)
	clear(dek) // the caller zeroes its plaintext after Wrap
	wantWrapped := slices.Clone(w)

	pt, err := k.Unwrap(t.Context(), ref, 1, w)
	if err != nil {
		t.Fatalf("Unwrap: %v", err)
	}
	if !bytes.Equal(pt, want) {
		t.Fatal("zeroing the plaintext after Wrap changed what Unwrap returns")
	}
	clear(pt) // the caller zeroes the unwrapped DEK
	if !bytes.Equal(w, wantWrapped) {
		t.Fatal("zeroing Unwrap's result changed the wrapped bytes")
	}
	mustUnwrap(t, k, ref, 1, w, want)
}

func testConcurrent(t *testing.T, k rekey.KMS, o Options) {
	const (
		workers   = 4
		iters     = 20
		rotators  = 2
		rotations = 3 // per rotator
	)
	ref := createKey(t, k)
	ctx := t.Context()

	type wrapped struct {
		v       int
		w, want []byte
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		results  []wrapped
		versions []int
	)
	for range rotators {
		wg.Go(func() {
			for range rotations {
				v, err := k.RotateKey(ctx, ref)
				if err != nil {
					t.Errorf("RotateKey: %v", err)
					return
				}
				mu.Lock()
				versions = append(versions, v)
				mu.Unlock()
			}
		})
	}
	for range workers {
		wg.Go(func() {
			var mine []wrapped
			for range iters {
				v, err := k.CurrentVersion(ctx, ref)
				if err != nil {
					t.Errorf("CurrentVersion: %v", err)
					return
				}
				dek := make([]byte, DEKSize)
				rand.Read(dek)
				w, err := k.Wrap(ctx, ref, v, dek)
				if o.NewestVersionWrapsOnly && errors.Is(err, rekey.ErrVersionDisabled) {
					continue // v was rotated past meanwhile: refused, not mislabelled
				}
				if err != nil {
					t.Errorf("Wrap(v%d): %v", v, err)
					return
				}
				mine = append(mine, wrapped{v, w, dek})
				// Unwrap an earlier one of ours while rotations go on.
				x := mine[len(mine)/2]
				got, err := k.Unwrap(ctx, ref, x.v, x.w)
				if err != nil {
					t.Errorf("Unwrap(v%d): %v", x.v, err)
					return
				}
				if !bytes.Equal(got, x.want) {
					t.Errorf("Unwrap(v%d) returned other bytes than were wrapped", x.v)
					return
				}
			}
			mu.Lock()
			results = append(results, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.Sort(versions)
	want := make([]int, rotators*rotations)
	for i := range want {
		want[i] = i + 2
	}
	if !slices.Equal(versions, want) {
		t.Errorf("concurrent RotateKey returned versions %v, want each of %v exactly once", versions, want)
	}
	if v := current(t, k, ref); v != rotators*rotations+1 {
		t.Errorf("CurrentVersion after %d rotations = %d, want %d", rotators*rotations, v, rotators*rotations+1)
	}
	if n := len(results); n != workers*iters && !(o.NewestVersionWrapsOnly && n > 0) {
		t.Fatalf("%d wraps recorded, want %d", n, workers*iters)
	}
	for _, x := range results {
		mustUnwrap(t, k, ref, x.v, x.w, x.want)
	}
}

func testRewrapper(t *testing.T, k rekey.KMS) {
	rw, ok := k.(rekey.Rewrapper)
	if !ok || !rekey.CapabilitiesOf(k).Rewrap { // a decorator implements every interface and reports what it really has
		t.Skipf("%T does not implement rekey.Rewrapper", k)
	}
	ctx := t.Context()
	ref := createKey(t, k)
	dek := newDEK(t)
	w1 := wrap(t, k, ref, 1, dek)
	v2 := rotate(t, k, ref)

	w2, err := rw.Rewrap(ctx, ref, 1, w1, v2)
	if err != nil {
		t.Fatalf("Rewrap(v1 -> v%d): %v", v2, err)
	}
	mustUnwrap(t, k, ref, v2, w2, dek)
	_, err = k.Unwrap(ctx, ref, 1, w2)
	wantErr(t, "Unwrap of a re-wrapped DEK under its old version", err, rekey.ErrWrongVersion, rekey.ErrInvalidCiphertext)
	mustUnwrap(t, k, ref, 1, w1, dek) // the input is still good

	bad := slices.Clone(w1)
	bad[len(bad)-1] ^= 1
	_, err = rw.Rewrap(ctx, ref, 1, bad, v2)
	wantErr(t, "Rewrap of corrupt bytes", err, rekey.ErrInvalidCiphertext, rekey.ErrWrongVersion)
	_, err = rw.Rewrap(ctx, ref, v2, w1, v2)
	wantErr(t, "Rewrap naming the wrong source version", err, rekey.ErrWrongVersion, rekey.ErrInvalidCiphertext)
	_, err = rw.Rewrap(ctx, keyName(), 1, w1, v2)
	wantErr(t, "Rewrap under an unknown ref", err, rekey.ErrKeyNotFound)
	_, err = rw.Rewrap(ctx, ref, 1, w1, v2+1)
	wantErr(t, "Rewrap to a version that does not exist", err, rekey.ErrVersionNotFound)
}

func testBatchRewrapper(t *testing.T, k rekey.KMS) {
	brw, ok := k.(rekey.BatchRewrapper)
	if !ok || !rekey.CapabilitiesOf(k).BatchRewrap { // a decorator implements every interface and reports what it really has
		t.Skipf("%T does not implement rekey.BatchRewrapper", k)
	}
	ctx := t.Context()
	ref := createKey(t, k)
	deks := [][]byte{newDEK(t), newDEK(t), newDEK(t), newDEK(t), newDEK(t)}
	w0 := wrap(t, k, ref, 1, deks[0])
	w1 := wrap(t, k, ref, 1, deks[1])
	v2 := rotate(t, k, ref)
	w2 := wrap(t, k, ref, v2, deks[2])
	w3 := wrap(t, k, ref, 1, deks[3])
	v3 := rotate(t, k, ref)
	w4 := wrap(t, k, ref, 1, deks[4])

	corrupt := slices.Clone(w1)
	corrupt[len(corrupt)/2] ^= 0x40
	items := []rekey.RewrapItem{
		{Version: 1, Wrapped: w0},
		{Version: 1, Wrapped: corrupt}, // corrupt
		{Version: v2, Wrapped: w2},     // an earlier partial rotation
		{Version: v2, Wrapped: w3},     // names the wrong version
		{Version: 1, Wrapped: w4},
	}
	res, err := brw.RewrapBatch(ctx, ref, v3, items)
	if err != nil {
		t.Fatalf("RewrapBatch: %v", err)
	}
	if len(res) != len(items) {
		t.Fatalf("RewrapBatch returned %d results for %d items", len(res), len(items))
	}
	for _, i := range []int{0, 2, 4} {
		if res[i].Err != nil {
			t.Errorf("item %d: %v", i, res[i].Err)
			continue
		}
		mustUnwrap(t, k, ref, v3, res[i].Wrapped, deks[i])
	}
	wantErr(t, "item 1 (corrupt)", res[1].Err, rekey.ErrInvalidCiphertext, rekey.ErrWrongVersion)
	wantErr(t, "item 3 (wrong version)", res[3].Err, rekey.ErrWrongVersion, rekey.ErrInvalidCiphertext)
	for _, i := range []int{1, 3} {
		if res[i].Wrapped != nil {
			t.Errorf("item %d failed but has wrapped bytes", i)
		}
	}
	// Each result's bytes are its own: an append to one (the results may
	// share an allocation) leaves the next as it was.
	if res[0].Err == nil && res[2].Err == nil {
		_ = append(res[0].Wrapped, 0xff, 0xff, 0xff, 0xff)
		mustUnwrap(t, k, ref, v3, res[2].Wrapped, deks[2])
	}

	res, err = brw.RewrapBatch(ctx, ref, v3, nil)
	if err != nil || len(res) != 0 {
		t.Errorf("RewrapBatch of no items = %d results, %v; want none, nil", len(res), err)
	}
	_, err = brw.RewrapBatch(ctx, keyName(), 1, items[:1])
	wantErr(t, "RewrapBatch under an unknown ref", err, rekey.ErrKeyNotFound)
}

func testVersionRetirer(t *testing.T, k rekey.KMS) {
	vr, ok := k.(rekey.VersionRetirer)
	if !ok || !rekey.CapabilitiesOf(k).RetireVersion { // a decorator implements every interface and reports what it really has
		t.Skipf("%T does not implement rekey.VersionRetirer", k)
	}
	ctx := t.Context()
	ref := createKey(t, k)
	dek1, dek2 := newDEK(t), newDEK(t)
	w1 := wrap(t, k, ref, 1, dek1)
	v2 := rotate(t, k, ref)
	w2 := wrap(t, k, ref, v2, dek2)

	for range 2 { // idempotent
		if err := vr.RetireVersion(ctx, ref, 1); err != nil {
			t.Fatalf("RetireVersion(v1): %v", err)
		}
		_, err := k.Unwrap(ctx, ref, 1, w1)
		wantErr(t, "Unwrap under a retired version", err, rekey.ErrVersionDisabled)
		_, err = k.Wrap(ctx, ref, 1, dek1)
		wantErr(t, "Wrap under a retired version", err, rekey.ErrVersionDisabled)
	}
	mustUnwrap(t, k, ref, v2, w2, dek2)
	if v := current(t, k, ref); v != v2 {
		t.Errorf("CurrentVersion after retiring v1 = %d, want %d", v, v2)
	}

	for range 2 { // idempotent
		if err := vr.DestroyVersion(ctx, ref, 1); err != nil {
			t.Fatalf("DestroyVersion(v1): %v", err)
		}
		_, err := k.Unwrap(ctx, ref, 1, w1)
		wantErr(t, "Unwrap under a destroyed version", err, rekey.ErrVersionDisabled)
	}
	if err := vr.RetireVersion(ctx, ref, 1); err != nil {
		t.Errorf("RetireVersion of a destroyed version: %v, want nil (idempotent)", err)
	}
	mustUnwrap(t, k, ref, v2, w2, dek2)

	// Version numbers are never reused.
	if v3 := rotate(t, k, ref); v3 != v2+1 {
		t.Errorf("RotateKey after destroying v1 = %d, want %d", v3, v2+1)
	}

	wantErr(t, "RetireVersion(unknown version)", vr.RetireVersion(ctx, ref, 99), rekey.ErrVersionNotFound)
	wantErr(t, "DestroyVersion(unknown version)", vr.DestroyVersion(ctx, ref, 99), rekey.ErrVersionNotFound)
	missing := keyName()
	wantErr(t, "RetireVersion(unknown ref)", vr.RetireVersion(ctx, missing, 1), rekey.ErrKeyNotFound)
	wantErr(t, "DestroyVersion(unknown ref)", vr.DestroyVersion(ctx, missing, 1), rekey.ErrKeyNotFound)
}

func testMACer(t *testing.T, k rekey.KMS) {
	m, ok := k.(rekey.MACer)
	if !ok || !rekey.CapabilitiesOf(k).MAC { // a decorator implements every interface and reports what it really has
		t.Skipf("%T does not implement rekey.MACer", k)
	}
	ctx := t.Context()
	mac := func(purpose string, data []byte) []byte {
		t.Helper()
		out, err := m.MAC(ctx, purpose, data)
		if err != nil {
			t.Fatalf("MAC(%q): %v", purpose, err)
		}
		if len(out) < 16 {
			t.Fatalf("MAC(%q) is %d bytes, want at least 16", purpose, len(out))
		}
		return out
	}
	a := mac("audit-checkpoint", []byte("head 1"))
	if b := mac("audit-checkpoint", []byte("head 1")); !bytes.Equal(a, b) {
		t.Error("MAC is not deterministic")
	}
	if b := mac("audit-checkpoint", []byte("head 2")); bytes.Equal(a, b) {
		t.Error("MAC of different data is equal")
	}
	if b := mac("other-purpose", []byte("head 1")); bytes.Equal(a, b) {
		t.Error("MAC for a different purpose is equal")
	}
	if b := mac("audit-checkpoint", nil); bytes.Equal(a, b) {
		t.Error("MAC of empty data equals MAC of data")
	}
}

func testPinger(t *testing.T, k rekey.KMS) {
	p, ok := k.(rekey.Pinger)
	if !ok || !rekey.CapabilitiesOf(k).Ping { // a decorator implements every interface and reports what it really has
		t.Skipf("%T does not implement rekey.Pinger", k)
	}
	if err := p.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

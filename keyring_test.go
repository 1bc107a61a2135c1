package rekey_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

type bundle struct {
	store *memstore.Store
	kms   *memkms.KMS
	kr    *rekey.Keyring
	now   time.Time
}

func setup(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{store: memstore.New(), kms: memkms.New(), now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	b.kr = rekey.NewKeyring(b.store, map[string]rekey.KMS{"mem": b.kms}, rekey.WithClock(func() time.Time { return b.now }), rekey.WithActor("test"))
	if _, err := b.kr.CreateKey(context.Background(), "payments", "mem", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeyringCreateKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	k, err := b.store.GetKey(ctx, "payments")
	if err != nil || k.ActiveVersion != 1 || !k.ExpiresAt.Equal(b.now.Add(90*rekey.Day)) {
		t.Fatalf("key %+v, %v", k, err)
	}
	if _, err := b.kr.CreateKey(ctx, "payments", "mem", rekey.DefaultPolicy()); !errors.Is(err, rekey.ErrKeyExists) {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := b.kr.CreateKey(ctx, "Bad Name", "mem", rekey.DefaultPolicy()); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("bad name: %v", err)
	}
	if _, err := b.kr.CreateKey(ctx, "other", "nosuch", rekey.DefaultPolicy()); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Errorf("unknown backend: %v", err)
	}
	ev, err := b.store.ListAudit(ctx, rekey.AuditQuery{Key: "payments"})
	if err != nil || len(ev) != 1 || ev[0].Type != rekey.AuditKeyCreated || ev[0].Actor != "test" {
		t.Fatalf("audit %+v %v", ev, err)
	}
}

func TestKeyringDEKRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	id, plain, err := b.kr.NewDEK(ctx, "payments", "label")
	if err != nil || len(plain) != rekey.DEKSize {
		t.Fatal(err)
	}
	got, err := b.kr.OpenDEK(ctx, id)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("OpenDEK: %v", err)
	}
	d, _ := b.store.GetDEK(ctx, id)
	if bytes.Contains(d.Wrapped, plain) {
		t.Fatal("the stored DEK holds its plaintext")
	}
	if n, err := b.kr.NewDEKs(ctx, "payments", "", 2500); err != nil || n != 2500 {
		t.Fatalf("NewDEKs: %d %v", n, err)
	}
	counts, _ := b.store.CountDEKs(ctx, "payments")
	if counts[1] != 2501 {
		t.Fatalf("counts %v", counts)
	}
	if _, _, err := b.kr.NewDEK(ctx, "nosuch", ""); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Errorf("unknown key: %v", err)
	}
	_, err = b.kr.OpenDEK(ctx, rekey.NewID())
	var de *rekey.DEKError
	if !errors.Is(err, rekey.ErrDEKNotFound) || !errors.As(err, &de) {
		t.Errorf("unknown dek: %v", err)
	}
}

// TestKeyringCorruptDEKNamed: a corrupt stored DEK fails with an error
// naming it, and others still open.
func TestKeyringCorruptDEKNamed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	good, _, _ := b.kr.NewDEK(ctx, "payments", "")
	bad, _, _ := b.kr.NewDEK(ctx, "payments", "")
	d, _ := b.store.GetDEK(ctx, bad)
	flipped := bytes.Clone(d.Wrapped)
	flipped[len(flipped)-1] ^= 1
	lease, err := b.store.AcquireLease(ctx, "payments", "t", time.Minute, b.now)
	if err != nil {
		t.Fatal(err)
	}
	if lost, err := b.store.SwapDEKs(ctx, []rekey.DEKSwap{{ID: bad, OldWrapped: d.Wrapped, NewWrapped: flipped, NewVersion: 1}}, lease); err != nil || len(lost) != 0 {
		t.Fatal(lost, err)
	}
	_, err = b.kr.OpenDEK(ctx, bad)
	var de *rekey.DEKError
	if !errors.As(err, &de) || de.ID != bad || !errors.Is(err, rekey.ErrInvalidCiphertext) {
		t.Fatalf("corrupt dek: %v", err)
	}
	if _, err := b.kr.OpenDEK(ctx, good); err != nil {
		t.Fatalf("good dek: %v", err)
	}
}

// TestKeyringRefusesUnusableVersion: a DEK on a compromised version is
// refused by the Keyring even though the backend could still unwrap it.
func TestKeyringRefusesUnusableVersion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	id, _, _ := b.kr.NewDEK(ctx, "payments", "")
	// Rotate by hand: a second version, committed, the first compromised.
	lease, _ := b.store.AcquireLease(ctx, "payments", "t", time.Minute, b.now)
	r := rekey.Rotation{ID: rekey.NewID(), Key: "payments", FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonEmergency, StartedAt: b.now, UpdatedAt: b.now}
	if err := b.store.CreateRotation(ctx, r, lease, rekey.AuditEvent{Type: rekey.AuditRotationStarted, Key: "payments", Time: b.now}); err != nil {
		t.Fatal(err)
	}
	if err := b.store.ChangeVersionState(ctx, rekey.VersionChange{Key: "payments", Version: 1, From: []rekey.VersionState{rekey.VersionActive}, To: rekey.VersionCompromised, At: b.now}, &lease,
		rekey.AuditEvent{Type: rekey.AuditVersionCompromised, Key: "payments", Time: b.now}); err != nil {
		t.Fatal(err)
	}
	// While the compromised version is still the active one (the emergency
	// rotation has not committed), nothing new is wrapped under it.
	if _, _, err := b.kr.NewDEK(ctx, "payments", ""); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Fatalf("NewDEK under a compromised active version: %v", err)
	}
	ref, _ := b.store.GetKey(ctx, "payments")
	if _, err := b.kms.RotateKey(ctx, ref.BackendRef); err != nil {
		t.Fatal(err)
	}
	r2 := r
	r2.ToVersion, r2.State = 2, rekey.RotationVersionCreated
	if err := b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r2, FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Key: "payments", Version: 2, State: rekey.VersionCreated, CreatedAt: b.now},
		Events:     []rekey.AuditEvent{{Type: rekey.AuditVersionCreated, Key: "payments", Time: b.now}}}, lease); err != nil {
		t.Fatal(err)
	}
	r3 := r2
	r3.State = rekey.RotationCommitted
	if err := b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r3, FromState: rekey.RotationVersionCreated,
		Activate: &rekey.Activation{Version: 2, Previous: 1, ExpiresAt: b.now.Add(rekey.Day), RetireAfter: b.now},
		Events:   []rekey.AuditEvent{{Type: rekey.AuditRotationCommitted, Key: "payments", Time: b.now}}}, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := b.kr.OpenDEK(ctx, id); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Fatalf("DEK on a compromised version: %v", err)
	}
	// New DEKs go to version 2.
	id2, _, err := b.kr.NewDEK(ctx, "payments", "")
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := b.store.GetDEK(ctx, id2); d.Version != 2 {
		t.Fatalf("new DEK on version %d", d.Version)
	}
}

func TestKeyringSealOpen(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for _, size := range []int{0, 1, 100000} {
		plain := bytes.Repeat([]byte{7}, size)
		sealed, err := b.kr.Seal(ctx, "payments", plain, []byte("ad"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := b.kr.Open(ctx, sealed, []byte("ad"))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: %v", size, err)
		}
		if _, err := b.kr.Open(ctx, sealed, []byte("other")); !errors.Is(err, rekey.ErrInvalidCiphertext) {
			t.Fatalf("wrong aad: %v", err)
		}
		// The Append forms into reused buffers: the same results, in the
		// buffers given.
		sbuf := make([]byte, 0, size+rekey.SealedOverhead(size, rekey.IDLen))
		sealed2, err := b.kr.AppendSeal(ctx, sbuf, "payments", plain, []byte("ad"))
		if err != nil || len(sealed2) == 0 || &sealed2[:1][0] != &sbuf[:1][0] {
			t.Fatalf("size %d: AppendSeal: %v (in the buffer given: %v)", size, err, err == nil && &sealed2[:1][0] == &sbuf[:1][0])
		}
		obuf := make([]byte, 0, len(sealed2))
		got, err = b.kr.AppendOpen(ctx, obuf, sealed2, []byte("ad"))
		if err != nil || !bytes.Equal(got, plain) || (size > 0 && &got[0] != &obuf[:1][0]) {
			t.Fatalf("size %d: AppendOpen: %v", size, err)
		}
		if got, err := b.kr.Open(ctx, sealed2, []byte("ad")); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: Open of AppendSeal's envelope: %v", size, err)
		}
	}
	// A buffer that holds the plaintext is refused before a DEK is made.
	before, err := b.store.CountDEKs(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2000+rekey.SealedOverhead(1000, rekey.IDLen))
	if _, err := b.kr.AppendSeal(ctx, buf[:0], "payments", buf[len(buf)-1000:], nil); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Fatalf("AppendSeal into the plaintext's buffer: %v, want ErrInvalidArgument", err)
	}
	if after, err := b.store.CountDEKs(ctx, "payments"); err != nil || !maps.Equal(after, before) {
		t.Fatalf("a refused AppendSeal changed the DEKs: %v -> %v (%v)", before, after, err)
	}
}

// rotatingKMS commits a rotation of payments (v2 active, v1 retired at the
// backend, as with grace 0) right before the first Wrap it is asked for.
type rotatingKMS struct {
	rekey.KMS
	once   sync.Once
	rotate func()
}

func (k *rotatingKMS) Wrap(ctx context.Context, ref string, version int, pt []byte) ([]byte, error) {
	k.once.Do(k.rotate)
	return k.KMS.Wrap(ctx, ref, version, pt)
}

// TestKeyringNewDEKAcrossRetirement: a rotation that commits and retires
// the old version at the backend between NewDEK's read of the key and its
// wrap (the awskms crash torture found it) makes NewDEK wrap again under
// the new active version instead of failing.
func TestKeyringNewDEKAcrossRetirement(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	rk := &rotatingKMS{KMS: b.kms}
	rk.rotate = func() {
		k, _ := b.store.GetKey(ctx, "payments")
		lease, err := b.store.AcquireLease(ctx, "payments", "t", time.Minute, b.now)
		if err != nil {
			t.Error(err)
			return
		}
		r := rekey.Rotation{ID: rekey.NewID(), Key: "payments", FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonManual, StartedAt: b.now, UpdatedAt: b.now}
		if err := b.store.CreateRotation(ctx, r, lease, rekey.AuditEvent{Type: rekey.AuditRotationStarted, Key: "payments", Time: b.now}); err != nil {
			t.Error(err)
			return
		}
		if _, err := b.kms.RotateKey(ctx, k.BackendRef); err != nil {
			t.Error(err)
			return
		}
		r2 := r
		r2.ToVersion, r2.State = 2, rekey.RotationVersionCreated
		if err := b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r2, FromState: rekey.RotationClaimed,
			NewVersion: &rekey.KeyVersion{Key: "payments", Version: 2, State: rekey.VersionCreated, CreatedAt: b.now},
			Events:     []rekey.AuditEvent{{Type: rekey.AuditVersionCreated, Key: "payments", Time: b.now}}}, lease); err != nil {
			t.Error(err)
			return
		}
		r3 := r2
		r3.State = rekey.RotationCommitted
		if err := b.store.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r3, FromState: rekey.RotationVersionCreated,
			Activate: &rekey.Activation{Version: 2, Previous: 1, ExpiresAt: b.now.Add(rekey.Day), RetireAfter: b.now},
			Events:   []rekey.AuditEvent{{Type: rekey.AuditRotationCommitted, Key: "payments", Time: b.now}}}, lease); err != nil {
			t.Error(err)
			return
		}
		if err := b.kms.RetireVersion(ctx, k.BackendRef, 1); err != nil {
			t.Error(err)
		}
	}
	kr := rekey.NewKeyring(b.store, map[string]rekey.KMS{"mem": rk}, rekey.WithClock(func() time.Time { return b.now }), rekey.WithActor("test"))
	id, plain, err := kr.NewDEK(ctx, "payments", "")
	if err != nil {
		t.Fatalf("NewDEK across a retirement: %v", err)
	}
	d, err := b.store.GetDEK(ctx, id)
	if err != nil || d.Version != 2 {
		t.Fatalf("new DEK = %+v, %v: want it on version 2", d, err)
	}
	got, err := kr.OpenDEK(ctx, id)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("OpenDEK = %v: want the DEK back", err)
	}
}

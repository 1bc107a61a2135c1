// Package memkms is an in-memory rekey.KMS for tests: it passes the same
// conformance suite (kmstest) as the real backends, and it can be told to
// fail, so that engine tests can see what happens when a backend is down or
// flaky.
//
// Root keys live only in process memory and vanish with the KMS value. Each
// version has its own random AES-256 key, and wraps are AES-256-GCM with the
// reference and version bound as associated data, so corrupted, truncated or
// misattributed wrapped bytes fail to authenticate just as they would in a
// real backend.
//
// A reference is "memkms/" followed by the key name, deliberately different
// from the name, so that callers that confuse the two are caught.
package memkms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"

	"github.com/rekeyhq/rekey"
)

// Op names passed to KMS.Fail, one per method.
const (
	OpCreate  = "create"
	OpCurrent = "current"
	OpRotate  = "rotate"
	OpWrap    = "wrap"
	OpUnwrap  = "unwrap"
	OpRewrap  = "rewrap" // Rewrap and RewrapBatch
	OpRetire  = "retire"
	OpDestroy = "destroy"
	OpPing    = "ping"
	OpMAC     = "mac"
	OpDelete  = "delete"
)

// RefPrefix starts every reference the KMS returns.
const RefPrefix = "memkms/"

// MaxPlaintext is the largest plaintext Wrap accepts.
const MaxPlaintext = 4096

const (
	formatByte = 0x4d // 'M'
	nonceSize  = 12
	tagSize    = 16
	headerSize = 1 + 4 + nonceSize
	minWrapped = headerSize + 1 + tagSize
	maxWrapped = headerSize + MaxPlaintext + tagSize
)

// KMS is an in-memory key management service. The zero value is not usable;
// call New. It is safe for concurrent use.
type KMS struct {
	// Fail, when set, is consulted at the start of every call with the
	// operation's name (one of the Op constants) and the key reference (the
	// name for OpCreate, "" for OpPing and OpMAC). A non-nil error is
	// returned, wrapped with the operation, and the call does nothing else.
	// Return an *rekey.UnreachableError to simulate a transient outage. Set
	// it before the KMS is shared between goroutines; the function itself
	// must be safe for concurrent calls.
	Fail func(op string, ref string) error

	mu     sync.RWMutex
	keys   map[string]*memKey // by ref
	macKey []byte
}

type memKey struct {
	versions []*memVersion // versions[i] is version i+1
}

type memVersion struct {
	aead    cipher.AEAD // nil once destroyed
	retired bool
}

var (
	_ rekey.KMS            = (*KMS)(nil)
	_ rekey.Rewrapper      = (*KMS)(nil)
	_ rekey.BatchRewrapper = (*KMS)(nil)
	_ rekey.VersionRetirer = (*KMS)(nil)
	_ rekey.Pinger         = (*KMS)(nil)
	_ rekey.MACer          = (*KMS)(nil)
	_ rekey.KeyDeleter     = (*KMS)(nil)
)

// New returns an empty KMS.
func New() *KMS {
	mac := make([]byte, 32)
	rand.Read(mac)
	return &KMS{keys: make(map[string]*memKey), macKey: mac}
}

func (k *KMS) fail(op, ref string) error {
	if k.Fail == nil {
		return nil
	}
	if err := k.Fail(op, ref); err != nil {
		return fmt.Errorf("memkms: %s: %w", op, err)
	}
	return nil
}

func newVersion() *memVersion {
	key := make([]byte, 32)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic("memkms: " + err.Error()) // unreachable: the key is 32 bytes
	}
	clear(key) // best effort: the cipher keeps its own expanded copy
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic("memkms: " + err.Error())
	}
	return &memVersion{aead: aead}
}

// CreateKey implements rekey.KMS. It returns ErrInvalidArgument for a name
// rekey.ValidateKeyName refuses and ErrKeyExists for a taken name.
func (k *KMS) CreateKey(ctx context.Context, name string) (string, error) {
	if err := k.fail(OpCreate, name); err != nil {
		return "", err
	}
	if err := rekey.ValidateKeyName(name); err != nil {
		return "", fmt.Errorf("memkms: create key: %w", err)
	}
	ref := RefPrefix + name
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.keys[ref]; ok {
		return "", fmt.Errorf("memkms: create key %s: %w", name, rekey.ErrKeyExists)
	}
	k.keys[ref] = &memKey{versions: []*memVersion{newVersion()}}
	return ref, nil
}

// FindKey implements rekey.KeyFinder: the reference of the key
// CreateKey(name) made, or ErrKeyNotFound.
func (k *KMS) FindKey(ctx context.Context, name string) (string, error) {
	if err := k.fail(OpCurrent, name); err != nil {
		return "", err
	}
	ref := RefPrefix + name
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.key(ref); err != nil {
		return "", err
	}
	return ref, nil
}

// key returns the key for ref; the caller holds k.mu.
func (k *KMS) key(ref string) (*memKey, error) {
	key, ok := k.keys[ref]
	if !ok {
		return nil, fmt.Errorf("memkms: key %q: %w", ref, rekey.ErrKeyNotFound)
	}
	return key, nil
}

// version returns version v of key; the caller holds k.mu.
func (key *memKey) version(ref string, v int) (*memVersion, error) {
	if v < 1 || v > len(key.versions) {
		return nil, fmt.Errorf("memkms: key %q version %d: %w", ref, v, rekey.ErrVersionNotFound)
	}
	return key.versions[v-1], nil
}

// CurrentVersion implements rekey.KMS.
func (k *KMS) CurrentVersion(ctx context.Context, ref string) (int, error) {
	if err := k.fail(OpCurrent, ref); err != nil {
		return 0, err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	key, err := k.key(ref)
	if err != nil {
		return 0, err
	}
	return len(key.versions), nil
}

// RotateKey implements rekey.KMS.
func (k *KMS) RotateKey(ctx context.Context, ref string) (int, error) {
	if err := k.fail(OpRotate, ref); err != nil {
		return 0, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.key(ref)
	if err != nil {
		return 0, err
	}
	key.versions = append(key.versions, newVersion())
	return len(key.versions), nil
}

// usableVersion returns the AEAD of version v of ref if it may be used.
func (k *KMS) usableVersion(ref string, v int) (cipher.AEAD, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	key, err := k.key(ref)
	if err != nil {
		return nil, err
	}
	mv, err := key.version(ref, v)
	if err != nil {
		return nil, err
	}
	if mv.retired {
		return nil, fmt.Errorf("memkms: key %q version %d: %w", ref, v, rekey.ErrVersionDisabled)
	}
	return mv.aead, nil
}

func additionalData(ref string, v int) []byte {
	ad := make([]byte, 0, len("memkms/wrap/v1")+len(ref)+6)
	ad = append(ad, "memkms/wrap/v1"...)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(ref)))
	ad = append(ad, ref...)
	return binary.BigEndian.AppendUint32(ad, uint32(v))
}

// Wrap implements rekey.KMS. It returns ErrInvalidArgument for an empty
// plaintext or one longer than MaxPlaintext.
func (k *KMS) Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	if err := k.fail(OpWrap, ref); err != nil {
		return nil, err
	}
	return k.wrap(ref, version, plaintext)
}

func (k *KMS) wrap(ref string, version int, plaintext []byte) ([]byte, error) {
	aead, err := k.usableVersion(ref, version)
	if err != nil {
		return nil, err
	}
	if len(plaintext) == 0 || len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("memkms: wrap: %w: plaintext must be 1 to %d bytes, got %d", rekey.ErrInvalidArgument, MaxPlaintext, len(plaintext))
	}
	out := make([]byte, headerSize, headerSize+len(plaintext)+tagSize)
	out[0] = formatByte
	binary.BigEndian.PutUint32(out[1:5], uint32(version))
	rand.Read(out[5:headerSize])
	return aead.Seal(out, out[5:headerSize], plaintext, additionalData(ref, version)), nil
}

// Unwrap implements rekey.KMS.
func (k *KMS) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	if err := k.fail(OpUnwrap, ref); err != nil {
		return nil, err
	}
	return k.unwrap(ref, version, wrapped)
}

func (k *KMS) unwrap(ref string, version int, wrapped []byte) ([]byte, error) {
	k.mu.RLock()
	_, err := k.key(ref)
	k.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	if len(wrapped) < minWrapped || len(wrapped) > maxWrapped || wrapped[0] != formatByte {
		return nil, fmt.Errorf("memkms: unwrap: %w", rekey.ErrInvalidCiphertext)
	}
	if got := binary.BigEndian.Uint32(wrapped[1:5]); int64(got) != int64(version) {
		return nil, fmt.Errorf("memkms: unwrap: asked version %d, bytes name version %d: %w", version, got, rekey.ErrWrongVersion)
	}
	aead, err := k.usableVersion(ref, version)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, wrapped[5:headerSize], wrapped[headerSize:], additionalData(ref, version))
	if err != nil {
		return nil, fmt.Errorf("memkms: unwrap: %w", rekey.ErrInvalidCiphertext)
	}
	return pt, nil
}

// Rewrap implements rekey.Rewrapper.
func (k *KMS) Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	if err := k.fail(OpRewrap, ref); err != nil {
		return nil, err
	}
	return k.rewrap(ref, fromVersion, wrapped, toVersion)
}

func (k *KMS) rewrap(ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	pt, err := k.unwrap(ref, fromVersion, wrapped)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return k.wrap(ref, toVersion, pt)
}

// RewrapBatch implements rekey.BatchRewrapper. The call fails as a whole
// for an unknown ref or an unusable toVersion; other failures are per item.
func (k *KMS) RewrapBatch(ctx context.Context, ref string, toVersion int, items []rekey.RewrapItem) ([]rekey.RewrapResult, error) {
	if err := k.fail(OpRewrap, ref); err != nil {
		return nil, err
	}
	if _, err := k.usableVersion(ref, toVersion); err != nil {
		return nil, err
	}
	results := make([]rekey.RewrapResult, len(items))
	for i, it := range items {
		results[i].Wrapped, results[i].Err = k.rewrap(ref, it.Version, it.Wrapped, toVersion)
	}
	return results, nil
}

// RetireVersion implements rekey.VersionRetirer. Like the local backend, it
// refuses (ErrInvalidArgument) to retire the newest version: rotate first.
func (k *KMS) RetireVersion(ctx context.Context, ref string, version int) error {
	if err := k.fail(OpRetire, ref); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.key(ref)
	if err != nil {
		return err
	}
	mv, err := key.version(ref, version)
	if err != nil {
		return err
	}
	if version == len(key.versions) {
		return fmt.Errorf("memkms: retire key %q version %d: %w: it is the newest version; rotate first", ref, version, rekey.ErrInvalidArgument)
	}
	mv.retired = true
	return nil
}

// DeleteKey implements rekey.KeyDeleter: the key and every version of it
// are gone (its name may be created again). An unknown ref is nil.
func (k *KMS) DeleteKey(ctx context.Context, ref string) error {
	if err := k.fail(OpDelete, ref); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.keys[ref]; ok {
		for _, v := range key.versions {
			v.aead = nil
		}
		delete(k.keys, ref)
	}
	return nil
}

// DestroyVersion implements rekey.VersionRetirer. It returns
// ErrInvalidArgument for a version that is not retired.
func (k *KMS) DestroyVersion(ctx context.Context, ref string, version int) error {
	if err := k.fail(OpDestroy, ref); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.key(ref)
	if err != nil {
		return err
	}
	mv, err := key.version(ref, version)
	if err != nil {
		return err
	}
	if !mv.retired {
		return fmt.Errorf("memkms: destroy key %q version %d: %w: retire it first", ref, version, rekey.ErrInvalidArgument)
	}
	mv.aead = nil
	return nil
}

// Ping implements rekey.Pinger.
func (k *KMS) Ping(ctx context.Context) error {
	return k.fail(OpPing, "")
}

// MAC implements rekey.MACer: HMAC-SHA256 under a per-KMS random key and
// the purpose. It returns ErrInvalidArgument for an empty purpose.
func (k *KMS) MAC(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	if err := k.fail(OpMAC, ""); err != nil {
		return nil, err
	}
	if purpose == "" || strings.ContainsRune(purpose, 0) {
		return nil, fmt.Errorf("memkms: mac: %w: purpose must be non-empty text", rekey.ErrInvalidArgument)
	}
	// The purpose is NUL-terminated, which it cannot contain, so that
	// (purpose, data) pairs never collide.
	m := hmac.New(sha256.New, k.macKey)
	m.Write([]byte(purpose))
	m.Write([]byte{0})
	m.Write(data)
	return m.Sum(nil), nil
}

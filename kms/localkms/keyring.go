package localkms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rekeyhq/rekey"
)

// The keyring file is
//
//	magic "REKEYKR" | format 0x01 | key check value (16) | nonce (12) |
//	AES-256-GCM(master key, payload, additional data = the 36 header bytes)
//
// The key check value is the first 16 bytes of HMAC-SHA256(master key,
// "rekey keyring key check v1"). It tells a wrong master key (the check
// value differs) from a damaged file (it matches, but the payload does not
// authenticate) without trying to decrypt. The payload is the JSON of
// keyringData.
const (
	keyringMagic      = "REKEYKR"
	keyringFormat     = 0x01
	kcvSize           = 16
	keyringNonceSize  = 12
	keyringHeaderSize = len(keyringMagic) + 1 + kcvSize + keyringNonceSize
	keyringTagSize    = 16
	maxKeyringSize    = 64 << 20
	kcvLabel          = "rekey keyring key check v1"
)

// ErrWrongMasterKey means the keyring was written under another master key.
// The keyring file is left unchanged.
var ErrWrongMasterKey = errors.New("the master key does not match this keyring")

// ErrKeyringCorrupt means the keyring file is damaged or was modified: it
// is not a keyring, or it does not authenticate under a master key whose
// check value matches. The keyring file is left unchanged.
var ErrKeyringCorrupt = errors.New("the keyring file is corrupt or was modified")

// versionState is the state of a version in the keyring file. It is coarser
// than rekey.VersionState: the keyring only knows whether a version may be
// used, not why.
type versionState string

const (
	stateUsable    versionState = "usable"    // wraps and unwraps
	stateRetired   versionState = "retired"   // refuses both; material kept
	stateDestroyed versionState = "destroyed" // refuses both; material gone
)

// keyringData is the decrypted payload of the keyring file. Once installed
// as a Client's in-memory copy it is never modified; a change is applied to
// a fresh copy read from the file.
type keyringData struct {
	Keys map[string]*keyData `json:"keys"`
}

type keyData struct {
	Created  time.Time      `json:"created"`
	Versions []*versionData `json:"versions"` // Versions[i] is version i+1
}

type versionData struct {
	Version   int          `json:"version"`
	State     versionState `json:"state"`
	Material  []byte       `json:"material,omitempty"` // 32 bytes; absent once destroyed
	Created   time.Time    `json:"created"`
	Retired   time.Time    `json:"retired,omitzero"`
	Destroyed time.Time    `json:"destroyed,omitzero"`
	// Reserved is how many encryptions under this version processes have
	// reserved so far (see Client.reserve). It only grows.
	Reserved uint64 `json:"reserved"`

	aead cipher.AEAD // set for usable versions by prepare
	aad  []byte      // the wrap's additional data for this key and version
}

// keyCheckValue returns the key check value of master.
func keyCheckValue(master []byte) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte(kcvLabel))
	return m.Sum(nil)[:kcvSize]
}

func newGCM(key []byte) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic("localkms: " + err.Error()) // unreachable: keys are 32 bytes, checked on decode
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic("localkms: " + err.Error())
	}
	return aead
}

// decodeKeyring decrypts, parses and validates the bytes of a keyring file.
// Errors match ErrWrongMasterKey or ErrKeyringCorrupt, or report an
// unsupported format; they never contain key material. The result is ready
// to use (prepared).
func decodeKeyring(data, master []byte) (*keyringData, error) {
	if len(data) < len(keyringMagic) || string(data[:len(keyringMagic)]) != keyringMagic {
		return nil, fmt.Errorf("%w: it is not a rekey keyring file (no %q header)", ErrKeyringCorrupt, keyringMagic)
	}
	if len(data) < keyringHeaderSize+keyringTagSize {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrKeyringCorrupt, len(data))
	}
	if f := data[len(keyringMagic)]; f != keyringFormat {
		return nil, fmt.Errorf("unsupported keyring format %d (this rekey reads format %d): use a newer rekey", f, keyringFormat)
	}
	header := data[:keyringHeaderSize]
	kcv := header[len(keyringMagic)+1 : len(keyringMagic)+1+kcvSize]
	if subtle.ConstantTimeCompare(kcv, keyCheckValue(master)) != 1 {
		return nil, ErrWrongMasterKey
	}
	nonce := header[keyringHeaderSize-keyringNonceSize:]
	payload, err := newGCM(master).Open(nil, nonce, data[keyringHeaderSize:], header)
	if err != nil {
		return nil, fmt.Errorf("%w: it does not authenticate under the master key", ErrKeyringCorrupt)
	}
	defer clear(payload) // best effort: the decoder may have copied parts
	d, err := parsePayload(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyringCorrupt, err)
	}
	return d, nil
}

// parsePayload parses and validates the JSON payload. Its errors describe
// where the problem is, never the values (the payload holds key material).
func parsePayload(payload []byte) (*keyringData, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var d keyringData
	if err := dec.Decode(&d); err != nil {
		return nil, describeJSONError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the payload")
	}
	if d.Keys == nil {
		d.Keys = make(map[string]*keyData)
	}
	for name, k := range d.Keys {
		if err := validateKey(name, k); err != nil {
			zeroKeyring(&d)
			return nil, err
		}
	}
	d.prepare()
	return &d, nil
}

func describeJSONError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("payload is not valid JSON (at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("payload field %q has the wrong type", typ.Field)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("payload is truncated")
	}
	return errors.New("payload has an invalid or unknown field")
}

func validateKey(name string, k *keyData) error {
	if err := rekey.ValidateKeyName(name); err != nil {
		return fmt.Errorf("invalid key name %q", name)
	}
	if k == nil || len(k.Versions) == 0 {
		return fmt.Errorf("key %s has no versions", name)
	}
	if len(k.Versions) > maxVersion {
		return fmt.Errorf("key %s has too many versions", name)
	}
	for i, v := range k.Versions {
		switch {
		case v == nil || v.Version != i+1:
			return fmt.Errorf("key %s: entry %d is not version %d", name, i, i+1)
		case v.State != stateUsable && v.State != stateRetired && v.State != stateDestroyed:
			return fmt.Errorf("key %s version %d: unknown state %q", name, v.Version, v.State)
		case v.State == stateDestroyed && len(v.Material) != 0:
			return fmt.Errorf("key %s version %d: destroyed but still has key material", name, v.Version)
		case v.State != stateDestroyed && len(v.Material) != 32:
			return fmt.Errorf("key %s version %d: key material is %d bytes, want 32", name, v.Version, len(v.Material))
		case v.Reserved > MaxUsageLimit:
			return fmt.Errorf("key %s version %d: reserved count %d is beyond any usage limit", name, v.Version, v.Reserved)
		}
	}
	if last := k.Versions[len(k.Versions)-1]; last.State != stateUsable {
		return fmt.Errorf("key %s: the newest version %d is %s; it must be usable", name, last.Version, last.State)
	}
	return nil
}

// prepare builds the cipher of every usable version that lacks one, and
// drops that of the others.
func (d *keyringData) prepare() {
	for name, k := range d.Keys {
		for _, v := range k.Versions {
			if v.aad == nil {
				v.aad = wrapAAD(name, v.Version)
			}
			switch {
			case v.State != stateUsable:
				v.aead = nil
			case v.aead == nil:
				v.aead = newWrapAEAD(v.Material)
			}
		}
	}
}

// zeroKeyring overwrites the key material of d (best effort: the ciphers
// built from it keep their own expanded copies until collected).
func zeroKeyring(d *keyringData) {
	if d == nil {
		return
	}
	for _, k := range d.Keys {
		if k == nil {
			continue
		}
		for _, v := range k.Versions {
			if v != nil {
				clear(v.Material)
			}
		}
	}
}

// encodeKeyring marshals and encrypts d under master.
func encodeKeyring(d *keyringData, master []byte) ([]byte, error) {
	payload, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode keyring: %w", err)
	}
	defer clear(payload) // best effort: the encoder's buffers are not ours to zero
	return sealPayload(payload, master), nil
}

// sealPayload encrypts a payload into the bytes of a keyring file.
func sealPayload(payload, master []byte) []byte {
	out := make([]byte, keyringHeaderSize, keyringHeaderSize+len(payload)+keyringTagSize)
	copy(out, keyringMagic)
	out[len(keyringMagic)] = keyringFormat
	copy(out[len(keyringMagic)+1:], keyCheckValue(master))
	nonce := out[keyringHeaderSize-keyringNonceSize : keyringHeaderSize]
	rand.Read(nonce)
	header := bytes.Clone(out)
	return newGCM(master).Seal(out, nonce, payload, header)
}

// wrapAAD returns the additional data of a wrap under version v of the key
// named name: a domain tag, the length-prefixed name and the version.
func wrapAAD(name string, v int) []byte {
	ad := make([]byte, 0, len(wrapDomain)+2+len(name)+4)
	ad = append(ad, wrapDomain...)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(name)))
	ad = append(ad, name...)
	return binary.BigEndian.AppendUint32(ad, uint32(v))
}

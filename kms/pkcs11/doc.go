// Package pkcs11 is rekey's backend for hardware security modules and
// other tokens that speak PKCS#11 (Thales Luna, Entrust nShield, AWS
// CloudHSM, YubiHSM, SoftHSM2), through github.com/miekg/pkcs11. It needs a
// cgo build: without cgo, New fails with ErrNeedsCgo.
//
// Each version of a root key is an AES-256 secret key object on the token,
// generated there, sensitive and non-extractable, with CKA_LABEL = the key
// name and CKA_ID = "NAME/vN". The reference of a key is its name. Wrap and
// Unwrap run CKM_AES_GCM inside the token with a random 12-byte IV; a
// wrapped DEK is
//
//	0x01 | version (uint32, big endian) | IV (12) | GCM ciphertext and tag (16)
//
// with additional data "rekey/pkcs11/wrap/v1" | uint16 len(name) | name |
// uint32 version, so that bytes wrapped under one key or version never
// unwrap under another (ErrInvalidCiphertext), and bytes naming another
// version are refused before the token is asked (ErrWrongVersion). A token
// that chooses the IV itself (CloudHSM) is honoured: the IV it reports is
// the one stored.
//
// RetireVersion sets CKA_ENCRYPT and CKA_DECRYPT to false on the version's
// object, so the token itself refuses it for wrap and unwrap
// (CKR_KEY_FUNCTION_NOT_PERMITTED, reported as rekey.ErrVersionDisabled)
// in every process that uses it; the flags are modifiable on SoftHSM2 and on
// the HSMs above (PKCS#11 marks them modifiable), and a token that refuses
// the change makes RetireVersion fail, so the version stays pending
// retirement and says why. DestroyVersion deletes the object. Versions are
// numbered without gaps, so a missing object below the newest version is a
// destroyed one (rekey.ErrVersionDisabled), above it an unknown one
// (rekey.ErrVersionNotFound).
//
// Sessions are pooled (Config.MaxSessions) and the Client is safe for
// concurrent use. CreateKey and RotateKey are serialized within a process;
// across processes rekey's per-key lease keeps rotations of one key to one
// worker. Two objects with one CKA_ID (two processes creating one key at the
// same instant) are reported, never silently chosen between.
//
// Errors never carry the PIN or key material. A wrong PIN, a missing
// module, token or mechanism fail New with an error naming what to fix; a
// token removed or a session lost later gives an *rekey.UnreachableError
// (the middleware retries it), never a panic.
//
// Wraps are not counted against a usage limit as the local backend counts
// them: AES-GCM with random IVs is safe for 2^32 wraps per version, far
// beyond what a rotation period sees.
package pkcs11

import (
	"errors"
	"log/slog"
)

// MaxPlaintext is the largest plaintext Wrap accepts.
const MaxPlaintext = 4096

// ErrNeedsCgo is what New returns in a build without cgo.
var ErrNeedsCgo = errors.New("pkcs11: this rekey was built without cgo, and the pkcs11 backend needs a cgo build (CGO_ENABLED=1 and a C compiler): rebuild it, or use another backend")

// Config configures a Client.
type Config struct {
	// Module is the path of the PKCS#11 library. Required.
	Module string
	// TokenLabel selects the token by label; Slot by slot id. Exactly one
	// is required.
	TokenLabel string
	Slot       *uint
	// PIN is the user PIN. Required (unless the token needs no login,
	// which rekey does not support).
	PIN string
	// PINSource says where the PIN came from ("the environment variable
	// REKEY_PKCS11_PIN"), for the message of a wrong PIN. Optional.
	PINSource string
	// MaxSessions bounds the sessions the Client opens (one more is held
	// to keep the login); 0 means DefaultMaxSessions.
	MaxSessions int
	// Logger receives key life-cycle events; nil discards them.
	Logger *slog.Logger
}

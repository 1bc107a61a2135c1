// Package rekey is envelope encryption whose root keys rotate themselves.
//
// An application opens rekey with package setup (the same configuration
// the rekey command uses) and works with the Keyring it returns:
//
//	sys, err := setup.Open(ctx, setup.Options{}) // github.com/rekeyhq/rekey/setup
//	defer sys.Close()
//	aead := sys.Keyring.AEAD("payments")          // bound to one root key
//	ct, err := aead.Encrypt(ctx, plaintext, associatedData)
//	pt, err := aead.Decrypt(ctx, ct, associatedData)
//
//	dk, err := sys.Keyring.GenerateDataKey(ctx, "payments") // keep dk.Wrapped yourself
//	pt, err = sys.Keyring.DecryptDataKey(ctx, "payments", dk.Wrapped)
//
// What an application needs from this package: Keyring (AEAD,
// GenerateDataKey, DecryptDataKey, NewDEK, OpenDEK, Seal, Open,
// SealStream, OpenStream), AEAD, DataKey, and the sentinel errors it
// matches with errors.Is (ErrWrongKey, ErrInvalidCiphertext,
// ErrKeyNotFound, ErrVersionDisabled, ...). A go-cloud application uses
// package rekeysecrets instead (rekey://KEY URLs).
//
// The rest is the domain the other packages share: root keys and their
// versions, DEKs, policies and persisted rotations, the audit event, the
// rules every part must agree on (Rotation.Progress, DecideVersion), and
// the two interfaces everything plugs into — KMS (where root keys live,
// with optional capabilities resolved by CapabilitiesOf) and Store (where
// the state lives). The package imports only the standard library.
// Backends live in kms/..., stores in store/..., the rotation engine in
// rotation, the daemon's loop in worker, and the command line in cmd/rekey.
package rekey

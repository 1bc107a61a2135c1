// Package rekey holds the domain of root-key rotation for envelope
// encryption: root keys and their versions, data-encryption keys (DEKs)
// wrapped under them, rotation policies and persisted rotations, the audit
// event, and the two interfaces everything else plugs into — KMS (where root
// keys live) and Store (where the state lives).
//
// The package imports only the standard library. Backends live in kms/...,
// stores in store/..., the rotation engine in rotation, and the command line
// in cmd/rekey.
//
// Applications use Keyring: it creates and opens DEKs and seals and opens
// data in a streaming, chunked envelope that names the DEK it was sealed
// under, so that rotating the root key never touches the data itself.
package rekey

package rekey

import "context"

// NativeRewrapper is a KMS that can re-wrap ciphertexts in the provider's
// own format made outside rekey, by the application with the provider's
// SDK (for AWS KMS: a CiphertextBlob from GenerateDataKey or Encrypt),
// without rekey's encryption context and without knowing which version
// wrapped them. A DEK source declared with a native format (issue 11) is
// re-wrapped through it: the application keeps decrypting with its SDK,
// unchanged.
type NativeRewrapper interface {
	// RewrapNative re-wraps wrapped, made under any version of the key
	// ref with the encryption context encryptionContext (nil: none), under
	// toVersion with the same context, in one backend call; the plaintext
	// never leaves the backend. It returns the new ciphertext and the
	// backend version that wrapped the old one, or 0 when the backend
	// cannot tell (one provider key whose material the provider picks).
	// Errors: ErrWrongVersion when wrapped is under a provider key that
	// is no version of ref (nothing is returned: the row is not this
	// key's), ErrInvalidCiphertext for bytes that do not decrypt (corrupt,
	// or another encryption context), ErrVersionDisabled when toVersion
	// cannot be used, ErrKeyNotFound / ErrVersionNotFound, or a transient
	// error.
	RewrapNative(ctx context.Context, ref string, wrapped []byte, encryptionContext map[string]string, toVersion int) (rewrapped []byte, fromVersion int, err error)
}

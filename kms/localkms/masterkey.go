package localkms

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rekeyhq/rekey/internal/fileutil"
)

// MasterKeySize is the size of the master key in bytes.
const MasterKeySize = 32

// maxMasterKeyFile bounds what is read from a master key file: the key is
// 44 characters of base64 and a newline.
const maxMasterKeyFile = 1024

// ParseMasterKey decodes a master key given as text (REKEY_MASTER_KEY): 32
// bytes in standard base64 (44 characters, padded) or unpadded base64url
// (43 characters). Surrounding white space is ignored. The error says what is
// wrong without repeating the value. The caller owns, and should zero, the
// returned key.
func ParseMasterKey(s string) ([]byte, error) {
	b := []byte(s)
	defer clear(b) // best effort: s itself cannot be zeroed
	return parseMasterKey(b)
}

// parseMasterKey is ParseMasterKey on bytes, so that a key read from a file
// can be decoded and its buffer zeroed.
func parseMasterKey(text []byte) ([]byte, error) {
	text = bytes.TrimSpace(text)
	if len(text) == 0 {
		return nil, errors.New("the master key is empty: want 32 random bytes in base64")
	}
	key := make([]byte, max(base64.StdEncoding.DecodedLen(len(text)), base64.RawURLEncoding.DecodedLen(len(text))))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
		n, err := enc.Decode(key, text)
		if err != nil {
			continue
		}
		if n != MasterKeySize {
			clear(key)
			return nil, fmt.Errorf("the master key decodes to %d bytes, want %d (44 characters of base64)", n, MasterKeySize)
		}
		return key[:n], nil
	}
	clear(key)
	return nil, fmt.Errorf("the master key is not valid base64 (%d characters; want 44 characters of standard base64 or 43 of unpadded base64url encoding %d random bytes)", len(text), MasterKeySize)
}

// CreateMasterKeyFile writes a new random master key to path, base64 and a
// newline, with mode 0600. It refuses to overwrite an existing file, and
// syncs the file and its directory before returning.
func CreateMasterKeyFile(path string) (err error) {
	key := make([]byte, MasterKeySize)
	defer clear(key)
	rand.Read(key)
	text := make([]byte, base64.StdEncoding.EncodedLen(len(key))+1)
	defer clear(text)
	base64.StdEncoding.Encode(text, key)
	text[len(text)-1] = '\n'

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create master key file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	if _, err := f.Write(text); err != nil {
		return fmt.Errorf("write master key file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync master key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close master key file %s: %w", path, err)
	}
	return fileutil.SyncDir(filepath.Dir(path))
}

// CheckPrivate returns nil if path is a regular file that neither group nor
// others may read, write or execute (mode&0o077 == 0). Otherwise the error
// names the file and, for a permission problem, the fix (chmod 600 path). A
// missing file gives an error matching fs.ErrNotExist.
func CheckPrivate(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is %w", path, errNotRegular)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is accessible to group or others (mode %04o): run chmod 600 %s", path, perm, path)
	}
	return nil
}

// errNotRegular is what CheckPrivate reports for a path that is a directory,
// a device, ...
var errNotRegular = errors.New("not a regular file")

// fixMasterKeyFile is the advice for a master key file that is damaged.
const fixMasterKeyFile = "restore master.key from a backup, or set REKEY_MASTER_KEY to the master key (the keyring opens only under the key it was made with)"

// readMasterKeyFile checks that path is private and returns the key in it.
func readMasterKeyFile(path string) ([]byte, error) {
	if err := CheckPrivate(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("master key file %w: restore it from backup, or set REKEY_MASTER_KEY to the master key (the keyring opens only under the key it was made with)", err)
		}
		if errors.Is(err, errNotRegular) {
			return nil, fmt.Errorf("master key file: %w: remove what is there and %s", err, fixMasterKeyFile)
		}
		return nil, fmt.Errorf("master key file: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("master key file: %w", err)
	}
	defer f.Close()
	text, err := io.ReadAll(io.LimitReader(f, maxMasterKeyFile+1))
	defer clear(text)
	if err != nil {
		return nil, fmt.Errorf("master key file %s: %w", path, err)
	}
	if len(text) > maxMasterKeyFile {
		return nil, fmt.Errorf("master key file %s is larger than %d bytes: it does not hold a master key", path, maxMasterKeyFile)
	}
	key, err := parseMasterKey(text)
	if err != nil {
		return nil, fmt.Errorf("master key file %s: %w: %s", path, err, fixMasterKeyFile)
	}
	return key, nil
}

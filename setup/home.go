package setup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/internal/fileutil"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

// EnvMasterKey is the environment variable holding the local backend's
// master key (base64 of 32 bytes), read instead of a master key file.
const EnvMasterKey = "REKEY_MASTER_KEY"

// embeddedFiles are the files of the embedded default in its home.
var embeddedFiles = []string{"rekey.db", "keyring", "master.key"}

// masterKeyFromEnv reads REKEY_MASTER_KEY, if set.
func masterKeyFromEnv(getenv func(string) string) ([]byte, error) {
	s := getenv(EnvMasterKey)
	if s == "" {
		return nil, nil
	}
	k, err := localkms.ParseMasterKey(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvMasterKey, err)
	}
	return k, nil
}

// InitHome makes sure the embedded default exists in home: on first use it
// creates the directory (0700), the master key file (0600, unless
// REKEY_MASTER_KEY is set), the keyring (0600), the SQLite database (0600)
// and rekey.yaml. It refuses to create anything beside a partial setup (a
// database without its keyring, say): that would strand the DEKs. Two
// processes creating the same home at once do not collide: one creates it
// (holding init.lock in the home), the other waits and finds it complete.
// It returns the files it created (none when the home was complete).
// getenv nil means os.Getenv.
func InitHome(ctx context.Context, home string, getenv func(string) string) ([]string, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	mk, err := masterKeyFromEnv(getenv)
	if err != nil {
		return nil, err
	}
	present, missing, err := scanHome(home, mk != nil)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(home, config.FileName)
	if _, err := os.Stat(cfgPath); err == nil && len(missing) == 0 {
		return nil, nil // complete: rekey.yaml is written last
	}
	// Another process may be creating this home right now (two commands
	// run at once on first use): every creator holds init.lock while it
	// creates the files, so wait for it and look again. A home with some
	// files and no init.lock was never being created by this rekey:
	// refuse at once, without adding a lock file to it.
	lockPath := filepath.Join(home, initLockName)
	if len(present) == 0 {
		if err := os.MkdirAll(home, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w (is the parent directory writable?)", home, err)
		}
	} else if _, err := os.Stat(lockPath); err != nil {
		if len(missing) == 0 {
			return writeConfigIfMissing(cfgPath)
		}
		return nil, partialHomeError(home, present, missing)
	}
	unlock, err := fileutil.Lock(ctx, lockPath)
	if err != nil {
		return nil, fmt.Errorf("wait for another rekey creating %s: %w", home, err)
	}
	defer unlock()
	if present, missing, err = scanHome(home, mk != nil); err != nil {
		return nil, err
	}
	if len(missing) == 0 {
		// The other process created it while we waited.
		return writeConfigIfMissing(cfgPath)
	}
	if len(present) > 0 {
		return nil, partialHomeError(home, present, missing)
	}
	_, cfgErr := os.Stat(cfgPath)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", home, err)
	}
	var created []string
	mkFile := filepath.Join(home, "master.key")
	if mk == nil {
		if err := localkms.CreateMasterKeyFile(mkFile); err != nil {
			return nil, err
		}
		created = append(created, mkFile)
	}
	kr, err := localkms.New(ctx, localkms.Config{Keyring: filepath.Join(home, "keyring"), MasterKeyFile: mkFile, MasterKey: mk, Create: true})
	if err != nil {
		return nil, err
	}
	if err := kr.Close(); err != nil {
		return nil, err
	}
	created = append(created, filepath.Join(home, "keyring"))
	s, err := sqlitestore.Open(ctx, sqlitestore.Config{Path: filepath.Join(home, "rekey.db"), Create: true})
	if err != nil {
		return nil, err
	}
	if err := s.Close(); err != nil {
		return nil, err
	}
	created = append(created, filepath.Join(home, "rekey.db"))
	if cfgErr != nil {
		if err := writeFile0600(cfgPath, config.DefaultYAML()); err != nil {
			return nil, err
		}
		created = append(created, cfgPath)
	}
	return created, nil
}

// initLockName is the lock file InitHome holds in a home while it creates
// its files.
const initLockName = "init.lock"

// scanHome lists which of the embedded default's files home holds.
func scanHome(home string, masterKeyFromEnv bool) (present, missing []string, err error) {
	for _, f := range embeddedFiles {
		if f == "master.key" && masterKeyFromEnv {
			continue
		}
		if _, err := os.Stat(filepath.Join(home, f)); err == nil {
			present = append(present, f)
		} else if errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, f)
		} else {
			return nil, nil, err
		}
	}
	return present, missing, nil
}

func partialHomeError(home string, present, missing []string) error {
	return fmt.Errorf("%s holds %s but not %s: rekey will not create new key files beside existing data (DEKs wrapped under the old keyring would become unreadable); restore the missing file(s) from backup, or use another --dir / $REKEY_HOME; nothing was changed",
		home, strings.Join(present, ", "), strings.Join(missing, ", "))
}

// writeConfigIfMissing writes the default rekey.yaml into a complete home
// that lacks it, and returns it as created (nil when it was there, or
// another process wrote it first).
func writeConfigIfMissing(cfgPath string) ([]string, error) {
	if _, err := os.Stat(cfgPath); err == nil {
		return nil, nil
	}
	if err := writeFile0600(cfgPath, config.DefaultYAML()); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, nil
		}
		return nil, err
	}
	return []string{cfgPath}, nil
}

func writeFile0600(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

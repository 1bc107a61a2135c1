// Package rekeysecrets is a gocloud.dev/secrets driver over rekey: an
// application that already uses go-cloud's *secrets.Keeper switches to
// rekey-managed root keys with one blank import and one URL.
//
//	import _ "github.com/rekeyhq/rekey/rekeysecrets"
//
//	keeper, err := secrets.OpenKeeper(ctx, "rekey://payments?home=/var/lib/rekey")
//	defer keeper.Close()
//	ct, err := keeper.Encrypt(ctx, plaintext)
//
// # URLs
//
// The scheme is "rekey" (Scheme). The URL's host is the name of the root
// key the keeper is bound to; it must already exist (rekey key create, or
// Keyring.CreateKey). The query says where rekey's configuration is, as
// setup.Open resolves it:
//
//   - config=PATH: the configuration file (as --config);
//   - home=DIR: the embedded default in DIR, as made by rekey init;
//   - neither: exactly as the rekey command resolves it ($REKEY_CONFIG,
//     ./rekey.yaml, the embedded default in $REKEY_HOME).
//
// Any other query parameter, both config and home, a path, a port or user
// information in the URL is an error naming what is wrong. The opener never
// creates a configuration: a home that does not exist is an error. The
// local backend's master key comes from $REKEY_MASTER_KEY or the key file,
// as for the rekey command.
//
// A URLOpener opens one setup.System per distinct configuration, lazily, and
// shares it among the keepers it opened for that configuration; the System
// is closed when the last of those keepers is closed. Keepers made with
// OpenKeeper over an application's own Keyring never close anything.
//
// # Storage and rotation
//
// Every Encrypt creates one DEK of the root key and stores it (wrapped) in
// rekey's store, exactly as Keyring.Seal does: the ciphertext holds only the
// DEK's id. Rotations re-wrap stored DEKs, so old ciphertexts keep
// decrypting after the root key rotates; the store grows by one row per
// Encrypt. Decrypt refuses a ciphertext made under another root key, even
// one in the same store (go-cloud allows drivers to accept it; rekey does
// not). go-cloud's API has no associated data: none is used.
//
// # Errors
//
// Errors keep rekey's error in their chain (errors.Is(err,
// rekey.ErrWrongKey) holds through the *secrets.Keeper's error), and
// Keeper.ErrorAs reaches any error type in it (*rekey.UnreachableError,
// *rekey.DEKError). gcerrors.Code(err) is:
//
//   - NotFound: the root key does not exist (rekey.ErrKeyNotFound), or the
//     ciphertext names a DEK that is not in the store (rekey.ErrDEKNotFound,
//     a deleted DEK or another store's ciphertext);
//   - InvalidArgument: a malformed, truncated or tampered ciphertext
//     (rekey.ErrInvalidCiphertext), another root key's ciphertext
//     (rekey.ErrWrongKey), bad input (rekey.ErrInvalidArgument);
//   - FailedPrecondition: the key version is retired, destroyed or
//     compromised (rekey.ErrVersionDisabled), or no longer active;
//   - ResourceExhausted: the active version reached its safe encryption
//     limit (rekey.ErrUsageLimit): rotate the key;
//   - Unimplemented: the backend lacks the operation (rekey.ErrUnsupported);
//   - Canceled, DeadlineExceeded: the context ended;
//   - Unknown: anything else, including a backend or store that cannot be
//     reached (go-cloud has no "unavailable" code: test
//     rekey.IsTransient(err), or ErrorAs into *rekey.UnreachableError).
package rekeysecrets

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"sync"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/driver"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// Scheme is the URL scheme this package registers with
// secrets.DefaultURLMux.
const Scheme = "rekey"

// Query parameters of a rekey:// URL.
const (
	paramConfig = "config"
	paramHome   = "home"
)

// defaultActor names the keepers' DEK creations in the audit trail when
// URLOpener.Options.Actor is empty.
const defaultActor = "rekeysecrets"

func init() {
	secrets.DefaultURLMux().RegisterKeeper(Scheme, &URLOpener{})
}

// URLOpener opens rekey:// URLs (see the package documentation). It opens
// one setup.System per distinct configuration and shares it among the
// keepers it opened; the System is closed when the last of them is closed.
// The zero value resolves the configuration as the rekey command does. It
// is safe for concurrent use; it must not be copied after first use.
type URLOpener struct {
	// Options are the base options of every System the opener opens:
	// ConfigPath and Home come from the URL and NoCreate is always set.
	// Set Getenv, Logger, Registerer or Now here to inject them. A
	// Registerer shared by Systems of two configurations makes the second
	// open fail (its metrics are already registered).
	Options setup.Options

	mu      sync.Mutex
	systems map[location]*sharedSystem
}

// location is where one configuration is: at most one of its fields is
// set, both empty meaning "resolve from the environment".
type location struct {
	configPath string
	home       string
}

// sharedSystem is a System and the number of open keepers using it.
type sharedSystem struct {
	sys  *setup.System
	refs int
}

// OpenKeeperURL opens the keeper of the root key named by u's host, after
// opening (or reusing) the System of u's configuration. It fails with an
// error matching rekey.ErrInvalidArgument for a malformed URL (naming the
// offending part), setup.Open's error when the configuration cannot be
// opened, and an error matching rekey.ErrKeyNotFound when the key does not
// exist. Nothing stays open after an error.
func (o *URLOpener) OpenKeeperURL(ctx context.Context, u *url.URL) (*secrets.Keeper, error) {
	key, loc, err := parseURL(u)
	if err != nil {
		return nil, fmt.Errorf("open keeper %s://%s: %w", Scheme, u.Host, err)
	}
	sys, err := o.acquire(ctx, loc)
	if err != nil {
		return nil, fmt.Errorf("open keeper %s://%s: %w", Scheme, key, err)
	}
	// Check the key now, so that a misspelt name fails at open rather than
	// at the first Encrypt.
	if _, err := sys.Store.GetKey(ctx, key); err != nil {
		err = fmt.Errorf("open keeper %s://%s (configuration %s): %w", Scheme, key, sys.ConfigPath, err)
		if cerr := o.release(loc); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	k := &keeper{aead: sys.Keyring.AEAD(key), release: func() error { return o.release(loc) }}
	return secrets.NewKeeper(k), nil
}

// parseURL returns the key name and the configuration's location of a
// rekey:// URL, or an error matching rekey.ErrInvalidArgument naming what
// is wrong.
func parseURL(u *url.URL) (string, location, error) {
	switch {
	case u.Opaque != "":
		return "", location{}, rekey.Invalidf("want %s://KEYNAME?config=PATH or ?home=DIR, not %s:%s", Scheme, Scheme, u.Opaque)
	case u.User != nil:
		return "", location{}, rekey.Invalidf("user information is not allowed in a %s URL", Scheme)
	case u.Port() != "":
		return "", location{}, rekey.Invalidf("a port is not allowed in a %s URL (the host is the key name)", Scheme)
	case u.Path != "" && u.Path != "/":
		return "", location{}, rekey.Invalidf("path %q is not allowed in a %s URL (the host is the key name)", u.Path, Scheme)
	case u.Fragment != "":
		return "", location{}, rekey.Invalidf("a fragment is not allowed in a %s URL", Scheme)
	}
	key := u.Hostname()
	if key == "" {
		return "", location{}, rekey.Invalidf("no key name: want %s://KEYNAME", Scheme)
	}
	if err := rekey.ValidateKeyName(key); err != nil {
		return "", location{}, err
	}
	q := u.Query()
	var unknown []string
	for p, vs := range q {
		switch {
		case p != paramConfig && p != paramHome:
			unknown = append(unknown, p)
		case len(vs) != 1:
			return "", location{}, rekey.Invalidf("query parameter %q given %d times, want once", p, len(vs))
		case vs[0] == "":
			return "", location{}, rekey.Invalidf("query parameter %q is empty", p)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return "", location{}, rekey.Invalidf("unknown query parameter(s) %q: want %q or %q", unknown, paramConfig, paramHome)
	}
	if q.Has(paramConfig) && q.Has(paramHome) {
		return "", location{}, rekey.Invalidf("give %q or %q, not both", paramConfig, paramHome)
	}
	// Absolute paths, so that two spellings of one directory share a
	// System.
	var loc location
	for p, dst := range map[string]*string{paramConfig: &loc.configPath, paramHome: &loc.home} {
		if v := q.Get(p); v != "" {
			abs, err := filepath.Abs(v)
			if err != nil {
				return "", location{}, fmt.Errorf("query parameter %q: %w", p, err)
			}
			*dst = abs
		}
	}
	return key, loc, nil
}

// acquire returns the System at loc, opening it if no keeper holds it, and
// counts one more keeper on it. The mutex is held while opening so that
// two concurrent first opens of one configuration open it once.
func (o *URLOpener) acquire(ctx context.Context, loc location) (*setup.System, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s, ok := o.systems[loc]; ok {
		s.refs++
		return s.sys, nil
	}
	opts := o.Options
	opts.ConfigPath, opts.Home, opts.NoCreate = loc.configPath, loc.home, true
	if opts.Actor == "" {
		opts.Actor = defaultActor
	}
	sys, err := setup.Open(ctx, opts)
	if err != nil {
		return nil, err
	}
	if o.systems == nil {
		o.systems = make(map[location]*sharedSystem)
	}
	o.systems[loc] = &sharedSystem{sys: sys, refs: 1}
	return sys, nil
}

// release counts one keeper less on the System at loc and closes the System
// when it was the last, returning the error of System.Close.
func (o *URLOpener) release(loc location) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, ok := o.systems[loc]
	if !ok {
		return nil
	}
	s.refs--
	if s.refs > 0 {
		return nil
	}
	delete(o.systems, loc)
	return s.sys.Close()
}

// OpenKeeper returns a keeper bound to the root key called key of an
// application's own Keyring (from setup.Open, say). The key is looked up at
// the first call: an unknown name makes every call fail with NotFound.
// Closing the keeper closes nothing of kr.
func OpenKeeper(kr *rekey.Keyring, key string) *secrets.Keeper {
	return secrets.NewKeeper(&keeper{aead: kr.AEAD(key)})
}

// keeper is the driver.Keeper over one root key's AEAD.
type keeper struct {
	aead *rekey.AEAD
	// release gives back the shared System, nil when the keeper does not
	// own it. It runs once.
	release func() error
	once    sync.Once
}

var _ driver.Keeper = (*keeper)(nil)

// Encrypt seals plaintext under a new (stored) DEK of the keeper's key.
func (k *keeper) Encrypt(ctx context.Context, plaintext []byte) ([]byte, error) {
	return k.aead.Encrypt(ctx, plaintext, nil)
}

// Decrypt opens a ciphertext made by Encrypt under the keeper's key; another
// key's ciphertext fails with an error matching rekey.ErrWrongKey.
func (k *keeper) Decrypt(ctx context.Context, ciphertext []byte) ([]byte, error) {
	return k.aead.Decrypt(ctx, ciphertext, nil)
}

// Close gives back the shared System, if the keeper holds one.
func (k *keeper) Close() error {
	var err error
	k.once.Do(func() {
		if k.release != nil {
			err = k.release()
		}
	})
	return err
}

// ErrorAs finds the first error in err's chain that matches target (any
// error type of rekey's, such as *rekey.UnreachableError).
func (k *keeper) ErrorAs(err error, target any) bool { return errors.As(err, target) }

// ErrorCode maps rekey's errors to go-cloud's codes.
func (k *keeper) ErrorCode(err error) gcerrors.ErrorCode { return errorCode(err) }

// errorCode is the one mapping of rekey's errors to go-cloud's codes; the
// package documentation lists it.
func errorCode(err error) gcerrors.ErrorCode {
	switch {
	case err == nil:
		return gcerrors.OK
	case errors.Is(err, context.Canceled):
		return gcerrors.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return gcerrors.DeadlineExceeded
	case errors.Is(err, rekey.ErrKeyNotFound), errors.Is(err, rekey.ErrDEKNotFound), errors.Is(err, rekey.ErrVersionNotFound):
		return gcerrors.NotFound
	case errors.Is(err, rekey.ErrInvalidCiphertext), errors.Is(err, rekey.ErrWrongKey),
		errors.Is(err, rekey.ErrWrongVersion), errors.Is(err, rekey.ErrInvalidArgument):
		return gcerrors.InvalidArgument
	case errors.Is(err, rekey.ErrVersionDisabled), errors.Is(err, rekey.ErrVersionNotActive):
		return gcerrors.FailedPrecondition
	case errors.Is(err, rekey.ErrUsageLimit):
		return gcerrors.ResourceExhausted
	case errors.Is(err, rekey.ErrUnsupported):
		return gcerrors.Unimplemented
	default:
		return gcerrors.Unknown
	}
}

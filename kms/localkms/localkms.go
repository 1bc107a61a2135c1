// Package localkms is rekey's embedded default backend: root keys kept in a
// keyring file on the local machine, encrypted under a master key.
//
// The keyring file is shared by every rekey process on the machine (the
// daemon, the CLI, an application using the library). Writing it from a
// stale copy could drop a version that DEKs are wrapped under, so every
// change (CreateKey, RotateKey, RetireVersion, DestroyVersion, and the
// reservation of encryption counts) takes an exclusive file lock on
// "<keyring>.lock" (flock; LockFileEx on Windows), re-reads the file,
// applies the change and replaces the file atomically (temporary file,
// fsync, rename, fsync of the directory): internal/fileutil.
// Between changes a Client works from an in-memory copy, which it re-reads
// when asked about a key or version it does not know, on every
// CurrentVersion, and at most every second while in use (so that a version
// another process retired or destroyed is refused here too).
//
// Wrapped DEKs are
//
//	0x01 | version (uint32, big endian) | nonce (12) | AES-256-GCM ciphertext and tag
//
// with additional data "rekey/local/wrap/v1" | uint16 len(name) | name |
// uint32 version, so that bytes wrapped under one key or version never
// unwrap under another.
//
// Each version counts its encryptions. Counts are reserved in blocks
// (Config.CounterBlock) recorded in the keyring before they are used, so
// that no crash and no number of processes can make a version encrypt more
// than Config.UsageLimit times (default 2^30, far below the 2^32 bound for
// AES-GCM with random nonces); past it Wrap returns rekey.ErrUsageLimit.
//
// The master key should live elsewhere in production (REKEY_MASTER_KEY from
// a secret manager), or use a KMS or HSM backend; a master key file next to
// the keyring protects the keys only as well as the machine's file
// permissions do. Key material is zeroed after use where the program holds
// it (best effort: Go may have copied it, and ciphers keep their own
// expanded keys), and never appears in an error or a log record.
package localkms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/fileutil"
)

const (
	// DefaultUsageLimit is the default of Config.UsageLimit.
	DefaultUsageLimit = 1 << 30
	// MaxUsageLimit is the largest Config.UsageLimit accepted: the bound for
	// AES-GCM with random 96-bit nonces.
	MaxUsageLimit = 1 << 32
	// DefaultCounterBlock is the default of Config.CounterBlock.
	DefaultCounterBlock = 1 << 16
	// MaxPlaintext is the largest plaintext Wrap accepts.
	MaxPlaintext = 4096

	wrapFormat    = 0x01
	wrapDomain    = "rekey/local/wrap/v1"
	wrapNonceSize = 12
	wrapTagSize   = 16
	wrapHeader    = 1 + 4
	minWrapped    = wrapHeader + wrapNonceSize + 1 + wrapTagSize
	maxWrapped    = wrapHeader + wrapNonceSize + MaxPlaintext + wrapTagSize
	maxVersion    = math.MaxInt32 // fits the wrap's uint32 on every platform
	macInfoPrefix = "rekey/local/mac/"
	serviceName   = "kms:local"

	// defaultRefreshEvery is how often a Client in use re-reads the keyring
	// on its own.
	defaultRefreshEvery = time.Second
)

// Config configures a Client.
type Config struct {
	// Keyring is the path of the keyring file. Required.
	Keyring string
	// MasterKeyFile is the path of the file holding the master key (see
	// CreateMasterKeyFile). It must not be accessible to group or others.
	// Used when MasterKey is empty.
	MasterKeyFile string
	// MasterKey, if set, is the master key itself (REKEY_MASTER_KEY, decoded
	// by the caller with ParseMasterKey) and MasterKeyFile is ignored. New
	// copies it; the caller may zero it afterwards.
	MasterKey []byte
	// Create makes New create an empty keyring (and its directory, 0700) if
	// the file does not exist. An existing file is never replaced.
	Create bool
	// UsageLimit is how many encryptions one version may do, across all
	// processes and restarts. 0 means DefaultUsageLimit; at most
	// MaxUsageLimit.
	UsageLimit uint64
	// CounterBlock is the most encryption counts a process reserves in the
	// keyring at a time: its first reservation for a version is 1 count
	// (or what one RewrapBatch needs), each next one twice the last (or
	// what the batch needs), up to CounterBlock, so that a short
	// process (one CLI call) reserves about what it uses and a long one
	// rarely writes the file. Counts reserved and not used are given back
	// by Close when no other process reserved after them, and lost
	// otherwise (the process was killed): the count then reads higher
	// than the wraps done, never lower. 0 means DefaultCounterBlock.
	CounterBlock uint64
	// KeyLimit, if set, returns the usage limit of the key with reference
	// ref (rekey's max_encryptions for it; 0 means none): reservations
	// stop there, below UsageLimit, and Wrap past it returns a
	// *rekey.UsageLimitError. It is called once per reservation, before
	// the keyring's lock is taken.
	KeyLimit func(ctx context.Context, ref string) (int64, error)
	// LockTimeout bounds the wait for the keyring's lock file when another
	// process holds it; then the call fails with ErrKeyringLocked. 0 means
	// DefaultLockTimeout.
	LockTimeout time.Duration
	// Logger receives key life-cycle events; nil discards them.
	Logger *slog.Logger
	// Now is the clock for the times recorded in the keyring; nil means
	// time.Now.
	Now func() time.Time
}

// Client is a local keyring. It is safe for concurrent use by many
// goroutines, and several Clients in one or more processes may share one
// keyring file.
type Client struct {
	path         string
	lockPath     string
	lockTimeout  time.Duration
	masterHint   string // where the master key came from, for error messages
	usageLimit   uint64
	counterBlock uint64
	keyLimit     func(ctx context.Context, ref string) (int64, error)
	log          *slog.Logger
	now          func() time.Time
	refreshEvery time.Duration
	started      time.Time // origin of loadedAt's monotonic clock

	// fileMu serializes reading the keyring into memory and changing it,
	// so that a slower read never replaces a newer one.
	fileMu sync.Mutex
	closed atomic.Bool

	mu     sync.RWMutex
	master []byte       // guarded by mu; zeroed by Close
	ring   *keyringData // guarded by mu; never modified once installed

	loadedAt atomic.Int64 // nanoseconds after started of the last re-read

	countMu  sync.Mutex
	counters map[versionRef]*countBlock // guarded by countMu
}

type versionRef struct {
	ref     string
	version int
}

// countBlock is the part of a version's reserved encryption counts this
// Client may still use: next up to (not including) limit; size is how
// many the reservation asked for (the next one asks for twice as many).
type countBlock struct{ next, limit, size uint64 }

var (
	_ rekey.KMS            = (*Client)(nil)
	_ rekey.Rewrapper      = (*Client)(nil)
	_ rekey.BatchRewrapper = (*Client)(nil)
	_ rekey.VersionRetirer = (*Client)(nil)
	_ rekey.Pinger         = (*Client)(nil)
	_ rekey.MACer          = (*Client)(nil)
	_ rekey.UsageCounter   = (*Client)(nil)
)

var errClosed = errors.New("localkms: the client is closed")

// New opens the keyring cfg.Keyring with the master key from cfg (creating
// an empty keyring if it is missing and cfg.Create is set). It refuses a
// keyring or master key file that group or others may access, a master key
// that does not match the keyring (ErrWrongMasterKey) and a damaged keyring
// (ErrKeyringCorrupt); in no case is the file changed.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Keyring == "" {
		return nil, errors.New("localkms: no keyring file configured (keyring)")
	}
	limit, block := cfg.UsageLimit, cfg.CounterBlock
	if limit == 0 {
		limit = DefaultUsageLimit
	}
	if limit > MaxUsageLimit {
		return nil, fmt.Errorf("localkms: usage limit %d is above %d, the safe bound for AES-GCM with random nonces", limit, uint64(MaxUsageLimit))
	}
	if block == 0 {
		block = DefaultCounterBlock
	}
	block = min(block, limit)

	master, hint, err := loadMasterKey(cfg)
	if err != nil {
		return nil, fmt.Errorf("localkms: %w", err)
	}
	c := &Client{
		path:         cfg.Keyring,
		lockPath:     cfg.Keyring + ".lock",
		lockTimeout:  cfg.LockTimeout,
		masterHint:   hint,
		usageLimit:   limit,
		counterBlock: block,
		keyLimit:     cfg.KeyLimit,
		log:          cfg.Logger,
		now:          cfg.Now,
		refreshEvery: defaultRefreshEvery,
		started:      time.Now(),
		master:       master,
		counters:     make(map[versionRef]*countBlock),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.lockTimeout <= 0 {
		c.lockTimeout = DefaultLockTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}

	err = CheckPrivate(c.path)
	if errors.Is(err, fs.ErrNotExist) && cfg.Create {
		err = c.createKeyring(ctx)
		if err == nil {
			err = CheckPrivate(c.path)
		}
	} else if errors.Is(err, errNotRegular) {
		err = fmt.Errorf("keyring %w: remove what is there and restore the keyring file from a backup; nothing was changed", err)
	} else if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("keyring %w: every key version and so every DEK wrapped under it lives in this file: if it was deleted or moved, restore it from backup (or fix the keyring path); a new empty keyring would not open the existing DEKs, so rekey does not make one beside existing data (for a new setup, run rekey init with a new --dir); nothing was changed", err)
	}
	if err == nil {
		err = c.reload()
	}
	if err != nil {
		clear(master)
		return nil, fmt.Errorf("localkms: %w", err)
	}
	return c, nil
}

func loadMasterKey(cfg Config) (key []byte, hint string, err error) {
	if len(cfg.MasterKey) > 0 {
		if len(cfg.MasterKey) != MasterKeySize {
			return nil, "", fmt.Errorf("the master key is %d bytes, want %d", len(cfg.MasterKey), MasterKeySize)
		}
		return append([]byte(nil), cfg.MasterKey...), "REKEY_MASTER_KEY", nil
	}
	if cfg.MasterKeyFile == "" {
		return nil, "", errors.New("no master key: set REKEY_MASTER_KEY or master_key_file")
	}
	key, err = readMasterKeyFile(cfg.MasterKeyFile)
	if err != nil {
		return nil, "", err
	}
	return key, "master_key_file " + cfg.MasterKeyFile, nil
}

// createKeyring writes an empty keyring unless the file exists by the time
// the lock is held (another process created it).
func (c *Client) createKeyring(ctx context.Context) error {
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("create keyring: %w", err)
	}
	unlock, err := c.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Lstat(c.path); !errors.Is(err, fs.ErrNotExist) {
		return err // nil: it exists now, and is read as usual
	}
	data, err := encodeKeyring(&keyringData{Keys: map[string]*keyData{}}, c.master)
	if err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	c.log.Info("localkms: created keyring", "keyring", c.path)
	return nil
}

// write replaces the keyring file with data atomically (the old file stays
// whole on any failure). A full file system is named with its fix.
func (c *Client) write(data []byte) error {
	err := fileutil.WriteAtomic(c.path, data, 0o600)
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("write keyring %s: %w: free space on its file system, or move the keyring to one with room (the keyring is unchanged)", c.path, err)
	}
	return err
}

// DefaultLockTimeout is how long a change waits for the keyring's lock file
// when Config.LockTimeout is 0.
const DefaultLockTimeout = 10 * time.Second

// ErrKeyringLocked means another process held the keyring's lock file for
// longer than Config.LockTimeout. Nothing was changed.
var ErrKeyringLocked = errors.New("the keyring is locked by another process")

// lock takes the keyring's lock file, waiting at most c.lockTimeout. The
// caller holds fileMu.
func (c *Client) lock(ctx context.Context) (func(), error) {
	wctx, cancel := context.WithTimeout(ctx, c.lockTimeout)
	defer cancel()
	unlock, err := fileutil.Lock(wctx, c.lockPath)
	if err != nil && ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("localkms: lock file %s: %w: still held after %s (another rekey process is changing the keyring): wait for it to finish or stop it, then retry; nothing was changed", c.lockPath, ErrKeyringLocked, c.lockTimeout)
	}
	return unlock, err
}

// Close gives back the encryption counts this Client reserved and did not
// use, where no other process reserved after them, then zeroes the master
// key and the key material this Client holds (best effort). Calls after
// Close fail.
func (c *Client) Close() error {
	c.giveBackCounts()
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	if c.closed.Swap(true) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.master)
	zeroKeyring(c.ring)
	return nil
}

// readKeyring reads and decodes the keyring file. Errors name the file and
// what to do; the file is never changed.
func (c *Client) readKeyring() (*keyringData, error) {
	f, err := os.Open(c.path)
	if err != nil {
		return nil, fmt.Errorf("read keyring: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyringSize+1))
	if err != nil {
		return nil, fmt.Errorf("read keyring %s: %w", c.path, err)
	}
	if len(data) > maxKeyringSize {
		return nil, fmt.Errorf("keyring %s: %w: larger than %d bytes", c.path, ErrKeyringCorrupt, maxKeyringSize)
	}
	c.mu.RLock()
	d, err := decodeKeyring(data, c.master)
	c.mu.RUnlock()
	switch {
	case errors.Is(err, ErrWrongMasterKey):
		return nil, fmt.Errorf("keyring %s: %w (check %s)", c.path, err, c.masterHint)
	case errors.Is(err, ErrKeyringCorrupt):
		return nil, fmt.Errorf("keyring %s: %w; the file was not changed: restore it from a backup", c.path, err)
	case err != nil:
		return nil, fmt.Errorf("keyring %s: %w", c.path, err)
	}
	return d, nil
}

// install makes d the in-memory copy. The caller holds fileMu.
func (c *Client) install(d *keyringData) {
	d.prepare()
	c.mu.Lock()
	old := c.ring
	c.ring = d
	c.mu.Unlock()
	c.loadedAt.Store(int64(time.Since(c.started)))
	// Readers of the old copy use only its ciphers, never its material.
	if old != d {
		zeroKeyring(old)
	}
}

// reload re-reads the keyring file into memory.
func (c *Client) reload() error {
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	if c.closed.Load() {
		return errClosed
	}
	d, err := c.readKeyring()
	if err != nil {
		return err
	}
	c.install(d)
	return nil
}

// maybeRefresh re-reads the keyring if the copy in memory is older than
// refreshEvery, so that changes by other processes (a retired version) take
// effect here without a restart. One caller does it; the others go on with
// the copy they have. A failure is logged and the copy in memory kept: it
// was authentic when read.
func (c *Client) maybeRefresh() {
	last := c.loadedAt.Load()
	now := int64(time.Since(c.started))
	if now-last < int64(c.refreshEvery) || !c.loadedAt.CompareAndSwap(last, now) {
		return
	}
	if err := c.reload(); err != nil && !errors.Is(err, errClosed) {
		c.log.Warn("localkms: cannot re-read the keyring; using the copy in memory", "keyring", c.path, "err", err)
	}
}

// change applies fn to a fresh copy of the keyring read under the file
// lock and, if fn reports a change, writes the result atomically; then runs
// committed (if any) and makes the copy the in-memory one, all still under
// the lock. fn must check everything before it modifies d.
func (c *Client) change(ctx context.Context, fn func(d *keyringData) (changed bool, err error), committed func()) error {
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	if c.closed.Load() {
		return errClosed
	}
	unlock, err := c.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	for _, p := range fileutil.RemoveStaleTemps(c.path) {
		c.log.Info("localkms: removed a temporary file left by an interrupted keyring write", "file", p)
	}
	d, err := c.readKeyring()
	if err != nil {
		return err
	}
	changed, err := fn(d)
	if err == nil && changed {
		var data []byte
		c.mu.RLock()
		data, err = encodeKeyring(d, c.master)
		c.mu.RUnlock()
		if err == nil {
			err = c.write(data)
		}
	}
	if err != nil {
		zeroKeyring(d)
		return err
	}
	if committed != nil {
		committed()
	}
	c.install(d)
	return nil
}

// lookup returns the in-memory key ref and, if version > 0, its version.
func (c *Client) lookup(ref string, version int) (*keyData, *versionData, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ring == nil {
		return nil, nil, errClosed
	}
	k := c.ring.Keys[ref]
	if k == nil {
		return nil, nil, fmt.Errorf("localkms: key %q: %w", ref, rekey.ErrKeyNotFound)
	}
	if version <= 0 {
		return k, nil, nil
	}
	if version > len(k.Versions) {
		return k, nil, fmt.Errorf("localkms: key %q version %d: %w: the keyring %s has only %d version(s) (an older copy, or another home's?): restore this home's latest keyring from a backup", ref, version, rekey.ErrVersionNotFound, c.path, len(k.Versions))
	}
	return k, k.Versions[version-1], nil
}

// find is lookup that, when this Client does not know ref or version,
// re-reads the keyring once: another process may have created or rotated
// the key.
func (c *Client) find(ref string, version int) (*keyData, *versionData, error) {
	k, v, err := c.lookup(ref, version)
	if errors.Is(err, rekey.ErrKeyNotFound) || errors.Is(err, rekey.ErrVersionNotFound) {
		if rerr := c.reload(); rerr != nil {
			return nil, nil, rerr
		}
		k, v, err = c.lookup(ref, version)
	}
	return k, v, err
}

// usable returns version of ref if it may wrap and unwrap.
func (c *Client) usable(ref string, version int) (*versionData, error) {
	if version < 1 || version > maxVersion {
		return nil, fmt.Errorf("localkms: key %q version %d: %w", ref, version, rekey.ErrVersionNotFound)
	}
	_, v, err := c.find(ref, version)
	if err != nil {
		return nil, err
	}
	if v.State != stateUsable {
		return nil, fmt.Errorf("localkms: key %q version %d is %s: %w", ref, version, v.State, rekey.ErrVersionDisabled)
	}
	return v, nil
}

func (c *Client) checkOpen() error {
	if c.closed.Load() {
		return errClosed
	}
	return nil
}

func newVersionData(version int, now time.Time) *versionData {
	material := make([]byte, 32)
	rand.Read(material)
	return &versionData{Version: version, State: stateUsable, Material: material, Created: rekey.NormalizeTime(now)}
}

func newWrapAEAD(material []byte) cipher.AEAD {
	block, err := aes.NewCipher(material)
	if err != nil {
		panic("localkms: " + err.Error()) // unreachable: material is 32 bytes, checked on decode
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		panic("localkms: " + err.Error())
	}
	return aead
}

// CreateKey implements rekey.KMS. The reference is the name. It returns
// ErrInvalidArgument for a name rekey.ValidateKeyName refuses and
// ErrKeyExists for a name in the keyring.
func (c *Client) CreateKey(ctx context.Context, name string) (string, error) {
	if err := rekey.ValidateKeyName(name); err != nil {
		return "", fmt.Errorf("localkms: create key: %w", err)
	}
	err := c.change(ctx, func(d *keyringData) (bool, error) {
		if _, ok := d.Keys[name]; ok {
			return false, fmt.Errorf("localkms: create key %s: %w", name, rekey.ErrKeyExists)
		}
		now := rekey.NormalizeTime(c.now())
		d.Keys[name] = &keyData{Created: now, Versions: []*versionData{newVersionData(1, now)}}
		return true, nil
	}, nil)
	if err != nil {
		return "", err
	}
	c.log.Info("localkms: created key", "keyring", c.path, "key", name, "version", 1)
	return name, nil
}

// CurrentVersion implements rekey.KMS. It always re-reads the keyring file,
// so that it reports versions other processes created.
func (c *Client) CurrentVersion(ctx context.Context, ref string) (int, error) {
	if err := c.reload(); err != nil {
		return 0, err
	}
	k, _, err := c.lookup(ref, 0)
	if err != nil {
		return 0, err
	}
	return len(k.Versions), nil
}

// RotateKey implements rekey.KMS: it adds version CurrentVersion+1 with new
// random key material.
func (c *Client) RotateKey(ctx context.Context, ref string) (int, error) {
	var version int
	err := c.change(ctx, func(d *keyringData) (bool, error) {
		k := d.Keys[ref]
		if k == nil {
			return false, fmt.Errorf("localkms: rotate key %q: %w", ref, rekey.ErrKeyNotFound)
		}
		if len(k.Versions) >= maxVersion {
			return false, fmt.Errorf("localkms: rotate key %q: %w: no version numbers left", ref, rekey.ErrUsageLimit)
		}
		version = len(k.Versions) + 1
		k.Versions = append(k.Versions, newVersionData(version, c.now()))
		return true, nil
	}, nil)
	if err != nil {
		return 0, err
	}
	c.log.Info("localkms: rotated key", "keyring", c.path, "key", ref, "version", version)
	return version, nil
}

// takeCounts uses n encryption counts of version of ref, reserving new
// blocks in the keyring while this Client's block runs short. A failure
// to reserve (the keyring locked by another process for longer than
// Config.LockTimeout, the usage limit, a write error) ends it; counts
// taken before it stay used, which over-counts, never under.
func (c *Client) takeCounts(ctx context.Context, ref string, version int, n uint64) error {
	vr := versionRef{ref, version}
	for n > 0 {
		c.countMu.Lock()
		if b := c.counters[vr]; b != nil && b.next < b.limit {
			k := min(n, b.limit-b.next)
			b.next += k
			n -= k
			c.countMu.Unlock()
			continue
		}
		c.countMu.Unlock()
		if err := c.reserve(ctx, vr, n); err != nil {
			return err
		}
	}
	return nil
}

// reserve records in the keyring that this Client takes the next block of
// counts of vr, so that no other process, and no restart of this one, uses
// them again. The block is twice the last one, at least want, and at most
// Config.CounterBlock; it never passes the version's limit: the smaller of
// Config.UsageLimit and the key's own (Config.KeyLimit).
func (c *Client) reserve(ctx context.Context, vr versionRef, want uint64) error {
	limit := c.usageLimit
	if c.keyLimit != nil {
		kl, err := c.keyLimit(ctx, vr.ref)
		if err != nil {
			return fmt.Errorf("localkms: key %q: usage limit: %w", vr.ref, err)
		}
		if kl > 0 && uint64(kl) < limit {
			limit = uint64(kl)
		}
	}
	size := uint64(1)
	c.countMu.Lock()
	if b := c.counters[vr]; b != nil {
		size = b.size * 2
	}
	c.countMu.Unlock()
	size = min(max(size, want), c.counterBlock)
	var block countBlock
	return c.change(ctx, func(d *keyringData) (bool, error) {
		c.countMu.Lock()
		b := c.counters[vr]
		have := b != nil && b.next < b.limit
		c.countMu.Unlock()
		if have { // another goroutine reserved while this one waited
			return false, nil
		}
		k := d.Keys[vr.ref]
		if k == nil {
			return false, fmt.Errorf("localkms: key %q: %w", vr.ref, rekey.ErrKeyNotFound)
		}
		if vr.version > len(k.Versions) {
			return false, fmt.Errorf("localkms: key %q version %d: %w", vr.ref, vr.version, rekey.ErrVersionNotFound)
		}
		v := k.Versions[vr.version-1]
		if v.State != stateUsable {
			return false, fmt.Errorf("localkms: key %q version %d is %s: %w", vr.ref, vr.version, v.State, rekey.ErrVersionDisabled)
		}
		if v.Reserved >= limit {
			return false, fmt.Errorf("localkms: %w", &rekey.UsageLimitError{Ref: vr.ref, Version: vr.version, Count: int64(v.Reserved), Limit: int64(limit)})
		}
		block = countBlock{next: v.Reserved, limit: min(v.Reserved+size, limit), size: size}
		v.Reserved = block.limit
		return true, nil
	}, func() {
		if block.limit == 0 {
			return
		}
		c.log.Debug("localkms: reserved encryption counts", "keyring", c.path, "key", vr.ref, "version", vr.version, "from", block.next, "to", block.limit)
		published := block // takeCounts advances it from here on, under countMu
		c.countMu.Lock()
		c.counters[vr] = &published
		c.countMu.Unlock()
	})
}

// giveBackCounts lowers the keyring's reserved count of each version back
// to what this Client used, where its block is still the last one
// reserved (no other process reserved after it). The blocks are ended
// first, so that no wrap of this Client uses a count given back. A failure
// is logged: the counts stay reserved, which over-counts, never under.
func (c *Client) giveBackCounts() {
	if c.closed.Load() {
		return
	}
	type unused struct {
		vr        versionRef
		used, top uint64
	}
	var back []unused
	c.countMu.Lock()
	for vr, b := range c.counters {
		if b.next < b.limit {
			back = append(back, unused{vr, b.next, b.limit})
			b.limit = b.next
		}
	}
	c.countMu.Unlock()
	if len(back) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.lockTimeout)
	defer cancel()
	err := c.change(ctx, func(d *keyringData) (bool, error) {
		changed := false
		for _, u := range back {
			k := d.Keys[u.vr.ref]
			if k == nil || u.vr.version > len(k.Versions) {
				continue
			}
			if v := k.Versions[u.vr.version-1]; v.Reserved == u.top {
				v.Reserved, changed = u.used, true
			}
		}
		return changed, nil
	}, nil)
	if err != nil {
		c.log.Warn("localkms: could not give back unused encryption counts; they stay counted", "keyring", c.path, "err", err)
	}
}

// Encryptions implements rekey.UsageCounter: the count of encryptions
// reserved in the keyring for version of ref, by every process, read from
// the file. It is never lower than the encryptions done; it is higher by
// the counts reserved and not used yet (by processes still running, or
// killed before Close gave them back).
func (c *Client) Encryptions(ctx context.Context, ref string, version int) (int64, error) {
	if version < 1 || version > maxVersion {
		return 0, fmt.Errorf("localkms: key %q version %d: %w", ref, version, rekey.ErrVersionNotFound)
	}
	if err := c.reload(); err != nil {
		return 0, err
	}
	_, v, err := c.lookup(ref, version)
	if err != nil {
		return 0, err
	}
	return int64(v.Reserved), nil
}

// Wrap implements rekey.KMS. It returns ErrInvalidArgument for an empty
// plaintext or one longer than MaxPlaintext, and ErrUsageLimit once the
// version did Config.UsageLimit encryptions.
func (c *Client) Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	c.maybeRefresh()
	return c.wrap(ctx, ref, version, plaintext)
}

func (c *Client) wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 || len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("localkms: wrap: %w: plaintext must be 1 to %d bytes, got %d", rekey.ErrInvalidArgument, MaxPlaintext, len(plaintext))
	}
	v, err := c.usable(ref, version)
	if err != nil {
		return nil, err
	}
	if err := c.takeCounts(ctx, ref, version, 1); err != nil {
		return nil, err
	}
	return seal(v, version, plaintext), nil
}

// seal wraps plaintext under v (version), its count taken already.
func seal(v *versionData, version int, plaintext []byte) []byte {
	return sealTo(make([]byte, 0, sealedSize(plaintext)), v, version, plaintext)
}

// sealedSize is the length of plaintext wrapped.
func sealedSize(plaintext []byte) int {
	return wrapHeader + wrapNonceSize + len(plaintext) + wrapTagSize
}

// sealTo is seal appending to dst.
func sealTo(dst []byte, v *versionData, version int, plaintext []byte) []byte {
	dst = append(dst, wrapFormat)
	dst = binary.BigEndian.AppendUint32(dst, uint32(version))
	return v.aead.Seal(dst, nil, plaintext, v.aad)
}

// Unwrap implements rekey.KMS. It checks, in order, the key, the format and
// length of wrapped (ErrInvalidCiphertext), the version it names
// (ErrWrongVersion), that the version exists (ErrVersionNotFound) and is
// usable (ErrVersionDisabled), and that it authenticates
// (ErrInvalidCiphertext).
func (c *Client) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	c.maybeRefresh()
	return c.unwrap(ref, version, wrapped)
}

func (c *Client) unwrap(ref string, version int, wrapped []byte) ([]byte, error) {
	return c.unwrapTo(nil, ref, version, wrapped)
}

// unwrapTo is unwrap appending the plaintext to dst.
func (c *Client) unwrapTo(dst []byte, ref string, version int, wrapped []byte) ([]byte, error) {
	if _, _, err := c.find(ref, 0); err != nil {
		return nil, err
	}
	if len(wrapped) < minWrapped || len(wrapped) > maxWrapped {
		return nil, fmt.Errorf("localkms: unwrap: %w: %d bytes, want %d to %d", rekey.ErrInvalidCiphertext, len(wrapped), minWrapped, maxWrapped)
	}
	if wrapped[0] != wrapFormat {
		return nil, fmt.Errorf("localkms: unwrap: %w: unknown format %#02x", rekey.ErrInvalidCiphertext, wrapped[0])
	}
	if named := binary.BigEndian.Uint32(wrapped[1:wrapHeader]); int64(named) != int64(version) {
		return nil, fmt.Errorf("localkms: unwrap under key %q version %d: the bytes name version %d: %w", ref, version, named, rekey.ErrWrongVersion)
	}
	v, err := c.usable(ref, version)
	if err != nil {
		return nil, err
	}
	plaintext, err := v.aead.Open(dst, nil, wrapped[wrapHeader:], v.aad)
	if err != nil {
		return nil, fmt.Errorf("localkms: unwrap under key %q version %d: %w", ref, version, rekey.ErrInvalidCiphertext)
	}
	return plaintext, nil
}

// Rewrap implements rekey.Rewrapper by unwrapping and wrapping in this
// process; the plaintext is zeroed before it returns.
func (c *Client) Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	c.maybeRefresh()
	return c.rewrap(ctx, ref, fromVersion, wrapped, toVersion)
}

func (c *Client) rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	plaintext, err := c.unwrap(ref, fromVersion, wrapped)
	if err != nil {
		return nil, err
	}
	defer clear(plaintext)
	return c.wrap(ctx, ref, toVersion, plaintext)
}

// RewrapBatch implements rekey.BatchRewrapper. An item that cannot be
// unwrapped fails alone; everything about toVersion fails the call as a
// whole: an unknown ref, an unusable toVersion, and the encryption counts,
// taken for the whole batch at once (at most one wait for the keyring's
// lock, not one per item: a process stopped while holding it costs a
// batch Config.LockTimeout, then ErrKeyringLocked).
func (c *Client) RewrapBatch(ctx context.Context, ref string, toVersion int, items []rekey.RewrapItem) ([]rekey.RewrapResult, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	c.maybeRefresh()
	v, err := c.usable(ref, toVersion)
	if err != nil {
		return nil, err
	}
	results := make([]rekey.RewrapResult, len(items))
	// The plaintexts are opened into one buffer, zeroed before returning,
	// and sealed into another that the results share (each result's
	// capacity ends with it): two allocations a batch, where there were
	// two an item. An item's plaintext is exactly its wrapped bytes less
	// the header, nonce and tag, so each opens in place in plain.
	const overhead = wrapHeader + wrapNonceSize + wrapTagSize
	size := 0
	for _, it := range items {
		size += max(len(it.Wrapped)-overhead, 0)
	}
	plain := make([]byte, 0, size)
	defer func() { clear(plain[:cap(plain)]) }()
	plaintexts := make([][]byte, len(items))
	var n uint64
	for i, it := range items {
		start := len(plain)
		p, err := c.unwrapTo(plain[start:start], ref, it.Version, it.Wrapped)
		if results[i].Err = err; err != nil {
			continue
		}
		n++
		plain = plain[:start+len(p)] // p is plain's own bytes (see above)
		plaintexts[i] = plain[start:len(plain):len(plain)]
	}
	if err := c.takeCounts(ctx, ref, toVersion, n); err != nil {
		return nil, err
	}
	sealed := 0
	for i, p := range plaintexts {
		if results[i].Err == nil {
			sealed += sealedSize(p)
		}
	}
	out := make([]byte, 0, sealed)
	for i, p := range plaintexts {
		if results[i].Err == nil {
			start := len(out)
			out = sealTo(out, v, toVersion, p)
			results[i].Wrapped = out[start:len(out):len(out)]
		}
	}
	return results, nil
}

// RetireVersion implements rekey.VersionRetirer: the version refuses wrap
// and unwrap from then on (in other processes from their next re-read of
// the keyring, within about a second). It returns ErrInvalidArgument for
// the newest version: rotate first.
func (c *Client) RetireVersion(ctx context.Context, ref string, version int) error {
	changed := false
	err := c.change(ctx, func(d *keyringData) (bool, error) {
		v, newest, err := versionIn(d, ref, version)
		if err != nil {
			return false, err
		}
		if v.State != stateUsable {
			return false, nil
		}
		if newest {
			return false, fmt.Errorf("localkms: retire key %q version %d: %w: it is the newest version; rotate first", ref, version, rekey.ErrInvalidArgument)
		}
		v.State, v.Retired = stateRetired, rekey.NormalizeTime(c.now())
		changed = true
		return true, nil
	}, nil)
	if err == nil && changed {
		c.log.Info("localkms: retired key version", "keyring", c.path, "key", ref, "version", version)
	}
	return err
}

// DestroyVersion implements rekey.VersionRetirer: the key material of a
// retired version is removed from the keyring (its number stays taken). It
// returns ErrInvalidArgument for a version that is not retired.
func (c *Client) DestroyVersion(ctx context.Context, ref string, version int) error {
	changed := false
	err := c.change(ctx, func(d *keyringData) (bool, error) {
		v, _, err := versionIn(d, ref, version)
		if err != nil {
			return false, err
		}
		switch v.State {
		case stateDestroyed:
			return false, nil
		case stateUsable:
			return false, fmt.Errorf("localkms: destroy key %q version %d: %w: it is not retired; retire it first", ref, version, rekey.ErrInvalidArgument)
		}
		clear(v.Material)
		v.State, v.Material, v.Destroyed = stateDestroyed, nil, rekey.NormalizeTime(c.now())
		changed = true
		return true, nil
	}, nil)
	if err == nil && changed {
		c.log.Info("localkms: destroyed key version", "keyring", c.path, "key", ref, "version", version)
	}
	return err
}

// versionIn finds version of ref in d and says whether it is the newest.
func versionIn(d *keyringData, ref string, version int) (v *versionData, newest bool, err error) {
	k := d.Keys[ref]
	if k == nil {
		return nil, false, fmt.Errorf("localkms: key %q: %w", ref, rekey.ErrKeyNotFound)
	}
	if version < 1 || version > len(k.Versions) {
		return nil, false, fmt.Errorf("localkms: key %q version %d: %w", ref, version, rekey.ErrVersionNotFound)
	}
	return k.Versions[version-1], version == len(k.Versions), nil
}

// Ping implements rekey.Pinger: it reports whether the keyring file can be
// read and looks like a keyring.
func (c *Client) Ping(ctx context.Context) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	f, err := os.Open(c.path)
	if err != nil {
		return &rekey.UnreachableError{Service: serviceName, Err: err}
	}
	defer f.Close()
	header := make([]byte, len(keyringMagic))
	if _, err := io.ReadFull(f, header); err != nil || string(header) != keyringMagic {
		return &rekey.UnreachableError{Service: serviceName, Err: fmt.Errorf("keyring %s: %w", c.path, ErrKeyringCorrupt)}
	}
	return nil
}

// MAC implements rekey.MACer: HMAC-SHA256 under a key derived from the
// master key with HKDF-SHA256, info "rekey/local/mac/" + purpose. It
// returns ErrInvalidArgument for an empty purpose.
func (c *Client) MAC(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	if purpose == "" {
		return nil, fmt.Errorf("localkms: mac: %w: empty purpose", rekey.ErrInvalidArgument)
	}
	c.mu.RLock()
	if c.closed.Load() {
		c.mu.RUnlock()
		return nil, errClosed
	}
	key, err := hkdf.Key(sha256.New, c.master, nil, macInfoPrefix+purpose, 32)
	c.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("localkms: mac: %w", err)
	}
	defer clear(key)
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil), nil
}

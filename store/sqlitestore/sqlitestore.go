// Package sqlitestore is the embedded default rekey.Store: one SQLite file,
// through the cgo driver github.com/mattn/go-sqlite3.
//
// The file is put in WAL mode once, on Open; connections use
// synchronous=NORMAL and foreign keys on. Writes go through one connection whose transactions begin IMMEDIATE,
// so a write transaction holds SQLite's write lock from its first statement
// and two writers never deadlock upgrading a read lock; other processes on
// the same file wait up to Config.BusyTimeout for it. Reads go through a
// small pool of read-only connections and never wait for writers.
//
// Every guarded write (fence, state, compare-and-swap) and the audit events
// that record it commit in one transaction. The schema is embedded and
// migrated on Open.
package sqlitestore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	// The driver (a stub whose Open says it needs cgo when built without).
	_ "github.com/mattn/go-sqlite3"

	"github.com/rekeyhq/rekey"
)

// service names this store in *rekey.UnreachableError.
const service = "store:sqlite"

// Config configures a Store.
type Config struct {
	// Path is the database file. An existing file (or its -wal/-shm
	// companion) readable by group or others is refused. Its directory
	// must exist.
	Path string
	// Create allows Open to create the file (mode 0600) when it does not
	// exist. Without it a missing file is an error matching
	// fs.ErrNotExist, and nothing is created: a database that was deleted
	// must not come back empty beside the keys its DEKs were wrapped with.
	Create bool
	// ReadOnly opens the database for reading only: nothing is created or
	// written through the Store (writes fail), and it works on a read-only
	// copy of the file (a read-only file system or directory). A database
	// whose schema is older than this binary is migrated first when the
	// file can be written, and refused when it cannot.
	ReadOnly bool
	// BusyTimeout is how long a write waits for another process holding the
	// write lock before it fails with an *rekey.UnreachableError. Zero means
	// 5 s.
	BusyTimeout time.Duration
	// Logger receives migration and lifecycle messages (never key material,
	// wrapped or not). Nil discards them.
	Logger *slog.Logger
	// Now is the clock for the times the store sets itself (a DEK's
	// UpdatedAt on swap, a key's UpdatedAt, zero event times). Nil means
	// time.Now.
	Now func() time.Time
}

// ErrReadOnly is returned by Open, without ReadOnly, when the database
// file or its directory cannot be written (a read-only file system, or no
// write permission): open it with ReadOnly to read it.
var ErrReadOnly = errors.New("the database cannot be written (read-only file system, or no write permission on the file or its directory)")

// ErrEmptyFile is returned by Open, without Create, for a database file
// that exists but is empty (0 bytes): a database that was truncated, which
// SQLite would take for a new one.
var ErrEmptyFile = errors.New("the database file is empty (0 bytes)")

// readConns is the size of the read pool.
const readConns = 4

// Store is a rekey.Store in one SQLite file. It is safe for concurrent use
// by many goroutines, and by several processes sharing the file.
type Store struct {
	busyTimeout time.Duration // how long a write waits for the lock (Config.BusyTimeout)
	path        string
	file        os.FileInfo // the file as opened, to notice it being replaced
	w           *sql.DB     // one connection; BEGIN IMMEDIATE
	r           *sql.DB     // read-only connections
	log         *slog.Logger
	now         func() time.Time

	// restored names the audit triggers Open found missing or altered and
	// recreated (see AuditGuardProblems).
	restored []string

	closeOnce sync.Once
	closeErr  error
}

var _ rekey.Store = (*Store)(nil)

// Open opens the database at cfg.Path (creating it when cfg.Create) and
// applies the embedded migrations it lacks. It refuses a missing file
// unless cfg.Create (an error matching fs.ErrNotExist that names the
// file), a database whose schema is newer than this binary knows, and a
// file readable by group or others. With cfg.ReadOnly it writes nothing.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("sqlitestore: %w: no database path (store.dsn)", rekey.ErrInvalidArgument)
	}
	if strings.ContainsAny(cfg.Path, "?#") || strings.HasPrefix(cfg.Path, "file:") {
		return nil, fmt.Errorf("sqlitestore: %w: database path %q: give a plain file path, without '?', '#' or a file: prefix (the driver splits its DSN at '?')", rekey.ErrInvalidArgument, cfg.Path)
	}
	if cfg.BusyTimeout <= 0 {
		cfg.BusyTimeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: database path %q: %w", cfg.Path, err)
	}
	if cfg.Create && cfg.ReadOnly {
		return nil, fmt.Errorf("sqlitestore: %w: Create and ReadOnly exclude each other", rekey.ErrInvalidArgument)
	}
	var info os.FileInfo
	if cfg.Create {
		info, err = createPrivateFile(path)
	} else {
		info, err = existingPrivateFile(path)
	}
	if err != nil {
		return nil, err
	}

	if !cfg.ReadOnly && (readOnlyDir(filepath.Dir(path)) || !writable(path)) {
		return nil, fmt.Errorf("sqlitestore: %s: %w", path, ErrReadOnly)
	}

	s := &Store{path: path, file: info, log: log, now: now, busyTimeout: cfg.BusyTimeout}
	busy := strconv.FormatInt(cfg.BusyTimeout.Milliseconds(), 10)
	const pragmas = "&_synchronous=NORMAL&_foreign_keys=on&_stmt_cache_size=32"
	common := "_busy_timeout=" + busy + pragmas
	if cfg.ReadOnly {
		if err := s.openReadOnly(ctx, common); err != nil {
			_ = s.Close()
			return nil, err
		}
		log.Debug("sqlitestore: opened read-only", "path", path)
		return s, nil
	}
	// A failed open removes the side files it created (a full disk leaves
	// an empty -wal and a stub -shm behind), so that it changes nothing.
	before := sideFiles(path)
	fail := func(err error) (*Store, error) {
		_ = s.Close()
		removeNewSideFiles(path, before, log)
		return nil, err
	}
	// WAL mode is a property of the file: set once here, with retries,
	// rather than by every new connection (see enableWAL).
	if err := enableWAL(ctx, path+"?_busy_timeout="+busy, cfg.BusyTimeout); err != nil {
		return fail(fmt.Errorf("sqlitestore: %s: %w", path, err))
	}
	// The writer's wait for the lock is beginImmediate's (begin.go).
	s.w, err = sql.Open("sqlite3", path+"?_txlock=immediate&_busy_timeout="+strconv.Itoa(writerBusyMS)+pragmas)
	if err != nil {
		return fail(fmt.Errorf("sqlitestore: open %s: %w", path, mapErr(err)))
	}
	// One writer connection: writers of this process queue in database/sql
	// (honouring their contexts) instead of spinning in SQLite's busy
	// handler.
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)

	// The schema version is read first, without the write lock: a current
	// schema (the usual case) needs no write, so opening does not wait
	// for another process's write transaction.
	var current int
	if err := s.w.QueryRowContext(ctx, "PRAGMA user_version").Scan(&current); err != nil {
		return fail(fmt.Errorf("sqlitestore: %s: read the schema version: %w", path, mapErr(err)))
	}
	if current != len(migrations) {
		applied, err := migrate(ctx, s.w, cfg.BusyTimeout)
		if err != nil {
			return fail(fmt.Errorf("sqlitestore: %s: %w", path, err))
		}
		for _, v := range applied {
			log.Info("sqlitestore: applied migration", "path", path, "version", v)
		}
	}
	if err := checkTables(ctx, s.w); err != nil {
		return fail(fmt.Errorf("sqlitestore: %s: %w", path, err))
	}
	if s.restored, err = s.restoreGuards(ctx); err != nil {
		return fail(fmt.Errorf("sqlitestore: %s: check the audit trail's append-only triggers: %w", path, err))
	}
	for _, p := range s.restored {
		log.Error("sqlitestore: restored an append-only trigger of the audit trail: someone with write access to the database file dropped or altered it; run rekey audit verify",
			"path", path, "problem", p)
	}

	s.r, err = sql.Open("sqlite3", path+"?_txlock=deferred&_query_only=true&"+common)
	if err != nil {
		return fail(fmt.Errorf("sqlitestore: open %s: %w", path, mapErr(err)))
	}
	s.r.SetMaxOpenConns(readConns)
	s.r.SetMaxIdleConns(readConns)
	s.r.SetConnMaxLifetime(0)
	s.r.SetConnMaxIdleTime(0)

	// WAL and SHM files exist now; they take the database file's mode.
	if err := checkPrivate(path); err != nil {
		_ = s.Close()
		return nil, err
	}
	log.Debug("sqlitestore: opened", "path", path, "schema_version", len(migrations))
	return s, nil
}

// openReadOnly opens one query-only pool for reads and writes: SQLite
// refuses every write. Where the file and its directory can be written it
// is opened as usual otherwise, so that SQLite shares the -wal/-shm files
// with other processes (a running daemon) and removes them on close as it
// always does. On a read-only copy it is opened with mode=ro; a WAL
// database needs its -shm index, which SQLite cannot create in a
// read-only directory, so when no -wal file holds unmerged pages the file
// is opened as immutable (nothing can change it there). The schema must be
// current: nothing is migrated.
func (s *Store) openReadOnly(ctx context.Context, common string) error {
	dsn := s.path + "?_txlock=deferred&_query_only=true&" + common
	canWrite := !readOnlyDir(filepath.Dir(s.path)) && writable(s.path)
	if canWrite {
		// A file this process may write is brought to the current schema
		// first, as any open would (a new binary's first command may be
		// status): reads need the current schema.
		if err := s.migrateBeforeReadOnly(ctx, common); err != nil {
			return err
		}
	} else {
		dsn = "file:" + s.path + "?mode=ro&_txlock=deferred&_query_only=true&" + common
		if st, err := os.Stat(s.path + "-wal"); errors.Is(err, fs.ErrNotExist) || (err == nil && st.Size() == 0) {
			dsn += "&immutable=1"
		}
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return fmt.Errorf("sqlitestore: open %s read-only: %w", s.path, mapErr(err))
	}
	db.SetMaxOpenConns(readConns)
	db.SetMaxIdleConns(readConns)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	s.r, s.w = db, db
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("sqlitestore: %s: read the schema version (read-only): %w", s.path, mapErr(err))
	}
	switch {
	case v > len(migrations):
		return fmt.Errorf("sqlitestore: %s: database schema version %d is newer than this rekey knows (%d): upgrade rekey, or restore a backup made before the upgrade", s.path, v, len(migrations))
	case v < len(migrations):
		return fmt.Errorf("sqlitestore: %s: database schema version %d is older than this rekey's (%d), and it cannot be written here to migrate it: run one rekey command on a writable copy first", s.path, v, len(migrations))
	}
	if err := checkTables(ctx, db); err != nil {
		return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
	}
	return nil
}

// migrateBeforeReadOnly applies the migrations a writable database lacks,
// through a connection of its own that it closes; a current schema is left
// untouched (migrate writes nothing then).
func (s *Store) migrateBeforeReadOnly(ctx context.Context, common string) error {
	db, err := sql.Open("sqlite3", s.path+"?_txlock=immediate&"+common)
	if err != nil {
		return fmt.Errorf("sqlitestore: open %s: %w", s.path, mapErr(err))
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("sqlitestore: %s: read the schema version: %w", s.path, mapErr(err))
	}
	if v >= len(migrations) {
		return nil
	}
	if err := enableWAL(ctx, s.path, 5*time.Second); err != nil {
		return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
	}
	applied, err := migrate(ctx, db, 0)
	if err != nil {
		return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
	}
	for _, v := range applied {
		s.log.Info("sqlitestore: applied migration", "path", s.path, "version", v)
	}
	return nil
}

// sideFiles reports which of path's -wal and -shm files exist.
func sideFiles(path string) map[string]bool {
	m := make(map[string]bool, 2)
	for _, p := range []string{path + "-wal", path + "-shm"} {
		_, err := os.Lstat(p)
		m[p] = !errors.Is(err, fs.ErrNotExist)
	}
	return m
}

// walIndexSize is the size of a -shm file that a WAL connection has set up:
// one that is shorter was never mapped by any connection.
const walIndexSize = 32 << 10

// removeNewSideFiles removes the -wal and -shm files of path that did not
// exist before (per sideFiles) and that no connection uses: an empty -wal
// beside a -shm shorter than a set-up WAL index (what SQLite leaves when it
// cannot write on a full disk). Files another process may be using are
// left alone.
func removeNewSideFiles(path string, before map[string]bool, log *slog.Logger) {
	wal, shm := path+"-wal", path+"-shm"
	if wi, err := os.Lstat(wal); err == nil && (before[wal] || wi.Size() != 0) {
		return
	}
	if si, err := os.Lstat(shm); err == nil && (before[shm] || si.Size() >= walIndexSize) {
		return
	}
	for _, p := range []string{wal, shm} {
		if before[p] {
			continue
		}
		if err := os.Remove(p); err == nil {
			log.Debug("sqlitestore: removed a side file the failed open created", "file", p)
		}
	}
}

// writable reports whether this process can open path for writing.
func writable(path string) bool {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// enableWAL switches the database to WAL mode, which then persists in the
// file. Switching takes an exclusive lock, and when two processes open a
// new file at the same moment SQLite answers one of them SQLITE_BUSY at
// once (both hold a read lock and want to upgrade: waiting would
// deadlock), without calling the busy handler. So it retries, with
// backoff, for up to timeout.
func enableWAL(ctx context.Context, dsn string, timeout time.Duration) error {
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return mapErr(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	deadline := time.Now().Add(timeout)
	backoff := time.Millisecond
	for {
		var mode string
		err := db.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode)
		if err == nil {
			if !strings.EqualFold(mode, "wal") {
				return fmt.Errorf("cannot use WAL mode (journal mode is %q): is the file on a network or read-only file system?", mode)
			}
			return nil
		}
		if !isBusy(err) || time.Now().After(deadline) {
			return fmt.Errorf("enable WAL mode: %w", mapErr(err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// createPrivateFile creates path with mode 0600 unless it exists, before
// SQLite opens it (SQLite gives its -wal and -shm files the database file's
// mode), and checks that it and any companion files are private.
func createPrivateFile(path string) (os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: create database file: %w (does the directory exist and is it writable?)", err)
	}
	info, err := f.Stat()
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: database file: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("sqlitestore: %w: database path %s is not a regular file: remove or move what is there and restore the database file from a backup", rekey.ErrInvalidArgument, path)
	}
	if err := checkPrivate(path); err != nil {
		return nil, err
	}
	return info, nil
}

// existingPrivateFile is createPrivateFile for a file that must exist
// already: a missing file is an error matching fs.ErrNotExist.
func existingPrivateFile(path string) (os.FileInfo, error) {
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sqlitestore: database file %s does not exist: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: database file: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("sqlitestore: %w: database path %s is not a regular file: remove or move what is there and restore the database file from a backup", rekey.ErrInvalidArgument, path)
	}
	if info.Size() == 0 {
		// SQLite takes an empty file for a new database and would write
		// a new schema into it. Only Create (rekey init) may start from
		// an empty file.
		return nil, fmt.Errorf("sqlitestore: %s: %w: it was truncated: restore it from a backup (a new home is made by rekey init); nothing was changed", path, ErrEmptyFile)
	}
	if err := checkPrivate(path); err != nil {
		return nil, err
	}
	return info, nil
}

// checkPrivate refuses the database file and its companions when group or
// others may access them.
func checkPrivate(path string) error {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		info, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && p != path {
			continue
		}
		if err != nil {
			return fmt.Errorf("sqlitestore: database file: %w", err)
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			return fmt.Errorf("sqlitestore: %w: %s has mode %04o, open to group or others: run chmod 600 %s", rekey.ErrInvalidArgument, p, perm, p)
		}
	}
	return nil
}

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Ping implements rekey.Store: the database answers a query that reads a
// table, and the file it was opened from is still there, the same file,
// readable, and still starts with a SQLite header. (SQLite keeps working
// from open connections and cached pages on a file that was deleted, made
// unreadable, truncated or overwritten, so the query alone would not
// notice.) It also checks that the audit trail's append-only triggers are
// there, unaltered (a dropped one is reported here, and restored by the
// next Open). It costs two queries, a stat and a 100-byte read.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM (SELECT 1 FROM keys LIMIT 1)").Scan(&n); err != nil {
		return s.fail("ping", err)
	}
	if _, problems, err := brokenGuards(ctx, s.r); err != nil {
		return s.fail("ping", err)
	} else if len(problems) > 0 {
		return fmt.Errorf("sqlitestore: ping: %s: someone with write access to %s changed the schema; restart rekey (the next open restores them) and run rekey audit verify", strings.Join(problems, "; "), s.path)
	}
	unreachable := func(format string, args ...any) error {
		return &rekey.UnreachableError{Service: service, Err: fmt.Errorf(format, args...)}
	}
	info, err := os.Stat(s.path)
	switch {
	case err != nil:
		return unreachable("database file: %w", err)
	case !os.SameFile(info, s.file):
		return unreachable("database file %s was replaced since it was opened: restart to reopen it", s.path)
	case info.Mode().Perm()&0o400 == 0:
		return unreachable("database file %s is not readable (mode %04o)", s.path, info.Mode().Perm())
	}
	f, err := os.Open(s.path)
	if err != nil {
		return unreachable("database file: %w", err)
	}
	defer f.Close()
	var header [100]byte
	if _, err := io.ReadFull(f, header[:]); err != nil {
		return unreachable("database file %s is truncated (%v): restore it from backup", s.path, err)
	}
	if string(header[:16]) != "SQLite format 3\x00" {
		return unreachable("database file %s no longer starts with a SQLite header (overwritten or corrupt): restore it from backup", s.path)
	}
	return nil
}

// CheckWrite waits (up to Config.BusyTimeout) for the database's write
// lock and releases it at once, writing nothing: a caller about to change
// something outside the store that the store must then record (a new key
// in a backend) learns first that another process holds the lock. The
// error is a write's (an *rekey.UnreachableError for a lock still held).
func (s *Store) CheckWrite(ctx context.Context) error {
	return s.write(ctx, "check that the database can be written", func(*sql.Tx) error { return nil })
}

// Close implements rekey.Store. Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.r != nil {
			errs = append(errs, s.r.Close())
		}
		if s.w != nil && s.w != s.r {
			errs = append(errs, s.w.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// write runs fn in a write transaction (BEGIN IMMEDIATE) and commits it,
// or rolls it back when fn fails.
//
// It keeps the retry contract of rekey.Store: an *rekey.UnreachableError
// only when nothing was written. Failing to begin (SQLITE_BUSY past the
// busy timeout), and any failure inside fn, leave nothing behind: fn's
// statements are rolled back (SQLite rolls back an interrupted
// transaction on its own, in WAL mode uncommitted frames are never read).
// A failed COMMIT is the one ambiguous case: SQLITE_BUSY or SQLITE_LOCKED
// there means it did not happen (the driver rolls back), but an I/O error
// or a full disk during COMMIT may leave it applied or not, so that error
// is returned as is, not as an UnreachableError, and says so.
func (s *Store) write(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	return s.writeOn(ctx, op, func(tx *sql.Tx, _ *sql.Conn) error { return fn(tx) })
}

// writeOn is write for fn that also runs statements on the transaction's
// connection below database/sql (conn.Raw: the DEK swaps, see swapper).
// While fn holds the driver's connection, tx must not be used.
func (s *Store) writeOn(ctx context.Context, op string, fn func(tx *sql.Tx, conn *sql.Conn) error) error {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return s.fail(op, err)
	}
	defer conn.Close()
	tx, err := beginImmediate(ctx, conn, s.busyTimeout)
	if err != nil {
		return s.fail(op, err)
	}
	if err := fn(tx, conn); err != nil {
		_ = tx.Rollback()
		return s.fail(op, err)
	}
	if err := tx.Commit(); err != nil {
		if notCommitted(err) {
			return s.fail(op, err)
		}
		return fmt.Errorf("sqlitestore: %s: commit failed and may or may not have been applied: read the state again before retrying: %w", op, advise(err))
	}
	return nil
}

// notCommitted reports whether err, from COMMIT, proves that nothing was
// written: SQLITE_BUSY or SQLITE_LOCKED (the lock was not obtained; the
// driver rolls the transaction back), or a context or database/sql error
// raised before COMMIT reached SQLite (database/sql rolls back).
func notCommitted(err error) bool {
	if isDriverErr(err) {
		return isBusy(err)
	}
	return true
}

// batchContext returns the context for the statements a batch executes
// row by row inside a transaction: ctx without its cancellation. Given a
// cancellable context the driver runs every statement on a new goroutine
// to be able to interrupt it, which costs more than the statement itself;
// a batch loop checks ctx.Err() between rows instead, and database/sql
// rolls the transaction back when ctx ends.
func batchContext(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// fail wraps err of operation op, mapped to rekey's errors.
func (s *Store) fail(op string, err error) error {
	return fmt.Errorf("sqlitestore: %s: %w", op, mapErr(err))
}

// mapErr maps driver errors to rekey's: uniqueness → ErrConflict, other
// constraints → ErrInvalidArgument, lock timeouts and I/O failures →
// *rekey.UnreachableError. Other errors (already rekey's, or context
// errors) are returned as they are. It is for errors after which nothing
// was written; write keeps an ambiguous COMMIT failure away from it.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if mapped, ok := mapDriverErr(err); ok {
		return mapped
	}
	if err.Error() == "sql: database is closed" {
		// Use after Close is the caller's bug, not an outage: not
		// transient, so that no decorator retries it.
		return errors.New("the store is closed")
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) {
		return &rekey.UnreachableError{Service: service, Err: err}
	}
	return err
}

// ---- column conversions ----

// micros converts a time to its column value: unix microseconds UTC, or
// NULL for the zero time.
func micros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return rekey.NormalizeTime(t).UnixMicro()
}

// fromMicros converts a time column back.
func fromMicros(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMicro(n.Int64).UTC()
}

// nowTime returns the store clock's now, normalised.
func (s *Store) nowTime() time.Time { return rekey.NormalizeTime(s.now()) }

// scanner is *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

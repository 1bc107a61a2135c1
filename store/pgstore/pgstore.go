// Package pgstore is the rekey.Store for PostgreSQL (15 or newer), through
// github.com/jackc/pgx/v5 and a connection pool. Several processes (rekey
// run replicas) share one database; PostgreSQL does the coordination:
//
//   - Every guarded write (fence, state, compare-and-swap) and the audit
//     events that record it commit in one transaction (READ COMMITTED).
//   - A fenced write reads its lease row FOR SHARE: a new owner acquiring
//     the key (FOR UPDATE) waits until the write commits, and a write that
//     starts after the acquisition sees the new epoch and fails ErrFenced.
//   - Guarded rows (a rotation, a version, a key at activation) are read
//     FOR UPDATE before their guard is checked.
//   - One open rotation per key is a partial unique index.
//   - Audit appends lock the one-row chain head (audit_head) FOR UPDATE, as
//     the last lock of their transaction, so the chain stays unbroken with
//     any number of writers; audit tables refuse UPDATE, DELETE and
//     TRUNCATE by trigger.
//
// Locks are taken in one order — rotation, lease, rewrap range, key,
// version, DEKs, counters, chain head — so transactions of this package do
// not deadlock each other (a range batch holds its rotation FOR KEY SHARE
// from the start and updates the rotation's counters before the chain
// head: see CommitRangeBatch); should PostgreSQL still report a deadlock or a serialization
// failure, nothing was written and the error is an *rekey.UnreachableError
// that a retry decorator repeats.
//
// The schema is embedded and migrated on Open under an advisory lock, so
// replicas starting together apply each migration once. The tables go into
// the first schema of the connection's search_path (set search_path in the
// DSN to keep them apart from an application's).
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/redact"
)

// service names this store in *rekey.UnreachableError.
const service = "store:postgres"

// idleInTxParam is the server setting that ends a session left idle
// inside a transaction, and idleInTxTimeout its value unless the DSN
// sets it: this package's transactions never wait on the client between
// statements, so a session idle that long belongs to a paused process.
const (
	idleInTxParam   = "idle_in_transaction_session_timeout"
	idleInTxTimeout = 10 * time.Second
)

// Config configures a Store.
type Config struct {
	// DSN is a libpq connection string, URL (postgres://user@host/db?...)
	// or key=value. Anything it leaves out is taken from the PG*
	// environment variables (PGHOST, PGPASSWORD, PGSSLMODE, ...) and
	// ~/.pgpass, as libpq does; TLS settings (sslmode, sslrootcert, ...)
	// go in it too. Its password never appears in errors or logs.
	DSN string
	// Logger receives migration and lifecycle messages (never key material,
	// wrapped or not, nor the password). Nil discards them.
	Logger *slog.Logger
	// MaxConns is the size of the connection pool. Zero means 8.
	MaxConns int32
	// Now is the clock for the times the store sets itself (a DEK's
	// UpdatedAt on swap, a key's UpdatedAt, zero event times). Nil means
	// time.Now.
	Now func() time.Time
}

// Store is a rekey.Store in a PostgreSQL database. It is safe for
// concurrent use by many goroutines and by many processes.
type Store struct {
	pool   *pgxpool.Pool
	dsn    string // redacted
	log    *slog.Logger
	now    func() time.Time
	closed atomic.Bool
}

var _ rekey.Store = (*Store)(nil)

// Open connects to the database cfg.DSN names and applies the embedded
// migrations it lacks. It refuses a schema newer than this binary knows.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	safe := redact.DSN(cfg.DSN)
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// pgx's parse errors quote the connection string: say what is
		// wrong without it.
		return nil, fmt.Errorf("pgstore: %w: cannot parse the DSN %q: %s (use postgres://user@host:5432/db?sslmode=verify-full, or host=... dbname=... key=value pairs)",
			rekey.ErrInvalidArgument, safe, redact.Text(parseReason(err)))
	}
	// A replica paused inside a transaction (SIGSTOP, a frozen VM) keeps
	// the row locks it took, among them its lease row FOR SHARE: the
	// replica taking the key over would wait for them forever. The server
	// ends such a session after idleInTxTimeout, rolling its transaction
	// back, unless the DSN sets the parameter itself.
	if _, ok := pcfg.ConnConfig.RuntimeParams[idleInTxParam]; !ok {
		pcfg.ConnConfig.RuntimeParams[idleInTxParam] = strconv.FormatInt(idleInTxTimeout.Milliseconds(), 10)
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	} else {
		pcfg.MaxConns = 8
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: %w", safe, mapErr(err))
	}
	s := &Store{pool: pool, dsn: safe, log: log, now: now}
	applied, err := s.migrate(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: %s: %w", safe, err)
	}
	for _, v := range applied {
		log.Info("pgstore: applied migration", "dsn", safe, "version", v)
	}
	log.Debug("pgstore: opened", "dsn", safe, "schema_version", len(migrations))
	return s, nil
}

// parseReason is the part of a pgx parse error after the connection
// string it quotes ("cannot parse `...`: reason").
func parseReason(err error) string {
	msg := err.Error()
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return "invalid connection string"
	}
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		return msg[i+3:]
	}
	return "invalid connection string"
}

// ConcurrentWrites implements rekey.ConcurrentWriter: 2, so that an engine
// re-wraps two ranges of a shared re-wrap at once (on a 2-core machine
// with the server on it, 1,000,000 DEKs: see README "Performance").
func (s *Store) ConcurrentWrites() int { return 2 }

// DSN returns the connection string with its password replaced by "xxxxx".
func (s *Store) DSN() string { return s.dsn }

// Ping implements rekey.Store: a query that reads a table of the schema,
// so a dropped schema fails too.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return errClosed
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM keys LIMIT 1) k`).Scan(&n); err != nil {
		return s.fail("ping", err)
	}
	return nil
}

// Close implements rekey.Store. Closing twice is harmless.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.pool.Close()
	}
	return nil
}

// errClosed is the error of every call after Close: the caller's bug, not
// an outage, so not transient and never retried.
var errClosed = errors.New("pgstore: the store is closed")

// write runs fn in a transaction and commits it, or rolls it back when fn
// fails.
//
// It keeps the retry contract of rekey.Store: an *rekey.UnreachableError
// only when nothing was written. Any failure before COMMIT leaves nothing
// behind (PostgreSQL rolls back a transaction whose connection is lost). A
// failed COMMIT is the one ambiguous case: an error the server reported
// (a deferred constraint, a serialization failure) or one pgx raised
// before sending anything (SafeToRetry) means it did not happen, but a
// connection lost after COMMIT was sent may leave it applied or not, so
// that error is returned as a plain error that says so.
func (s *Store) write(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	if s.closed.Load() {
		return errClosed
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return s.fail(op, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return s.fail(op, err)
	}
	if err := tx.Commit(ctx); err != nil {
		if commitNotApplied(err) {
			return s.fail(op, err)
		}
		return fmt.Errorf("pgstore: %s: commit failed and may or may not have been applied: read the state again before retrying: %v", op, redact.Text(err.Error()))
	}
	return nil
}

// fail wraps err of operation op, mapped to rekey's errors.
func (s *Store) fail(op string, err error) error {
	if s.closed.Load() && !isRekeyErr(err) {
		return errClosed
	}
	return fmt.Errorf("pgstore: %s: %w", op, mapErr(err))
}

// isRekeyErr reports whether err is already one of rekey's errors.
func isRekeyErr(err error) bool {
	for _, target := range []error{rekey.ErrInvalidArgument, rekey.ErrConflict, rekey.ErrStale, rekey.ErrFenced,
		rekey.ErrKeyNotFound, rekey.ErrKeyExists, rekey.ErrVersionNotFound, rekey.ErrRotationNotFound} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// ---- column conversions ----

// ts converts a time to its column value: the time normalised, or NULL
// for the zero time.
func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return rekey.NormalizeTime(t)
}

// fromTS converts a nullable time column back: UTC, or the zero time for
// NULL.
func fromTS(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// nowTime returns the store clock's now, normalised.
func (s *Store) nowTime() time.Time { return rekey.NormalizeTime(s.now()) }

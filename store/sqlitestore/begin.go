package sqlitestore

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"time"
)

// writerBusyMS is the busy timeout, in milliseconds, of the writer
// connection: SQLite's own busy handler waits at most this long for
// another process's write lock, and beginImmediate then tries again every
// millisecond or so until the store's BusyTimeout. SQLite's handler backs
// off to one try every 100 ms once it has waited a while; against a
// process that writes back to back (a re-wrap commits a batch every few
// milliseconds and holds the lock most of the time), such a waiter gets
// in only when one of its rare tries falls between two commits: `rekey
// dek create` during a 1,000,000-DEK re-wrap waited up to 0.9–1.7 s. Trying
// every millisecond finds the gaps.
const writerBusyMS = 2

// txBeginner is a *sql.DB or a *sql.Conn.
type txBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// beginImmediate begins a write transaction on db (a connection opened
// with _txlock=immediate and a busy timeout of writerBusyMS), trying
// again while another process holds the write lock, until wait has passed
// or ctx ends. The last error is returned as is (SQLITE_BUSY when the
// lock was never free).
func beginImmediate(ctx context.Context, db txBeginner, wait time.Duration) (*sql.Tx, error) {
	deadline := time.Now().Add(wait)
	for {
		tx, err := db.BeginTx(ctx, nil)
		if err == nil || !isBusy(err) || !time.Now().Before(deadline) {
			return tx, err
		}
		pause := time.Duration(500+rand.IntN(1000)) * time.Microsecond
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(pause):
		}
	}
}

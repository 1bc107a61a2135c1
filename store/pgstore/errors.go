package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/redact"
)

// mapErr maps an error after which nothing was written to rekey's errors,
// the one place that does:
//
//   - unique violation (23505) → ErrConflict; other integrity violations
//     (class 23) → ErrInvalidArgument;
//   - the server going away or refusing work for now — class 08
//     (connection exception), 57P01/57P02/57P03 (admin shutdown, crash
//     shutdown, cannot connect now), 25P03 (idle-in-transaction timeout:
//     the transaction was rolled back), 53300 (too many connections), 40001
//     and 40P01 (serialization failure, deadlock: the transaction was
//     rolled back) — and connection errors on the client side (network
//     errors, pgconn.SafeToRetry, a connection closed under a query) →
//     *rekey.UnreachableError;
//   - rekey's own errors and context errors → unchanged.
//
// Anything else comes back with its text redacted. write keeps an
// ambiguous COMMIT away from it (see commitNotApplied).
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505":
			return fmt.Errorf("%w: %s", rekey.ErrConflict, pgMessage(pe))
		case strings.HasPrefix(pe.Code, "23"):
			return fmt.Errorf("%w: %s", rekey.ErrInvalidArgument, pgMessage(pe))
		case transientCode(pe.Code):
			return &rekey.UnreachableError{Service: service, Err: errors.New(pgMessage(pe))}
		}
		return errors.New(pgMessage(pe))
	}
	if isRekeyErr(err) {
		return err
	}
	if connectionLost(err) {
		return &rekey.UnreachableError{Service: service, Err: errors.New(redact.Text(err.Error()))}
	}
	return err
}

// transientCode reports whether a server error code means "not now":
// the transaction was rolled back or never started, and repeating it may
// succeed.
func transientCode(code string) bool {
	switch code {
	case "57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03", "25P03":
		return true
	}
	return strings.HasPrefix(code, "08")
}

// connectionLost reports whether err is a client-side connection failure:
// nothing was sent (SafeToRetry), the network failed, or the connection
// was closed (by pgx after a fatal error, or by the server going away).
func connectionLost(err error) bool {
	if pgconn.SafeToRetry(err) {
		return true
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	if errors.As(err, &ne) || errors.As(err, &ce) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "connection reset")
}

// commitNotApplied reports whether err, from COMMIT, proves that nothing
// was written: the server answered with an error (it rolled back), or pgx
// failed before sending COMMIT (SafeToRetry). A connection lost after
// COMMIT was sent proves nothing.
func commitNotApplied(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) || errors.Is(err, pgx.ErrTxCommitRollback) {
		return true
	}
	return pgconn.SafeToRetry(err)
}

// pgMessage is a server error as text: message, detail (which may quote
// a key value, never a wrapped DEK: wrapped bytes are in no unique index),
// and code.
func pgMessage(pe *pgconn.PgError) string {
	msg := pe.Message
	if pe.Detail != "" {
		msg += " (" + pe.Detail + ")"
	}
	return redact.Text(msg + " [SQLSTATE " + pe.Code + "]")
}

// isDeadlock reports whether err is PostgreSQL's deadlock_detected: the
// statement was cancelled to break a cycle of lock waits (the transaction
// is aborted, or rolled back to its last savepoint).
func isDeadlock(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "40P01"
}

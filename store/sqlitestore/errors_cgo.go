//go:build cgo

package sqlitestore

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/mattn/go-sqlite3"

	"github.com/rekeyhq/rekey"
)

// isBusy reports whether err is SQLite's "busy" or "locked".
func isBusy(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && (se.Code == sqlite3.ErrBusy || se.Code == sqlite3.ErrLocked)
}

// isDriverErr reports whether err came from SQLite itself.
func isDriverErr(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se)
}

// mapDriverErr maps a go-sqlite3 error (see mapErr); ok is false when err
// is not one. The error keeps the driver's error in its chain, followed by
// what to do about it (see advise).
func mapDriverErr(err error) (mapped error, ok bool) {
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return nil, false
	}
	switch se.Code {
	case sqlite3.ErrConstraint:
		switch se.ExtendedCode {
		case sqlite3.ErrConstraintUnique, sqlite3.ErrConstraintPrimaryKey:
			return fmt.Errorf("%w: %v", rekey.ErrConflict, se), true
		}
		return fmt.Errorf("%w: %v", rekey.ErrInvalidArgument, se), true
	case sqlite3.ErrBusy, sqlite3.ErrLocked, sqlite3.ErrIoErr, sqlite3.ErrCantOpen,
		sqlite3.ErrFull, sqlite3.ErrReadonly, sqlite3.ErrProtocol:
		return &rekey.UnreachableError{Service: service, Err: advise(err)}, true
	}
	return advise(err), true
}

// advise returns err (a driver error, or one that wraps it) followed by
// what to do about it, when SQLite's message alone would leave the reader
// without a fix: a lock held by another process, a full disk, a damaged
// file or schema. Other errors are returned as they are.
func advise(err error) error {
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return err
	}
	fix := ""
	switch {
	case se.Code == sqlite3.ErrBusy || se.Code == sqlite3.ErrLocked:
		fix = "another process holds the database file's lock (a running rekey, or a tool with the file open): wait for it to finish or stop it, then retry"
	case se.Code == sqlite3.ErrFull || (se.Code == sqlite3.ErrIoErr && errors.Is(se.SystemErrno, syscall.ENOSPC)):
		fix = "the file system of the database is full: free space on it (or move the home to a larger one), then retry"
	case se.Code == sqlite3.ErrCorrupt || se.Code == sqlite3.ErrNotADB:
		fix = "the database file is damaged: restore it from a backup"
	case se.Code == sqlite3.ErrError && (strings.HasPrefix(se.Error(), "no such table") || strings.HasPrefix(se.Error(), "no such column")):
		fix = "the database schema is damaged (a table or column was removed): restore the database file from a backup"
	}
	if fix == "" {
		return err
	}
	return &advisedError{err: err, fix: fix}
}

// advisedError is a driver error followed by what to do about it.
type advisedError struct {
	err error
	fix string
}

func (e *advisedError) Error() string { return e.err.Error() + ": " + e.fix }
func (e *advisedError) Unwrap() error { return e.err }

//go:build cgo

package sqlitestore

import (
	"errors"
	"fmt"

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
// is not one.
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
		return &rekey.UnreachableError{Service: service, Err: se}, true
	}
	return err, true
}

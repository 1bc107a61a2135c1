//go:build !cgo

package sqlitestore

// Without cgo, github.com/mattn/go-sqlite3 is a stub whose Open fails
// ("requires cgo"), so there are no driver errors to map: the package
// builds (for cross builds) but cannot open a database.

func isBusy(error) bool { return false }

func mapDriverErr(error) (error, bool) { return nil, false }

func isDriverErr(error) bool { return false }

func advise(err error) error { return err }

package sqlitestore

import (
	"context"
	"database/sql/driver"
	"fmt"
)

// The re-wrap's hot statements (the swaps, the brief list) run on the
// driver's connection itself, through sql.Conn.Raw, below database/sql:
// see swapper and listBrief.

// preparer is the driver's connection dc (of conn.Raw) as one that
// prepares statements with a context.
func preparer(dc any) (driver.ConnPrepareContext, error) {
	pc, ok := dc.(driver.ConnPrepareContext)
	if !ok {
		return nil, fmt.Errorf("sqlitestore: the driver's connection (%T) cannot prepare statements with a context", dc)
	}
	return pc, nil
}

// prepareAs prepares query on pc as a statement of kind S
// (driver.StmtExecContext or driver.StmtQueryContext); the caller closes
// st.
func prepareAs[S any](ctx context.Context, pc driver.ConnPrepareContext, query string) (st driver.Stmt, s S, err error) {
	if st, err = pc.PrepareContext(ctx, query); err != nil {
		return nil, s, err
	}
	if s, ok := st.(S); ok {
		return st, s, nil
	}
	_ = st.Close()
	return nil, s, fmt.Errorf("sqlitestore: the driver's statement (%T) is not a %T", st, (*S)(nil))
}

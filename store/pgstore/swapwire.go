package pgstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/rekeyhq/rekey"
)

// The guessed swap is the statement of a re-wrap's every batch, and its
// arrays are most of the bytes the engine sends. pgx encodes an array
// element by element through its generic codecs, into a buffer that starts
// at 256 bytes for every statement: in a 1,000,000-DEK re-wrap that was
// 0.7 s of the engine's 4.5 s of CPU and 1.2 GB of its 2.1 GB of
// allocations. swapGuessed writes the statement's parameters in
// PostgreSQL's binary formats itself, into one buffer of the exact size,
// and sends them through pgconn.

// pgEpochMicros is 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, in
// microseconds since the Unix epoch.
const pgEpochMicros = 946_684_800_000_000

// guessedOIDs are the parameter types of the guessed statement: the
// batch's ids, old bytes, new bytes and new versions, the time, the key,
// the range's bounds (extras of them), the old versions, and the first and
// last ids of the batch (the span).
func guessedOIDs(extras int) []uint32 {
	oids := []uint32{pgtype.TextArrayOID, pgtype.ByteaArrayOID, pgtype.ByteaArrayOID, pgtype.Int4ArrayOID, pgtype.TimestamptzOID, pgtype.TextOID}
	for range extras {
		oids = append(oids, pgtype.TextOID)
	}
	return append(oids, pgtype.Int4ArrayOID, pgtype.TextOID, pgtype.TextOID)
}

// paramBufs holds the buffers of guessedParams between batches (a
// re-wrap's are ~180 KB each: allocated for every batch, they were
// ~180 MB of a 1,000,000-DEK re-wrap's garbage).
var paramBufs = sync.Pool{New: func() any { return new([]byte) }}

// guessedParams returns the guessed statement's parameters for swaps (at
// least one) in binary format (see guessedOIDs), every one a slice of
// *buf0, which it grows when too small.
func guessedParams(buf0 *[]byte, swaps []rekey.DEKSwap, key string, now time.Time, extra []string) [][]byte {
	const header = 20 // dimensions, flags, element type, length, lower bound
	n := len(swaps)
	// Five arrays, two of them of int4 (a length and a value each), the
	// time, the key and the bounds.
	size := 5*header + 2*8*n + 8 + len(key)
	for _, sw := range swaps {
		size += 4 + len(sw.ID) + 4 + len(sw.OldWrapped) + 4 + len(sw.NewWrapped)
	}
	for _, s := range extra {
		size += len(s)
	}
	size += len(swaps[0].ID) + len(swaps[n-1].ID) // the span
	if cap(*buf0) < size {
		*buf0 = make([]byte, 0, size)
	}
	buf := (*buf0)[:0]
	params := make([][]byte, 0, 9+len(extra))
	param := func(start int) { params = append(params, buf[start:len(buf):len(buf)]) }
	array := func(elem uint32, each func(sw rekey.DEKSwap)) {
		start := len(buf)
		buf = binary.BigEndian.AppendUint32(buf, 1) // one dimension
		buf = binary.BigEndian.AppendUint32(buf, 0) // no NULL
		buf = binary.BigEndian.AppendUint32(buf, elem)
		buf = binary.BigEndian.AppendUint32(buf, uint32(n))
		buf = binary.BigEndian.AppendUint32(buf, 1) // lower bound
		for _, sw := range swaps {
			each(sw)
		}
		param(start)
	}
	bytes := func(b []byte) {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(b)))
		buf = append(buf, b...)
	}
	int4 := func(v int) {
		buf = binary.BigEndian.AppendUint32(buf, 4)
		buf = binary.BigEndian.AppendUint32(buf, uint32(int32(v)))
	}
	array(pgtype.TextOID, func(sw rekey.DEKSwap) {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(sw.ID)))
		buf = append(buf, sw.ID...)
	})
	array(pgtype.ByteaOID, func(sw rekey.DEKSwap) { bytes(sw.OldWrapped) })
	array(pgtype.ByteaOID, func(sw rekey.DEKSwap) { bytes(sw.NewWrapped) })
	array(pgtype.Int4OID, func(sw rekey.DEKSwap) { int4(sw.NewVersion) })
	start := len(buf)
	buf = binary.BigEndian.AppendUint64(buf, uint64(now.UnixMicro()-pgEpochMicros))
	param(start)
	for _, s := range append([]string{key}, extra...) {
		start = len(buf)
		buf = append(buf, s...) // a text's binary format is its bytes
		param(start)
	}
	array(pgtype.Int4OID, func(sw rekey.DEKSwap) { int4(sw.OldVersion) })
	for _, s := range []string{swaps[0].ID, swaps[n-1].ID} {
		start = len(buf)
		buf = append(buf, s...)
		param(start)
	}
	*buf0 = buf
	return params
}

// swapGuessed runs the savepoint and then the guessed statement sql for
// swaps, in one round trip, and reports whether every swap won. Bounds in
// extra other than strings, or a statement whose parameters are not those
// of guessedOIDs, go through pgx instead.
func swapGuessed(ctx context.Context, tx pgx.Tx, sql string, swaps []rekey.DEKSwap, key string, now time.Time, extra []any) (bool, error) {
	bounds := make([]string, len(extra))
	for i, e := range extra {
		s, ok := e.(string)
		if !ok {
			return swapGuessedPgx(ctx, tx, sql, swaps, key, now, extra)
		}
		bounds[i] = s
	}
	conn := tx.Conn()
	sd, err := conn.Prepare(ctx, "rekey_swap_guessed_"+strconv.Itoa(len(extra)), sql)
	if err != nil {
		return false, err
	}
	if !slices.Equal(sd.ParamOIDs, guessedOIDs(len(extra))) {
		return swapGuessedPgx(ctx, tx, sql, swaps, key, now, extra)
	}
	buf := paramBufs.Get().(*[]byte)
	defer paramBufs.Put(buf) // pgconn copies the parameters into its batch at once
	params := guessedParams(buf, swaps, key, now, bounds)
	formats := make([]int16, len(params))
	for i := range formats {
		formats[i] = pgtype.BinaryFormatCode
	}
	b := &pgconn.Batch{}
	for i, q := range guessedAround {
		if i == guessedAt {
			b.ExecPrepared(sd.Name, params, formats, nil)
			continue
		}
		b.ExecParams(q, nil, nil, nil, nil)
	}
	results, err := conn.PgConn().ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return false, err
	}
	if len(results) != len(guessedAround) {
		return false, fmt.Errorf("pgstore: the swap's batch returned %d results, want %d", len(results), len(guessedAround))
	}
	return results[guessedAt].CommandTag.RowsAffected() == int64(len(swaps)), nil
}

// guessedAround are the statements sent with the guessed statement, in
// one round trip, at guessedAt: the savepoint a miss goes back to, and
// nested loops off for the statement alone (see swapSQL: the span's hash
// join is bounded by the span, a nested loop over a misestimated span is
// not). Going back to the savepoint also undoes the SET LOCAL.
var guessedAround = []string{`SAVEPOINT swap_round`, `SET LOCAL enable_nestloop = off`, ``, `SET LOCAL enable_nestloop TO DEFAULT`}

const guessedAt = 2

// swapGuessedPgx is swapGuessed with pgx's encoding.
func swapGuessedPgx(ctx context.Context, tx pgx.Tx, sql string, swaps []rekey.DEKSwap, key string, now time.Time, extra []any) (bool, error) {
	olds := make([]int32, len(swaps))
	for i, sw := range swaps {
		olds[i] = int32(sw.OldVersion)
	}
	b := &pgx.Batch{}
	for i, q := range guessedAround {
		if i == guessedAt {
			b.Queue(sql, append(swapArgs(swaps, key, now, extra), olds, swaps[0].ID, swaps[len(swaps)-1].ID)...)
			continue
		}
		b.Queue(q)
	}
	br := tx.SendBatch(ctx, b)
	all, err := func() (bool, error) {
		all := false
		for i := range guessedAround {
			tag, err := br.Exec()
			if err != nil {
				return false, err
			}
			if i == guessedAt {
				all = tag.RowsAffected() == int64(len(swaps))
			}
		}
		return all, nil
	}()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return all, err
}

package pgstore

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/rekeyhq/rekey"
)

// TestGuessedParams: the parameters swapGuessed writes itself are byte for
// byte what pgx writes for the same values in binary format.
func TestGuessedParams(t *testing.T) {
	swaps := []rekey.DEKSwap{
		{ID: "01A", OldWrapped: []byte{1, 2, 3}, NewWrapped: []byte{4, 5}, NewVersion: 2, OldVersion: 1},
		{ID: "01B", OldWrapped: []byte{}, NewWrapped: bytes.Repeat([]byte{9}, 300), NewVersion: 7, OldVersion: 6},
		{ID: "01C-é", OldWrapped: []byte{0}, NewWrapped: []byte{0, 0}, NewVersion: 1 << 30, OldVersion: 1},
	}
	now := time.Date(2026, 12, 2, 19, 40, 1, 123456000, time.UTC)
	buf := new([]byte) // reused, as the pool does: larger, then smaller
	for _, bounds := range [][]string{nil, {"01", ""}, nil} {
		got := guessedParams(buf, swaps, "key-ü", now, bounds)
		args := []any{[]string{"01A", "01B", "01C-é"}, [][]byte{{1, 2, 3}, {}, {0}}, [][]byte{{4, 5}, bytes.Repeat([]byte{9}, 300), {0, 0}},
			[]int32{2, 7, 1 << 30}, now, "key-ü"}
		for _, b := range bounds {
			args = append(args, b)
		}
		args = append(args, []int32{1, 6, 1}, "01A", "01C-é")
		oids := guessedOIDs(len(bounds))
		if len(got) != len(args) || len(oids) != len(args) {
			t.Fatalf("bounds %q: %d parameters and %d types, want %d", bounds, len(got), len(oids), len(args))
		}
		m := pgtype.NewMap()
		for i, a := range args {
			want, err := m.Encode(oids[i], pgtype.BinaryFormatCode, a, nil)
			if err != nil {
				t.Fatalf("pgx encoding of parameter %d: %v", i+1, err)
			}
			if !bytes.Equal(got[i], want) {
				t.Errorf("bounds %q: parameter $%d:\n got % x\nwant % x", bounds, i+1, got[i], want)
			}
			if got[i] == nil {
				t.Errorf("bounds %q: parameter $%d is nil (NULL)", bounds, i+1)
			}
		}
	}
}

// TestGuessedOIDs: PostgreSQL infers the guessed statements' parameters
// as guessedOIDs says, so swapGuessed takes its own encoding, not the
// fallback through pgx.
func TestGuessedOIDs(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, c := range []struct {
		name   string
		sql    string
		extras int
	}{{"swapSQL", swapSQL.guessed, 0}, {"rangeSwapSQL", rangeSwapSQL.guessed, 2}} {
		sd, err := conn.Conn().Prepare(ctx, "", c.sql)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if want := guessedOIDs(c.extras); !slices.Equal(sd.ParamOIDs, want) {
			t.Errorf("%s's parameter types %v, want %v", c.name, sd.ParamOIDs, want)
		}
	}
}

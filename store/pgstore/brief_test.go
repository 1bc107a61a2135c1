package pgstore

import (
	"bytes"
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestCollectBrief reads the same rows with collectBrief in pgx's binary
// formats (its own decoding) and over the simple protocol (text formats:
// pgx's scanning), as a DSN with default_query_exec_mode=simple_protocol
// (for PgBouncer) gets them.
func TestCollectBrief(t *testing.T) {
	dsn := newSchema(t)
	ctx := context.Background()
	want := map[string]struct {
		version int
		wrapped []byte
	}{
		"a1": {1, []byte{0, 1, 2}},
		"a2": {7, bytes.Repeat([]byte{0xff}, 300)},
		"a3": {-2, []byte{}},
	}
	for _, mode := range []string{"cache_statement", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, withParam(t, dsn, "default_query_exec_mode", mode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS b (id text, version integer, wrapped bytea)`); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, `TRUNCATE b`); err != nil {
				t.Fatal(err)
			}
			for id, w := range want {
				if _, err := conn.Exec(ctx, `INSERT INTO b VALUES ($1, $2, $3)`, id, w.version, w.wrapped); err != nil {
					t.Fatal(err)
				}
			}
			rows, err := conn.Query(ctx, `SELECT id, version, wrapped FROM b ORDER BY id`)
			got, err := collectBrief(rows, err, 2, "k") // fewer than the rows: the slabs grow
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("collectBrief = %d DEKs, want %d", len(got), len(want))
			}
			for _, d := range got {
				w, ok := want[d.ID]
				if !ok || d.Key != "k" || d.Version != w.version || !bytes.Equal(d.Wrapped, w.wrapped) {
					t.Errorf("collectBrief: DEK %q key %q version %d wrapped %x; want key k, %+v", d.ID, d.Key, d.Version, d.Wrapped, w)
				}
			}
			// A DEK's bytes are its own: appending to one leaves the next as it was.
			before := bytes.Clone(got[1].Wrapped)
			_ = append(got[0].Wrapped, 9, 9, 9)
			if !bytes.Equal(got[1].Wrapped, before) {
				t.Errorf("appending to DEK %s's wrapped bytes changed DEK %s's", got[0].ID, got[1].ID)
			}
		})
	}
}

func TestSlab(t *testing.T) {
	var s slab
	a := s.copy([]byte("abc"), 10)
	b := s.copy([]byte("defg"), 9)
	if string(a) != "abc" || string(b) != "defg" || cap(a) != 3 || cap(b) != 4 {
		t.Fatalf("slab copies %q (cap %d), %q (cap %d)", a, cap(a), b, cap(b))
	}
	if &a[0] == &b[0] || cap(s.buf) < 7 {
		t.Fatalf("slab: copies share an address or the slab is %d bytes", cap(s.buf))
	}
	big := s.copy(bytes.Repeat([]byte{1}, slabMax+1), 100)
	if len(big) != slabMax+1 || string(a) != "abc" {
		t.Fatalf("slab: a copy larger than slabMax: %d bytes, earlier copy %q", len(big), a)
	}
}

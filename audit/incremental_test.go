package audit_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/sqlitestore"
)

// countingStore counts the events ListAudit returns.
type countingStore struct {
	rekey.Store
	read atomic.Int64
}

func (c *countingStore) ListAudit(ctx context.Context, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	evs, err := c.Store.ListAudit(ctx, q)
	c.read.Add(int64(len(evs)))
	return evs, err
}

// incrementalHome is a SQLite store with a Keeper and a keyring writing
// real events (each key.created), and direct write access to the file.
type incrementalHome struct {
	path  string
	store *countingStore
	kr    *rekey.Keyring
	k     *audit.Keeper
	n     int
}

func newIncrementalHome(t *testing.T) *incrementalHome {
	t.Helper()
	dir := t.TempDir()
	h := &incrementalHome{path: filepath.Join(dir, "rekey.db")}
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Create: true, Path: h.path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	h.store = &countingStore{Store: s}
	kms := memkms.New()
	h.kr = rekey.NewKeyring(h.store, map[string]rekey.KMS{"mem": kms})
	h.k = &audit.Keeper{Store: h.store, MACer: kms, KeyID: "mem/" + audit.Purpose,
		AnchorPath: filepath.Join(dir, "audit.anchor"), StoreID: "test"}
	return h
}

// keys creates n keys, one event each at least.
func (h *incrementalHome) keys(t *testing.T, n int) {
	t.Helper()
	for range n {
		h.n++
		if _, err := h.kr.CreateKey(t.Context(), fmt.Sprintf("k%04d", h.n), "mem", rekey.DefaultPolicy()); err != nil {
			t.Fatal(err)
		}
	}
}

func (h *incrementalHome) exec(t *testing.T, qs ...string) {
	t.Helper()
	db, err := sql.Open("sqlite3", h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range append([]string{"DROP TRIGGER IF EXISTS audit_events_no_update", "DROP TRIGGER IF EXISTS audit_events_no_delete"}, qs...) {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func (h *incrementalHome) events(t *testing.T) int64 {
	t.Helper()
	head, err := audit.HeadSeq(t.Context(), h.store)
	if err != nil {
		t.Fatal(err)
	}
	return head
}

// A Keeper's second checkpoint reads only what was appended since its
// last check (the worker checkpoints every cycle; reading the whole trail
// each time made long-lived homes slow), and still refuses a trail
// rewritten before that point, cut short after it, or forged after it.
func TestCheckpointReadsOnlyWhatIsNew(t *testing.T) {
	h := newIncrementalHome(t)
	ctx := t.Context()
	h.keys(t, 300)
	if err := h.k.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	total := h.events(t)
	h.keys(t, 5)
	h.store.read.Store(0)
	if err := h.k.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h.store.read.Load(); got >= total {
		t.Errorf("the second checkpoint read %d events of a trail of %d: it re-read the trail", got, total)
	}
	// A full Verify still reads everything, and passes.
	h.store.read.Store(0)
	if res, err := h.k.Verify(ctx); err != nil || !res.Valid {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
	if got := h.store.read.Load(); got < total {
		t.Errorf("Verify read %d events of a trail of at least %d", got, total)
	}

	t.Run("rewritten before", func(t *testing.T) {
		h := newIncrementalHome(t)
		h.keys(t, 50)
		if err := h.k.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		// Event 3 forged, every hash after it recomputed: the hash of
		// the event this Keeper verified last changes.
		h.exec(t, `UPDATE audit_events SET actor = 'mallory' WHERE seq = 3`)
		rechainSQLite(t, h.path, 3)
		h.keys(t, 1)
		err := h.k.Checkpoint(ctx)
		if !errors.Is(err, audit.ErrInvalidChain) {
			t.Fatalf("Checkpoint over a re-hashed trail: %v, want ErrInvalidChain", err)
		}
	})
	t.Run("cut short after", func(t *testing.T) {
		h := newIncrementalHome(t)
		h.keys(t, 50)
		if err := h.k.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		h.keys(t, 1)
		head := h.events(t)
		h.exec(t, fmt.Sprintf(`DELETE FROM audit_events WHERE seq = %d`, head))
		var ice *audit.InvalidChainError
		if err := h.k.Checkpoint(ctx); !errors.As(err, &ice) || ice.Problem.Kind != audit.KindMissingEvent {
			t.Fatalf("Checkpoint after the new key's event was deleted: %v, want a %s problem", err, audit.KindMissingEvent)
		}
	})
	t.Run("forged after", func(t *testing.T) {
		h := newIncrementalHome(t)
		h.keys(t, 50)
		if err := h.k.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		head := h.events(t)
		h.exec(t, fmt.Sprintf(`INSERT INTO audit_events (seq, time, type, key, from_version, to_version, rotation_id, deks, status, error, actor, reason, backend_request_id, prev_hash, hash)
			SELECT seq + 1, time, 'version.retired', key, 1, 1, '', 0, 'success', '', 'mallory', 'forged', '', hash, 'x' FROM audit_events WHERE seq = %d`, head))
		rechainSQLite(t, h.path, head+1)
		var ice *audit.InvalidChainError
		if err := h.k.Checkpoint(ctx); !errors.As(err, &ice) || ice.Problem.Kind != audit.KindStateMismatch {
			t.Fatalf("Checkpoint over a forged event: %v, want a %s problem", err, audit.KindStateMismatch)
		}
	})
	t.Run("edited before, hashes left", func(t *testing.T) {
		// The boundary: an edit before the verified point that leaves the
		// stored hashes as they were is not read again by Checkpoint; the
		// next full Verify (the worker's periodic one, rekey audit
		// verify) finds it, and Checkpoint refuses from then on.
		h := newIncrementalHome(t)
		h.keys(t, 50)
		if err := h.k.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		h.exec(t, `UPDATE audit_events SET actor = 'mallory' WHERE seq = 3`)
		h.keys(t, 1)
		if err := h.k.Checkpoint(ctx); err != nil {
			t.Fatalf("Checkpoint: %v (it does not re-read what it verified)", err)
		}
		res, err := h.k.Verify(ctx)
		if err != nil || res.Valid || res.FirstBad.Seq != 3 || res.FirstBad.Kind != audit.KindEdited {
			t.Fatalf("Verify = %+v, %v; want event 3 edited", res, err)
		}
		h.keys(t, 1)
		if err := h.k.Checkpoint(ctx); !errors.Is(err, audit.ErrInvalidChain) {
			t.Fatalf("Checkpoint after a Verify that failed: %v, want ErrInvalidChain", err)
		}
	})
}

// rechainSQLite recomputes prev_hash and hash of every event from seq on.
func rechainSQLite(t *testing.T, path string, from int64) {
	t.Helper()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	a := &attacker{t: t, db: db}
	a.rechain(from)
}

package source_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// rig is rekey opened (setup.Open) with one DEK source, "orders", over an
// application table, and a clock tests move forward.
type rig struct {
	a      *appDB
	sys    *setup.System
	offset atomic.Int64 // added to the real clock
	kms    rekey.KMS
	ref    string
	// plain is the SHA-256 of each row's plaintext DEK, as the
	// application last wrote it.
	mu    sync.Mutex
	plain map[int][32]byte
	// logs holds everything rekey logged (JSON lines).
	logs *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newRig(t *testing.T, a *appDB, batch int) *rig { return newRigFailing(t, a, batch, "") }

// newRigFailing is newRig with REKEY_FAILPOINTS set to failpoints.
func newRigFailing(t *testing.T, a *appDB, batch int, failpoints string) *rig {
	t.Helper()
	return newRigWith(t, a, batch, failpoints, "")
}

// newRigWith is newRigFailing with more dek_sources entries (YAML list
// items) after "orders".
func newRigWith(t *testing.T, a *appDB, batch int, failpoints, moreSources string) *rig {
	t.Helper()
	ctx := context.Background()
	home := t.TempDir()
	r := &rig{a: a, plain: map[int][32]byte{}, logs: &syncBuffer{}}
	now := func() time.Time { return time.Now().Add(time.Duration(r.offset.Load())) }
	getenv := func(k string) string {
		if k == setup.EnvFailpoints {
			return ""
		}
		return os.Getenv(k)
	}
	// First open creates the embedded default; then the source is added.
	sys, err := setup.Open(ctx, setup.Options{Home: home, Getenv: getenv, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if err := sys.Close(); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(home, "rekey.yaml")
	y, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	y = fmt.Appendf(y, `
dek_sources:
  - name: orders
    driver: %s
    dsn: %q
    table: %s
    id_column: id
    wrapped_column: wrapped_dek
    version_column: key_version
    key: payments
    where: %q
%s`, a.driver, strings.ReplaceAll(a.dsn, "$", "$$"), a.table, a.where, moreSources)
	y = bytes.Replace(y, []byte("batch_size: 1000"), []byte("batch_size: "+strconv.Itoa(batch)), 1)
	if err := os.WriteFile(cfgPath, y, 0o600); err != nil {
		t.Fatal(err)
	}
	r.sys, err = setup.Open(ctx, setup.Options{ConfigPath: cfgPath, Now: now, Logger: slog.New(slog.NewJSONHandler(r.logs, nil)), Getenv: func(k string) string {
		if k == setup.EnvFailpoints {
			return failpoints
		}
		return os.Getenv(k)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.sys.Close() })
	if want := 1 + strings.Count(moreSources, "- name:"); len(r.sys.Sources) != want {
		t.Fatalf("want %d sources opened, got %d", want, len(r.sys.Sources))
	}
	k, err := r.sys.Keyring.CreateKey(ctx, "payments", "local", rekey.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	r.kms, r.ref = r.sys.Backends["local"], k.BackendRef
	return r
}

// newRow writes row id with a fresh DEK wrapped under version (insert or
// update), as the application would, and remembers its plaintext.
func (r *rig) newRow(t testing.TB, id, version int, deleted, update bool) {
	t.Helper()
	pt := make([]byte, 32)
	for i := range pt {
		pt[i] = byte(rand.Uint32())
	}
	w, err := r.kms.Wrap(context.Background(), r.ref, version, pt)
	if err != nil {
		t.Errorf("wrap under version %d: %v", version, err)
		return
	}
	if update {
		if _, err := r.a.db.Exec(fmt.Sprintf("UPDATE %s SET wrapped_dek = %s, key_version = %s WHERE id = %s", r.a.table, r.a.ph(1), r.a.ph(2), r.a.ph(3)), w, version, id); err != nil {
			t.Errorf("application update: %v", err)
			return
		}
	} else {
		r.a.insert(t, id, w, version, deleted)
	}
	r.mu.Lock()
	r.plain[id] = sha256.Sum256(pt)
	r.mu.Unlock()
}

// dataKey makes row id's DEK: the first 1000 through the library's
// GenerateDataKey, as an application does, the rest wrapped directly under
// version 1 by the backend, which gives the same bytes without the two
// store reads per call that would dominate a 50,000-row fill.
func (r *rig) dataKey(ctx context.Context, id int) (rekey.DataKey, error) {
	if id <= 1000 {
		return r.sys.Keyring.GenerateDataKey(ctx, "payments")
	}
	pt := make([]byte, rekey.DEKSize)
	for i := range pt {
		pt[i] = byte(rand.Uint32())
	}
	w, err := r.kms.Wrap(ctx, r.ref, 1, pt)
	return rekey.DataKey{Plaintext: pt, Wrapped: w, Version: 1}, err
}

// fill inserts n rows on version 1, 500 to a statement; every tenth row
// is deleted (outside the filter).
func (r *rig) fill(t testing.TB, n int) {
	t.Helper()
	ctx := context.Background()
	const per = 500
	for lo := 1; lo <= n; lo += per {
		hi := min(lo+per-1, n)
		var (
			vals []string
			args []any
		)
		for id := lo; id <= hi; id++ {
			dk, err := r.dataKey(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			var del any = id%10 == 0
			if !r.a.pg {
				del = 0
				if id%10 == 0 {
					del = 1
				}
			}
			k := len(args)
			vals = append(vals, fmt.Sprintf("(%s,%s,%s,%s,%s,%s)", r.a.ph(k+1), r.a.ph(k+2), r.a.ph(k+3), r.a.ph(k+4), r.a.ph(k+5), r.a.ph(k+6)))
			args = append(args, id, "tenant-"+strconv.Itoa(id%7), dk.Wrapped, dk.Version, "note "+strconv.Itoa(id), del)
			r.plain[id] = sha256.Sum256(dk.Plaintext)
			clear(dk.Plaintext)
		}
		r.a.exec(t, "INSERT INTO "+r.a.table+" (id, tenant, wrapped_dek, key_version, note, deleted) VALUES "+strings.Join(vals, ","), args...)
	}
}

// verify checks every included row: on version want, unwrapping under it
// to the plaintext the application wrote; skip names rows not checked.
func (r *rig) verify(t testing.TB, want int, skip ...int) {
	t.Helper()
	rows, err := r.a.db.Query("SELECT id, wrapped_dek, key_version FROM " + r.a.table + " WHERE " + r.a.where + " ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n, bad := 0, 0
	for rows.Next() {
		var (
			id      int
			w       []byte
			version int
		)
		if err := rows.Scan(&id, &w, &version); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(skip, id) {
			continue
		}
		n++
		pt, err := r.kms.Unwrap(context.Background(), r.ref, want, w)
		switch {
		case version != want || err != nil:
			bad++
			if bad < 5 {
				t.Errorf("row %d: version %d, unwrap under %d: %v", id, version, want, err)
			}
		case sha256.Sum256(pt) != r.plain[id]:
			bad++
			if bad < 5 {
				t.Errorf("row %d: unwraps to another DEK than the application wrote", id)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if bad > 0 || n == 0 {
		t.Fatalf("%d of %d included rows wrong", bad, n)
	}
}

func (r *rig) versionStates(t testing.TB) map[int]rekey.VersionState {
	t.Helper()
	vs, err := r.sys.Store.ListVersions(context.Background(), "payments")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]rekey.VersionState{}
	for _, v := range vs {
		out[v.Version] = v.State
	}
	return out
}

// TestRotateInPlace is issue 11's first and third must-holds: a table with
// other columns and a filter; after a rotation every included row unwraps
// under the new version to the same DEK, excluded rows and the other
// columns are byte-identical, rekey's store holds no copy; a corrupted row
// is named by source and id, left unchanged, and blocks retirement until
// it is gone.
func TestRotateInPlace(t *testing.T) {
	t.Parallel()
	n := 50000
	if testing.Short() {
		n = 3000
	}
	eachDB(t, func(t *testing.T, a *appDB) {
		ctx := context.Background()
		r := newRig(t, a, 1000)
		r.fill(t, n)
		corrupt := n - 7
		if _, err := a.db.Exec(fmt.Sprintf("UPDATE %s SET wrapped_dek = %s WHERE id = %s", a.table, a.ph(1), a.ph(2)), []byte("not a wrapped key at all"), corrupt); err != nil {
			t.Fatal(err)
		}
		before := a.snapshot(t)

		start := time.Now()
		rot, err := r.sys.Engine.Rotate(ctx, "payments", rekey.ReasonManual, "test")
		if err != nil {
			t.Fatalf("rotate: %v", err)
		}
		t.Logf("%s: rotated %d rows in %s", a.driver, rot.Done, time.Since(start))
		if rot.State != rekey.RotationDone || rot.ToVersion != 2 {
			t.Fatalf("rotation ended %s to version %d", rot.State, rot.ToVersion)
		}
		if rot.Failed != 1 || !slices.Contains(rot.FailedDEKs, "orders/"+strconv.Itoa(corrupt)) {
			t.Errorf("rotation failed DEKs = %d %v; want orders/%d named", rot.Failed, rot.FailedDEKs, corrupt)
		}
		r.verify(t, 2, corrupt)
		if after := a.snapshot(t); after != before {
			t.Fatalf("excluded rows or other columns changed")
		}
		var w []byte
		var v int
		if err := a.db.QueryRow(fmt.Sprintf("SELECT wrapped_dek, key_version FROM %s WHERE id = %s", a.table, a.ph(1)), corrupt).Scan(&w, &v); err != nil {
			t.Fatal(err)
		}
		if string(w) != "not a wrapped key at all" || v != 1 {
			t.Errorf("the corrupted row was changed: version %d", v)
		}
		rec := httptest.NewRecorder()
		r.sys.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if want := fmt.Sprintf(`rekey_source_deks{key="payments",source="orders",version="2"} %d`, rot.Done); !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
		if c, err := r.sys.Store.CountDEKs(ctx, "payments"); err != nil || len(c) != 0 {
			t.Errorf("rekey's store holds DEKs of the source: %v, %v", c, err)
		}

		// Past the grace: version 1 must stay, blocked by the corrupted row.
		r.offset.Store(int64(8 * 24 * time.Hour))
		rep := r.sys.Engine.RunCycle(ctx)
		if st := r.versionStates(t)[1]; st != rekey.VersionPendingRetirement {
			t.Fatalf("version 1 is %s with a corrupted row on it; report %+v", st, rep)
		}
		// The application deletes the bad row: the next cycle retires.
		if _, err := a.db.Exec(fmt.Sprintf("DELETE FROM %s WHERE id = %s", a.table, a.ph(1)), corrupt); err != nil {
			t.Fatal(err)
		}
		rep = r.sys.Engine.RunCycle(ctx)
		if st := r.versionStates(t)[1]; st != rekey.VersionRetired {
			t.Fatalf("version 1 is %s once no row references it; report %+v", st, rep)
		}
	})
}

// TestApplicationWritesDuringRewrap is issue 11's second must-hold: the
// application inserts and updates rows with the old version while the
// re-wrap runs (and after it, caching the old version): nothing is
// overwritten or lost, and the old version does not retire until the last
// such row is re-wrapped.
func TestApplicationWritesDuringRewrap(t *testing.T) {
	t.Parallel()
	eachDB(t, func(t *testing.T, a *appDB) {
		ctx := context.Background()
		const n = 4000
		r := newRig(t, a, 100)
		r.fill(t, n)

		stop := make(chan struct{})
		var ops atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() {
			next := n + 1
			for {
				select {
				case <-stop:
					return
				default:
				}
				// An application that cached version 1: a new row, and an
				// update of an existing one, both under it.
				r.newRow(t, next, 1, false, false)
				next++
				r.newRow(t, 1+rand.IntN(n), 1, false, true)
				ops.Add(2)
			}
		})
		rot, err := r.sys.Engine.Rotate(ctx, "payments", rekey.ReasonManual, "test")
		during := ops.Load()
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatalf("rotate: %v", err)
		}
		t.Logf("%s: %d application writes during a rotation of %d rows", a.driver, during, rot.Done)
		if during == 0 {
			t.Fatalf("the application wrote nothing during the rotation: the test proves nothing")
		}
		// Late writes after the final sweep, still under version 1 (the
		// writer above made some too, after Rotate returned).
		for id := 1; id <= 3; id++ {
			r.newRow(t, id, 1, false, true)
		}
		var late int64
		if err := a.db.QueryRow("SELECT COUNT(*) FROM " + a.table + " WHERE key_version = 1 AND " + a.where).Scan(&late); err != nil {
			t.Fatal(err)
		}
		if err := r.sys.Engine.Retire(ctx, "payments", 1); err == nil {
			t.Fatalf("retire succeeded while %d source rows are on version 1", late)
		} else if ie := (*rekey.VersionInUseError)(nil); !errors.As(err, &ie) || ie.DEKs != late || late < 3 {
			t.Fatalf("retire: %v; want VersionInUseError for the %d rows on version 1", err, late)
		}
		r.offset.Store(int64(8 * 24 * time.Hour))
		rep := r.sys.Engine.RunCycle(ctx)
		if st := r.versionStates(t)[1]; st != rekey.VersionRetired {
			t.Fatalf("version 1 is %s after the retirement cycle; report %+v", st, rep)
		}
		r.verify(t, 2)
	})
}

// TestFailpointsDuringSourceRewrap is issue 11's last must-hold, with the
// failpoints as errors in process (the crash variant exits the process;
// the state it leaves is the same, since every step is persisted before
// the point): after a failure at each point of a source re-wrap, the next
// Rotate resumes the same rotation, every row ends on version 2 with its
// own DEK, and the backend has exactly one new version.
func TestFailpointsDuringSourceRewrap(t *testing.T) {
	t.Parallel()
	for _, fp := range []string{
		"rewrap.after_backend=error@3",
		"rewrap.after_batch_commit=error@2",
		"rotation.before_commit=error",
		"rotation.after_commit=error", // the final sweep's source pass then runs on resume
	} {
		t.Run(fp, func(t *testing.T) {
			t.Parallel()
			a := newSQLite(t)
			ctx := context.Background()
			r := newRigFailing(t, a, 100, fp)
			r.fill(t, 500)
			first, err := r.sys.Engine.Rotate(ctx, "payments", rekey.ReasonManual, "test")
			if err == nil || first.ID == "" {
				t.Fatalf("rotate with %s: %v (rotation %q); want the injected failure in a recorded rotation", fp, err, first.ID)
			}
			for id := 1; id <= 120; id++ {
				r.newRow(t, id, 1, false, true) // the application writes under version 1 meanwhile
			}
			// The worker's next cycle resumes the open rotation.
			rep := r.sys.Engine.RunCycle(ctx)
			rot, err := r.sys.Store.GetRotation(ctx, first.ID)
			if err != nil {
				t.Fatal(err)
			}
			if rot.ToVersion != 2 || rot.State != rekey.RotationDone {
				t.Fatalf("rotation %s ended %s on version %d; cycle %+v", rot.ID, rot.State, rot.ToVersion, rep)
			}
			if open, err := r.sys.Store.OpenRotation(ctx, "payments"); err == nil {
				t.Errorf("another rotation %s is open", open.ID)
			}
			if v, err := r.kms.CurrentVersion(ctx, r.ref); err != nil || v != 2 {
				t.Errorf("backend is at version %d (%v): want exactly one new version", v, err)
			}
			r.verify(t, 2)
		})
	}
}

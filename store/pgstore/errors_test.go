package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rekeyhq/rekey"
)

func TestMapErr(t *testing.T) {
	t.Parallel()
	netErr := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	tests := []struct {
		name      string
		err       error
		transient bool
		target    error // errors.Is target, if any
	}{
		{"unique violation", &pgconn.PgError{Code: "23505", Message: "duplicate key"}, false, rekey.ErrConflict},
		{"check violation", &pgconn.PgError{Code: "23514", Message: "check"}, false, rekey.ErrInvalidArgument},
		{"admin shutdown", &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, true, nil},
		{"crash shutdown", &pgconn.PgError{Code: "57P02"}, true, nil},
		{"cannot connect now", &pgconn.PgError{Code: "57P03"}, true, nil},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true, nil},
		{"too many connections", &pgconn.PgError{Code: "53300"}, true, nil},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true, nil},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, true, nil},
		{"undefined table", &pgconn.PgError{Code: "42P01", Message: "relation does not exist"}, false, nil},
		{"auth failure", &pgconn.PgError{Code: "28P01", Message: "password authentication failed"}, false, nil},
		{"network error", fmt.Errorf("read: %w", netErr), true, nil},
		{"eof", fmt.Errorf("receive message: %w", io.ErrUnexpectedEOF), true, nil},
		{"rekey error", fmt.Errorf("x: %w", rekey.ErrStale), false, rekey.ErrStale},
		{"canceled", context.Canceled, false, context.Canceled},
	}
	for _, tc := range tests {
		got := mapErr(tc.err)
		if rekey.IsTransient(got) != tc.transient {
			t.Errorf("%s: mapErr = %v, transient %v; want %v", tc.name, got, rekey.IsTransient(got), tc.transient)
		}
		if tc.target != nil && !errors.Is(got, tc.target) {
			t.Errorf("%s: mapErr = %v; want %v", tc.name, got, tc.target)
		}
	}
}

func TestCommitNotApplied(t *testing.T) {
	t.Parallel()
	if !commitNotApplied(&pgconn.PgError{Code: "40001"}) {
		t.Error("a server error at COMMIT: the server rolled back, so nothing was applied")
	}
	if !commitNotApplied(pgx.ErrTxCommitRollback) {
		t.Error("ErrTxCommitRollback: nothing was applied")
	}
	lost := fmt.Errorf("commit: %w", &net.OpError{Op: "read", Net: "tcp", Err: io.ErrUnexpectedEOF})
	if commitNotApplied(lost) {
		t.Error("a connection lost after COMMIT was sent: the outcome is unknown")
	}
}

// TestPasswordNeverShown: the DSN's password appears neither in the error
// of an Open that cannot connect nor in that of a DSN that does not parse.
func TestPasswordNeverShown(t *testing.T) {
	t.Parallel()
	const pw = "s3cr3t-Pa55"
	// A port nobody listens on: a listener opened and closed at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, dsn := range []string{
		"postgres://rekey:" + pw + "@" + addr + "/rekey?sslmode=disable&connect_timeout=2",
		"host=127.0.0.1 port=" + strings.Split(addr, ":")[1] + " user=rekey password=" + pw + " sslmode=disable connect_timeout=2",
		"postgres://rekey:" + pw + "@" + addr + "/rekey?sslmode=bogus",
		"host=127.0.0.1 password=" + pw + " port=notanumber",
	} {
		s, err := Open(ctx, Config{DSN: dsn})
		if err == nil {
			s.Close()
			t.Fatalf("Open(%s) succeeded", dsn)
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("Open error shows the password: %v", err)
		}
		t.Logf("Open error: %v", err)
	}
}

// TestAppendOnly: the audit tables refuse UPDATE, DELETE and TRUNCATE.
func TestAppendOnly(t *testing.T) {
	s := openTemp(t)
	ctx := t.Context()
	if err := s.AppendAudit(ctx, rekey.AuditEvent{Type: "test.event", Key: "a"}); err != nil {
		t.Fatal(err)
	}
	evs, err := s.ListAudit(ctx, rekey.AuditQuery{})
	if err != nil || len(evs) != 1 {
		t.Fatalf("ListAudit = %d events, %v", len(evs), err)
	}
	if err := s.AppendAuditCheckpoint(ctx, rekey.AuditCheckpoint{Seq: 1, Hash: evs[0].Hash, MAC: []byte("mac")}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`UPDATE audit_events SET actor = 'mallory'`,
		`DELETE FROM audit_events`,
		`TRUNCATE audit_events`,
		`UPDATE audit_checkpoints SET mac = 'x'`,
		`DELETE FROM audit_checkpoints`,
		`TRUNCATE audit_checkpoints`,
	} {
		_, err := s.pool.Exec(ctx, q)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: err = %v; want it refused as append-only", q, err)
		}
	}
	after, err := s.ListAudit(ctx, rekey.AuditQuery{})
	if err != nil || len(after) != 1 || after[0] != evs[0] {
		t.Errorf("the trail changed: %v, %v", after, err)
	}
}

// TestTwentyRacers: twenty stores (each its own pool, as twenty replicas
// would have) race to lease one due key and open its rotation: exactly one
// rotation is created, by the one lease holder, and the audit trail holds
// one rotation.started.
func TestTwentyRacers(t *testing.T) {
	dsn := newSchema(t)
	ctx := t.Context()
	const n = 20
	stores := make([]*Store, n)
	for i := range stores {
		s, err := Open(ctx, Config{DSN: dsn, MaxConns: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores[i] = s
	}
	now := rekey.NormalizeTime(time.Now())
	k := rekey.Key{Name: "due", Backend: "local", BackendRef: "due", ActiveVersion: 1, Policy: rekey.DefaultPolicy(), ExpiresAt: now}
	if err := stores[0].CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	created := make([]bool, n)
	errs := make([]error, n)
	for i, s := range stores {
		wg.Go(func() {
			owner := fmt.Sprintf("replica-%02d", i)
			l, err := s.AcquireLease(ctx, "due", owner, time.Minute, now)
			if errors.Is(err, rekey.ErrLeaseHeld) {
				return
			}
			if err != nil {
				errs[i] = err
				return
			}
			r := rekey.Rotation{ID: "rot-" + owner, Key: "due", FromVersion: 1, Reason: rekey.ReasonScheduled}
			err = s.CreateRotation(ctx, r, l, rekey.AuditEvent{Type: rekey.AuditRotationStarted, Key: "due", RotationID: r.ID, Actor: owner})
			if errors.Is(err, rekey.ErrConflict) || errors.Is(err, rekey.ErrFenced) {
				return
			}
			errs[i], created[i] = err, err == nil
		})
	}
	wg.Wait()
	winners := 0
	for i := range stores {
		if errs[i] != nil {
			t.Errorf("replica %d: %v", i, errs[i])
		}
		if created[i] {
			winners++
		}
	}
	if winners != 1 {
		t.Errorf("%d replicas created a rotation; want exactly 1", winners)
	}
	rs, err := stores[0].ListRotations(ctx, rekey.RotationQuery{Key: "due"})
	if err != nil || len(rs) != 1 {
		t.Errorf("ListRotations = %d rotations, %v; want 1", len(rs), err)
	}
	evs, err := stores[0].ListAudit(ctx, rekey.AuditQuery{Key: "due"})
	if err != nil {
		t.Fatal(err)
	}
	started := 0
	for _, e := range evs {
		if e.Type == rekey.AuditRotationStarted {
			started++
		}
	}
	if started != 1 {
		t.Errorf("%d rotation.started events; want 1", started)
	}
}

// TestMissingSchema: a search_path naming no schema that exists is
// refused with what to do.
func TestMissingSchema(t *testing.T) {
	t.Parallel()
	dsn := withParam(t, testDSN(t), "search_path", "no_such_schema_here")
	s, err := Open(t.Context(), Config{DSN: dsn})
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded without a schema")
	}
	if !strings.Contains(err.Error(), "CREATE SCHEMA") {
		t.Errorf("err = %v; want it to say how to create the schema", err)
	}
}

// TestConnectionsKilled: the server ends every connection of the store
// (pg_terminate_backend, as a restart would). Calls meanwhile fail only
// with transient errors, and the store carries on with new connections.
func TestConnectionsKilled(t *testing.T) {
	t.Parallel()
	dsn := newSchema(t)
	app := fmt.Sprintf("rekey-kill-%d", time.Now().UnixNano())
	s, err := Open(t.Context(), Config{DSN: withParam(t, dsn, "application_name", app), MaxConns: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	k := rekey.Key{Name: "a", Backend: "local", BackendRef: "a", ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, testDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var killed int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) k`, app).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no connection of the store to terminate")
	}
	failures, ok := 0, false
	for range 20 {
		_, err := s.GetKey(ctx, "a")
		if err == nil {
			ok = true
			break
		}
		failures++
		if !rekey.IsTransient(err) {
			t.Fatalf("after the connections were killed: %v; want a transient error", err)
		}
	}
	if !ok {
		t.Fatal("the store did not reconnect")
	}
	if err := s.AppendAudit(ctx, rekey.AuditEvent{Type: "test.event", Key: "a"}); err != nil {
		t.Fatalf("write after reconnecting: %v", err)
	}
	t.Logf("killed %d connections; %d calls failed (transient) before one succeeded", killed, failures)
}

package audit_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

func TestCheckpointEmptyTrail(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	cp, err := audit.Checkpoint(t.Context(), s, memkms.New(), audit.Purpose, "k", t0)
	if err != nil || cp.Seq != 0 {
		t.Fatalf("Checkpoint of an empty trail = %+v, %v; want the zero checkpoint and no error", cp, err)
	}
	if _, err := s.LastAuditCheckpoint(t.Context()); !errors.Is(err, rekey.ErrCheckpointNotFound) {
		t.Errorf("an empty trail got a checkpoint: %v", err)
	}
}

func TestCheckpointIdempotent(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	m := memkms.New()
	appendEvents(t, s, 0, 4)
	first := checkpoint(t, s, m, 4)
	if first.KeyID != "memkms/"+audit.Purpose || !first.CreatedAt.Equal(t0.Add(60*60*1e9)) || len(first.MAC) == 0 {
		t.Errorf("checkpoint = %+v", first)
	}
	again := checkpoint(t, s, m, 4)
	if !bytes.Equal(again.MAC, first.MAC) || !again.CreatedAt.Equal(first.CreatedAt) {
		t.Errorf("a second checkpoint of the same head = %+v, want the first %+v", again, first)
	}
	cps, err := s.ListAuditCheckpoints(t.Context(), 0, 0)
	if err != nil || len(cps) != 1 {
		t.Errorf("checkpoints = %v, %v; want one", cps, err)
	}
	appendEvents(t, s, 4, 2)
	checkpoint(t, s, m, 6)
}

func TestCheckpointArguments(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	appendEvents(t, s, 0, 1)
	for name, call := range map[string]func() error{
		"no MACer": func() error {
			_, err := audit.Checkpoint(t.Context(), s, nil, audit.Purpose, "k", t0)
			return err
		},
		"no purpose": func() error {
			_, err := audit.Checkpoint(t.Context(), s, memkms.New(), "", "k", t0)
			return err
		},
		"no store": func() error {
			_, err := audit.Checkpoint(t.Context(), nil, memkms.New(), audit.Purpose, "k", t0)
			return err
		},
	} {
		if err := call(); !errors.Is(err, rekey.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
}

// Checkpoint checks what it vouches for: the events since the last
// checkpoint, and that checkpoint.
func TestCheckpointRefusesTamperedChain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mac    func(tr *trail) rekey.MACer
		tamper func(a *attacker)
		want   want
	}{
		{"event edited after the last checkpoint", nil, func(a *attacker) {
			a.exec(`UPDATE audit_events SET reason = 'manual' WHERE seq = 22`)
		}, want{audit.KindEdited, 22, 0}},
		{"event deleted after the last checkpoint", nil, func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq = 21`)
		}, want{audit.KindDeleted, 21, 0}},
		{"last checkpoint's MAC replaced", nil, func(a *attacker) {
			a.exec(`UPDATE audit_checkpoints SET mac = randomblob(32) WHERE seq = ?`, cp2)
		}, want{audit.KindCheckpointMAC, cp2, cp2}},
		{"last checkpoint's event rewritten", nil, func(a *attacker) {
			a.rechain(cp2)
			a.exec(`UPDATE audit_events SET hash = ? WHERE seq = ?`, a.eventAt(cp1).Hash, cp2)
		}, want{audit.KindCheckpointMismatch, cp2, cp2}},
		{"last checkpoint's event deleted", nil, func(a *attacker) {
			a.exec(`DELETE FROM audit_events WHERE seq >= ?`, cp2)
		}, want{audit.KindTruncated, cp2, cp2}},
		{"another key", func(*trail) rekey.MACer { return memkms.New() }, func(*attacker) {},
			want{audit.KindCheckpointMAC, cp2, cp2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := buildTrail(t)
			tr.tamper(t, tc.tamper)
			m := tr.mac
			if tc.mac != nil {
				m = tc.mac(tr)
			}
			s := tr.open(t)
			cp, err := audit.Checkpoint(t.Context(), s, m, audit.Purpose, "k", t0)
			var ice *audit.InvalidChainError
			if !errors.Is(err, audit.ErrInvalidChain) || !errors.As(err, &ice) {
				t.Fatalf("Checkpoint = %+v, %v; want an *InvalidChainError", cp, err)
			}
			if p := ice.Problem; p.Kind != tc.want.kind || p.Seq != tc.want.seq || p.Checkpoint != tc.want.checkpoint {
				t.Errorf("refused with %s at seq %d (checkpoint %d), want %+v: %s", p.Kind, p.Seq, p.Checkpoint, tc.want, p.Message)
			}
			last, err := s.LastAuditCheckpoint(t.Context())
			if err != nil || last.Seq != cp2 {
				t.Errorf("after a refusal the last checkpoint is %d, %v; want %d", last.Seq, err, cp2)
			}
		})
	}
}

func TestCheckpointConcurrent(t *testing.T) {
	t.Parallel()
	tr := buildTrail(t)
	s := tr.open(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	seqs := make([]int64, 8)
	for i := range errs {
		wg.Go(func() {
			cp, err := audit.Checkpoint(t.Context(), s, tr.mac, audit.Purpose, "k", t0)
			errs[i], seqs[i] = err, cp.Seq
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil || seqs[i] != trailEvents {
			t.Errorf("Checkpoint %d = seq %d, %v; want seq %d", i, seqs[i], err, trailEvents)
		}
	}
	res, err := audit.Verify(t.Context(), s, tr.mac, audit.Purpose)
	if err != nil || !res.Valid || res.Checkpoints != 3 || res.UncheckedTail != nil {
		t.Errorf("Verify after concurrent checkpoints = %+v, %v", res, err)
	}
}

// The embedded default: the MAC key derives from the local keyring's
// master key, which is not in the database.
func TestCheckpointLocalKMS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	open := func(master []byte) *localkms.Client {
		c, err := localkms.New(t.Context(), localkms.Config{Keyring: filepath.Join(dir, "keyring"), MasterKey: master, Create: true})
		if err != nil {
			t.Fatalf("localkms.New: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	kms := open(master)
	s := memstore.New()
	appendEvents(t, s, 0, 5)
	checkpoint(t, s, kms, 5)
	appendEvents(t, s, 5, 3)
	checkpoint(t, s, kms, 8)

	// Another client on the same master key verifies.
	res, err := audit.Verify(t.Context(), s, open(master), audit.Purpose)
	if err != nil || !res.Valid || res.Checkpoints != 2 {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
	// Another purpose is another key.
	res, err = audit.Verify(t.Context(), s, kms, "something.else")
	if err != nil || res.Valid || res.FirstBad.Kind != audit.KindCheckpointMAC {
		t.Errorf("Verify under another purpose = %+v, %v; want checkpoint_mac", res, err)
	}
}

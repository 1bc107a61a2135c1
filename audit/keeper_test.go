package audit_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/store/memstore"
)

// flakyMAC fails the MAC calls whose number (1, 2, …) is in fail.
type flakyMAC struct {
	inner rekey.MACer
	calls atomic.Int64
	fail  map[int64]bool
}

func (f *flakyMAC) MAC(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	if f.fail[f.calls.Add(1)] {
		return nil, &rekey.UnreachableError{Service: "kms:test", Err: errors.New("reply lost")}
	}
	return f.inner.MAC(ctx, purpose, data)
}

// A backend failure while the anchor is MACed leaves nothing written: no
// checkpoint in the database that the anchor does not know of, which the
// next check would take for a deleted anchor (found by the fault torture:
// a lost reply on the anchor's MAC made the home "unanchored" for good).
func TestCheckpointWritesNothingWhenTheAnchorCannotBeMACed(t *testing.T) {
	ctx := context.Background()
	s, kms := memstore.New(), memkms.New()
	kr := rekey.NewKeyring(s, map[string]rekey.KMS{"mem": kms})
	if _, err := kr.CreateKey(ctx, "k", "mem", rekey.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	mac := &flakyMAC{inner: kms, fail: map[int64]bool{2: true}} // 1: the checkpoint, 2: the anchor
	k := &audit.Keeper{Store: s, MACer: mac, KeyID: "mem/" + audit.Purpose,
		AnchorPath: filepath.Join(t.TempDir(), "audit.anchor"), StoreID: "mem"}
	if err := k.Checkpoint(ctx); err == nil {
		t.Fatal("Checkpoint succeeded although the anchor's MAC failed")
	}
	if cp, err := s.LastAuditCheckpoint(ctx); !errors.Is(err, rekey.ErrCheckpointNotFound) {
		t.Fatalf("after the failed checkpoint the database holds %+v (%v): a checkpoint its anchor does not know", cp, err)
	}
	if err := k.Checkpoint(ctx); err != nil {
		t.Fatalf("the next checkpoint: %v", err)
	}
	res, err := k.Verify(ctx)
	if err != nil || !res.Valid || res.Checkpoints != 1 {
		t.Fatalf("verify after the retry = %+v, %v; want valid with one checkpoint", res, err)
	}
}

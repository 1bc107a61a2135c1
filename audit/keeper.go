package audit

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/rekeyhq/rekey"
)

// Keeper keeps one store's audit trail honest: it checkpoints the chain
// head with a backend-held MAC key and moves the anchor kept outside the
// database, and it verifies the whole trail against both. The CLI, the
// worker and library users share it, so the policy lives in one place.
type Keeper struct {
	// Store holds the trail.
	Store rekey.Store
	// MACer computes checkpoint MACs with a key held by a backend; nil
	// means no backend can (checkpoints are skipped, Verify says the MACs
	// were not checked).
	MACer rekey.MACer
	// KeyID names the MAC key in checkpoints ("local/rekey-audit-checkpoint").
	KeyID string
	// AnchorPath is the file keeping the newest checkpoint outside the
	// database; empty means none.
	AnchorPath string
	// StoreID names the store in the anchor (see ReadAnchor).
	StoreID string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives a warning when checkpoints are skipped; nil
	// discards.
	Logger *slog.Logger
}

func (k *Keeper) now() time.Time {
	if k.Now == nil {
		return time.Now()
	}
	return k.Now()
}

// Checkpoint MACs the head of the trail (a no-op when it is checkpointed
// already), after checking that the trail still holds the anchored
// checkpoint, and moves the anchor forward. It returns an error matching
// ErrInvalidChain (and writes nothing) for a trail that no longer holds
// its anchor.
func (k *Keeper) Checkpoint(ctx context.Context) error {
	if k.MACer == nil {
		if k.Logger != nil {
			k.Logger.Warn("no backend can MAC audit checkpoints: the audit trail is hash-chained but not checkpointed")
		}
		return nil
	}
	var err error
	if k.AnchorPath == "" {
		_, err = Checkpoint(ctx, k.Store, k.MACer, Purpose, k.KeyID, k.now())
	} else {
		_, err = CheckpointAnchored(ctx, k.Store, k.MACer, Purpose, k.KeyID, k.now(), k.AnchorPath, k.StoreID)
	}
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	return nil
}

// Verify verifies the whole trail: its hash chain, every checkpoint's MAC
// (when a MACer is set) and the anchor kept outside the database (when
// there is one).
func (k *Keeper) Verify(ctx context.Context) (Result, error) {
	var ap *rekey.AuditCheckpoint
	if k.AnchorPath != "" {
		anchor, ok, err := ReadAnchor(k.AnchorPath, k.StoreID)
		if err != nil {
			return Result{}, err
		}
		if ok {
			ap = &anchor
		}
	}
	return VerifyAnchored(ctx, k.Store, k.MACer, Purpose, ap)
}

// CheckpointIfMoved checkpoints the trail when its head is past sinceSeq:
// what a command that wrote events does before it exits.
func (k *Keeper) CheckpointIfMoved(ctx context.Context, sinceSeq int64) error {
	head, err := HeadSeq(ctx, k.Store)
	if err != nil {
		return err
	}
	if head <= sinceSeq {
		return nil
	}
	return k.Checkpoint(ctx)
}

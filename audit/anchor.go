package audit

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/internal/fileutil"
)

// An anchor is the newest checkpoint a machine made, kept outside the
// database. Checkpoints inside the database prove nothing about events
// after the newest one still there, so someone with write access to the
// database alone could rewrite history from some event on and delete every
// checkpoint after it; the next checkpoint would then vouch for the
// rewritten trail. The anchor closes that: VerifyAnchor fails when the
// database no longer holds the anchored checkpoint or its event, and
// CheckpointAnchored refuses to checkpoint such a trail.
//
// The anchor file maps a store's identity (its DSN without secrets, or its
// path) to that store's newest checkpoint, so several stores can share one
// directory. It is written 0600, under an exclusive lock, atomically, and
// only ever moves forward. Whoever can write the file can roll it back: it
// guards against the database's writers, not the machine's.

// anchorFile is the file's content.
type anchorFile struct {
	Version int                              `json:"version"`
	Stores  map[string]rekey.AuditCheckpoint `json:"stores"`
}

// ReadAnchor returns the checkpoint anchored for storeID in the file at
// path, and whether there is one. A missing file is no anchor.
func ReadAnchor(path, storeID string) (rekey.AuditCheckpoint, bool, error) {
	f, err := readAnchorFile(path)
	if err != nil {
		return rekey.AuditCheckpoint{}, false, err
	}
	cp, ok := f.Stores[storeID]
	return cp, ok, nil
}

func readAnchorFile(path string) (anchorFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return anchorFile{Version: 1, Stores: map[string]rekey.AuditCheckpoint{}}, nil
	}
	if err != nil {
		return anchorFile{}, fmt.Errorf("audit anchor %s: %w", path, err)
	}
	var f anchorFile
	if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 {
		return anchorFile{}, fmt.Errorf("audit anchor %s is not a rekey anchor file (corrupt?): move it aside to start a new one, after checking why", path)
	}
	if f.Stores == nil {
		f.Stores = map[string]rekey.AuditCheckpoint{}
	}
	return f, nil
}

// AdvanceAnchor records cp as storeID's anchor in the file at path, unless
// the file already anchors a later checkpoint for it. It holds an exclusive
// lock on path+".lock" (waiting for it until ctx ends) while it reads and
// atomically replaces the file (mode 0600). Errors: ctx's while waiting,
// a corrupt anchor file, and the file system's.
func AdvanceAnchor(ctx context.Context, path, storeID string, cp rekey.AuditCheckpoint) error {
	if cp.Seq <= 0 {
		return nil
	}
	unlock, err := fileutil.Lock(ctx, path+".lock")
	if err != nil {
		return fmt.Errorf("audit anchor: %w", err)
	}
	defer unlock()
	f, err := readAnchorFile(path)
	if err != nil {
		return err
	}
	if cur, ok := f.Stores[storeID]; ok && cur.Seq >= cp.Seq {
		return nil
	}
	f.Stores[storeID] = cp
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := fileutil.WriteAtomic(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("audit anchor: %w", err)
	}
	return nil
}

// VerifyAnchor checks the trail against anchor, a checkpoint kept outside
// the database: the anchor's MAC, that the database still holds that
// checkpoint unchanged, that the event at its seq is still there with the
// hash it recorded, and every hash and link after it. A failure is an
// invalid Result naming the anchored checkpoint (errors are the store's and
// the MACer's). With a nil MACer the anchor's MAC is not checked.
func VerifyAnchor(ctx context.Context, s rekey.Store, m rekey.MACer, purpose string, anchor rekey.AuditCheckpoint) (Result, error) {
	res, err := verifySince(ctx, s, m, purpose, &anchor)
	if err != nil || res.FirstBad != nil {
		res.Valid = false
		return res, err
	}
	got, err := s.ListAuditCheckpoints(ctx, anchor.Seq-1, 1)
	if err != nil {
		return Result{}, err
	}
	if len(got) == 0 || got[0].Seq != anchor.Seq || got[0].Hash != anchor.Hash || !hmac.Equal(got[0].MAC, anchor.MAC) {
		res.Valid = false
		res.FirstBad = &Problem{Seq: anchor.Seq, Kind: KindCheckpointMismatch, Checkpoint: anchor.Seq, Message: fmt.Sprintf(
			"the checkpoint of seq %d recorded outside the database is missing or different in the database: checkpoints were deleted or rewritten", anchor.Seq)}
		return res, nil
	}
	res.Valid = true
	return res, nil
}

// VerifyAnchored is Verify of the whole trail followed, when it passes and
// an anchor is given, by VerifyAnchor. A failed anchor check names the
// earliest event that may have been rewritten: the one after the newest
// checkpoint in the database that still verifies.
func VerifyAnchored(ctx context.Context, s rekey.Store, m rekey.MACer, purpose string, anchor *rekey.AuditCheckpoint) (Result, error) {
	res, err := Verify(ctx, s, m, purpose)
	if err != nil || !res.Valid || anchor == nil {
		return res, err
	}
	ar, err := VerifyAnchor(ctx, s, m, purpose, *anchor)
	if err != nil {
		return res, err
	}
	if ar.Valid {
		return res, nil
	}
	p := *ar.FirstBad
	if res.LastCheckpoint < anchor.Seq {
		first := res.LastCheckpoint + 1
		p.Message = fmt.Sprintf("%s; the trail may have been rewritten from seq %d on (the newest checkpoint still in the database is seq %d, the one recorded outside it seq %d)",
			p.Message, first, res.LastCheckpoint, anchor.Seq)
		p.Seq = first
	}
	res.Valid = false
	res.FirstBad = &p
	return res, nil
}

// CheckpointAnchored is Checkpoint that first checks the trail against the
// anchor (when there is one) and refuses, with an *InvalidChainError, to
// vouch for a trail that no longer holds it; then it advances the anchor to
// the new checkpoint.
func CheckpointAnchored(ctx context.Context, s rekey.Store, m rekey.MACer, purpose, keyID string, now time.Time, anchorPath, storeID string) (rekey.AuditCheckpoint, error) {
	if anchor, ok, err := ReadAnchor(anchorPath, storeID); err != nil {
		return rekey.AuditCheckpoint{}, err
	} else if ok {
		res, err := VerifyAnchor(ctx, s, m, purpose, anchor)
		if err != nil {
			return rekey.AuditCheckpoint{}, fmt.Errorf("audit: checkpoint: %w", err)
		}
		if !res.Valid {
			return rekey.AuditCheckpoint{}, &InvalidChainError{Problem: *res.FirstBad}
		}
	}
	cp, err := Checkpoint(ctx, s, m, purpose, keyID, now)
	if err != nil {
		return cp, err
	}
	if err := AdvanceAnchor(ctx, anchorPath, storeID, cp); err != nil {
		return cp, err
	}
	return cp, nil
}

package audit

import (
	"context"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
)

// Purpose is the MAC purpose rekey uses for audit checkpoints. Pass the same
// purpose to Checkpoint and Verify.
const Purpose = "audit.checkpoint"

// checkpointTag separates checkpoint MACs from every other use of the key.
const checkpointTag = "rekey.audit.checkpoint.v1"

// checkpointMessage is what a checkpoint's MAC covers: the tag, the seq and
// the hash, each string length-prefixed and each integer 8 bytes
// big-endian (as in rekey.AuditEvent.ComputeHash), so that no two
// (seq, hash) pairs encode alike.
func checkpointMessage(seq int64, hash string) []byte {
	b := make([]byte, 0, 8+len(checkpointTag)+8+8+len(hash))
	b = binary.BigEndian.AppendUint64(b, uint64(len(checkpointTag)))
	b = append(b, checkpointTag...)
	b = binary.BigEndian.AppendUint64(b, uint64(seq))
	b = binary.BigEndian.AppendUint64(b, uint64(len(hash)))
	b = append(b, hash...)
	return b
}

// Checkpoint MACs the head of the trail (its last event) with m's key for
// purpose and stores the checkpoint, naming keyID (which backend and
// purpose made it, e.g. "local/audit.checkpoint") and made at now.
//
// Before it vouches for the events written since the last checkpoint, it
// checks them: the last checkpoint's MAC and hash, then every hash and
// link up to the head. If they do not verify it stores nothing and returns
// an *InvalidChainError (errors.Is ErrInvalidChain). The first checkpoint
// of a trail checks the whole trail.
//
// If the head is already checkpointed it returns that checkpoint and writes
// nothing; if the trail is empty it returns the zero AuditCheckpoint and no
// error. A concurrent Checkpoint of the same head is not an error: the one
// stored is returned. Other errors are those of the store and of m.
func Checkpoint(ctx context.Context, s rekey.Store, m rekey.MACer, purpose, keyID string, now time.Time) (rekey.AuditCheckpoint, error) {
	cp, stored, err := prepareCheckpoint(ctx, s, m, purpose, keyID, now)
	if err != nil || stored || cp.Seq == 0 {
		return cp, err
	}
	return appendCheckpoint(ctx, s, cp)
}

// prepareCheckpoint verifies the trail since the last checkpoint and MACs
// its head, writing nothing. stored reports that the head is checkpointed
// already (cp is that checkpoint); a zero cp means an empty trail.
func prepareCheckpoint(ctx context.Context, s rekey.Store, m rekey.MACer, purpose, keyID string, now time.Time) (cp rekey.AuditCheckpoint, stored bool, err error) {
	switch {
	case s == nil:
		return cp, false, rekey.Invalidf("audit: checkpoint: no store")
	case m == nil:
		return cp, false, rekey.Invalidf("audit: checkpoint: no MAC key: the backend must implement rekey.MACer")
	case purpose == "":
		return cp, false, rekey.Invalidf("audit: checkpoint: no MAC purpose")
	}
	var anchor *rekey.AuditCheckpoint
	last, err := s.LastAuditCheckpoint(ctx)
	switch {
	case err == nil:
		anchor = &last
	case !errors.Is(err, rekey.ErrCheckpointNotFound):
		return cp, false, fmt.Errorf("audit: checkpoint: read the last checkpoint: %w", err)
	}
	res, err := verifySince(ctx, s, m, purpose, anchor)
	if err != nil {
		return cp, false, fmt.Errorf("audit: checkpoint: %w", err)
	}
	if !res.Valid {
		return cp, false, &InvalidChainError{Problem: *res.FirstBad}
	}
	switch {
	case res.LastSeq == 0:
		return cp, false, nil
	case anchor != nil && res.LastSeq == anchor.Seq:
		return *anchor, true, nil
	}
	mac, err := m.MAC(ctx, purpose, checkpointMessage(res.LastSeq, res.HeadHash))
	if err != nil {
		return cp, false, fmt.Errorf("audit: checkpoint of seq %d: MAC: %w", res.LastSeq, err)
	}
	return rekey.AuditCheckpoint{Seq: res.LastSeq, Hash: res.HeadHash, MAC: mac, KeyID: keyID, CreatedAt: rekey.NormalizeTime(now)}, false, nil
}

// appendCheckpoint stores cp. When another process stored the same head
// first, its checkpoint (same seq, hash and MAC: the MAC is deterministic)
// is returned instead.
func appendCheckpoint(ctx context.Context, s rekey.Store, cp rekey.AuditCheckpoint) (rekey.AuditCheckpoint, error) {
	err := s.AppendAuditCheckpoint(ctx, cp)
	if errors.Is(err, rekey.ErrConflict) {
		got, lerr := s.ListAuditCheckpoints(ctx, cp.Seq-1, 1)
		if lerr == nil && len(got) == 1 && got[0].Seq == cp.Seq && got[0].Hash == cp.Hash && hmac.Equal(got[0].MAC, cp.MAC) {
			return got[0], nil
		}
	}
	if err != nil {
		return rekey.AuditCheckpoint{}, fmt.Errorf("audit: checkpoint of seq %d: %w", cp.Seq, err)
	}
	return cp, nil
}

// verifySince checks the trail from anchor, a checkpoint, to the head: the
// anchor's MAC, its event's seq and hash, then every later event. Without
// an anchor it is Verify of the whole trail.
func verifySince(ctx context.Context, s rekey.Store, m rekey.MACer, purpose string, anchor *rekey.AuditCheckpoint) (Result, error) {
	v := newVerifier(ctx, m, purpose)
	if anchor == nil {
		bound, err := lastCheckpointSeq(ctx, s)
		if err != nil {
			return Result{}, err
		}
		v.cps = &checkpointStream{ctx: ctx, s: s, bound: bound}
		v.events = newEventStream(ctx, s, 0)
		err = v.run()
		return v.res, err
	}
	// Checkpoints made after the anchor (by a concurrent Checkpoint) are
	// not needed to vouch for the head: the anchor is.
	v.cps = &checkpointStream{ctx: ctx, s: s, after: anchor.Seq, bound: anchor.Seq}
	v.events = newEventStream(ctx, s, anchor.Seq-1)
	fail := func(p Problem) (Result, error) {
		v.res.FirstBad = &p
		return v.res, nil
	}
	if p, err := v.checkMAC(*anchor); err != nil || p != nil {
		if err != nil {
			return Result{}, err
		}
		p.Seq = anchor.Seq
		return fail(*p)
	}
	e, ok, err := v.events.next()
	switch {
	case err != nil:
		return Result{}, err
	case !ok || e.Seq != anchor.Seq:
		return fail(Problem{Seq: anchor.Seq, Kind: KindTruncated, Checkpoint: anchor.Seq, Message: fmt.Sprintf(
			"%s names an event the trail no longer holds: events were deleted", describeCheckpoint(*anchor))})
	case e.Hash != anchor.Hash:
		return fail(Problem{Seq: anchor.Seq, Kind: KindCheckpointMismatch, Checkpoint: anchor.Seq, Message: fmt.Sprintf(
			"%s records hash %s, but %s now has hash %s: the trail was rewritten", describeCheckpoint(*anchor), anchor.Hash, describe(e), e.Hash)})
	case e.Hash != e.ComputeHash():
		return fail(Problem{Seq: e.Seq, Kind: KindEdited, Message: fmt.Sprintf(
			"event %s was edited: its fields do not give its stored hash", describe(e))})
	}
	v.res.Events++
	v.res.LastSeq, v.res.HeadHash = e.Seq, e.Hash
	v.accept(e)
	v.lastGood, v.afterGood = anchor.Seq, rekey.AuditEvent{}
	v.res.Checkpoints++
	err = v.run()
	return v.res, err
}

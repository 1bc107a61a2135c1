package audit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
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
// Keeper.Checkpoint refuses to checkpoint such a trail.
//
// The anchor file maps a store's identity (its DSN without secrets, or its
// path) to that store's newest checkpoint, so several stores can share one
// directory. It is written 0600, under an exclusive lock, atomically, and
// only ever moves forward. Its content is MACed with the backend-held key
// that MACs the checkpoints, so that whoever can write the file but cannot
// use that key cannot edit it, forge it or copy an older checkpoint into
// it; and each entry carries a counter and the hash of the entry it
// replaced, so that the chain of anchors (forwarded to the log with each
// checkpoint) shows a rollback to an older, genuine file.

// anchorVersion is the format of the files AdvanceAnchor writes. Format 1
// (no MAC) is refused.
const anchorVersion = 2

// anchorTag separates anchor MACs from checkpoint MACs made with the same
// key and purpose.
const anchorTag = "rekey.audit.anchor.v2"

// Anchor is one store's entry in the anchor file: its newest checkpoint,
// how many times the entry moved forward, and the hash of the entry it
// replaced.
type Anchor struct {
	rekey.AuditCheckpoint
	// N counts the entries this store's anchor has had (1 for the first).
	N int64 `json:"n"`
	// Prev is the SHA-256 (hex) of the entry this one replaced (see
	// Anchor.Hash), "" for the first.
	Prev string `json:"prev"`
}

// Hash returns the SHA-256 (hex) of the entry's JSON encoding: what the
// next entry records as Prev, and what the log line of a checkpoint names.
func (a Anchor) Hash() string {
	b, _ := json.Marshal(a)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// anchorFile is the file's content: the stores' entries, exactly as MACed.
type anchorFile struct {
	Version int             `json:"version"`
	Stores  json.RawMessage `json:"stores"`
	MAC     []byte          `json:"mac,omitempty"`
}

func anchorMessage(stores []byte) []byte {
	b := make([]byte, 0, 16+len(anchorTag)+len(stores))
	b = binary.BigEndian.AppendUint64(b, uint64(len(anchorTag)))
	b = append(b, anchorTag...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(stores)))
	return append(b, stores...)
}

// anchorProblem is the *InvalidChainError of an anchor file that is not
// what rekey wrote.
func anchorProblem(format string, args ...any) error {
	return &InvalidChainError{Problem: Problem{Seq: 1, Kind: KindAnchor, Message: fmt.Sprintf(format, args...)}}
}

// readAnchorFile reads and, when m is not nil, authenticates the anchor
// file. A missing file is an empty one. A file that is not an anchor file,
// is in format 1, or whose MAC is not m's gives an *InvalidChainError of
// kind KindAnchor.
func readAnchorFile(ctx context.Context, path string, m rekey.MACer) (map[string]Anchor, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Anchor{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit anchor %s: %w", path, err)
	}
	var f anchorFile
	if err := json.Unmarshal(b, &f); err != nil || (f.Version != 1 && f.Version != anchorVersion) {
		return nil, anchorProblem("the audit anchor %s is not a rekey anchor file (edited or corrupt): compare the trail with the checkpoints in the log, then run rekey audit verify --reanchor", path)
	}
	if f.Version == 1 {
		return nil, anchorProblem("the audit anchor %s is in format 1, which carries no MAC (written by an older rekey, or forged to avoid the MAC): compare the trail with the checkpoints in the log, then run rekey audit verify --reanchor", path)
	}
	if m != nil {
		want, err := m.MAC(ctx, Purpose, anchorMessage(f.Stores))
		if err != nil {
			return nil, fmt.Errorf("audit anchor %s: MAC: %w", path, err)
		}
		if !hmac.Equal(want, f.MAC) {
			return nil, anchorProblem("the audit anchor %s does not carry the backend key's MAC of its content: it was edited, forged or copied from another home (made with another key); compare the trail with the checkpoints in the log, then run rekey audit verify --reanchor", path)
		}
	}
	stores := map[string]Anchor{}
	if err := json.Unmarshal(f.Stores, &stores); err != nil {
		return nil, anchorProblem("the audit anchor %s is not a rekey anchor file (corrupt): %v", path, err)
	}
	return stores, nil
}

// ReadAnchor returns the anchor of storeID in the file at path, and whether
// there is one, after checking the file's MAC with m (not checked when m is
// nil). A missing file is no anchor. A file whose MAC is wrong, in the
// unMACed format 1, or not an anchor file gives an *InvalidChainError of
// kind KindAnchor; other errors are the file system's and m's.
func ReadAnchor(ctx context.Context, path, storeID string, m rekey.MACer) (Anchor, bool, error) {
	stores, err := readAnchorFile(ctx, path, m)
	if err != nil {
		return Anchor{}, false, err
	}
	a, ok := stores[storeID]
	return a, ok, nil
}

// anchorLockTimeout bounds the wait for the anchor's lock file: a process
// stopped while holding it (SIGSTOP, a frozen VM) must not stop every
// other process sharing the home from checkpointing, or the worker from
// starting its next cycle.
var anchorLockTimeout = 10 * time.Second

// ErrAnchorLocked means another process held the anchor's lock file for
// longer than the wait allows (10s). Nothing was written.
var ErrAnchorLocked = errors.New("the audit anchor is locked by another process")

// AdvanceAnchor records cp as storeID's anchor in the file at path, unless
// the file already anchors a later checkpoint for it, and MACs the file
// with m. It holds an exclusive lock on path+".lock" (waiting for it until
// ctx ends, 10s at most) while it reads, authenticates and atomically
// replaces the file (mode 0600). It refuses a file whose MAC is not m's
// (as ReadAnchor). Errors: ctx's while waiting, ErrAnchorLocked after
// 10s, m's, and the file system's.
func AdvanceAnchor(ctx context.Context, path, storeID string, cp rekey.AuditCheckpoint, m rekey.MACer) error {
	return writeAnchor(ctx, path, storeID, cp, m, false)
}

// ResetAnchor is AdvanceAnchor for an operator who checked the trail: it
// starts storeID's anchor afresh at cp whatever the file holds (a file
// that does not authenticate is replaced, other stores' entries dropped).
func ResetAnchor(ctx context.Context, path, storeID string, cp rekey.AuditCheckpoint, m rekey.MACer) error {
	return writeAnchor(ctx, path, storeID, cp, m, true)
}

func writeAnchor(ctx context.Context, path, storeID string, cp rekey.AuditCheckpoint, m rekey.MACer, reset bool) error {
	commit, unlock, err := prepareAnchor(ctx, path, storeID, cp, m, reset)
	if err != nil {
		return err
	}
	defer unlock()
	return commit()
}

// prepareAnchor does all of writeAnchor that can fail on the backend — it
// takes the file's lock, reads it, and MACs the new content — and returns
// commit, which writes the file, and unlock. Callers that must not leave a
// checkpoint in the database without its anchor prepare first, then store
// the checkpoint, then commit. A cp the anchor already covers gives a
// commit that writes nothing.
func prepareAnchor(ctx context.Context, path, storeID string, cp rekey.AuditCheckpoint, m rekey.MACer, reset bool) (commit func() error, unlock func(), err error) {
	nothing := func() error { return nil }
	if cp.Seq <= 0 {
		return nothing, func() {}, nil
	}
	if m == nil {
		return nil, nil, rekey.Invalidf("audit anchor: no MAC key")
	}
	lctx, cancel := context.WithTimeout(ctx, anchorLockTimeout)
	unlock, err = fileutil.Lock(lctx, path+".lock")
	cancel()
	if err != nil && ctx.Err() == nil && errors.Is(lctx.Err(), context.DeadlineExceeded) {
		return nil, nil, fmt.Errorf("audit anchor: lock file %s: %w: still held after %s (another rekey process is moving the anchor, or was stopped while doing so): wait for it to finish or stop it, then retry; nothing was written",
			path+".lock", ErrAnchorLocked, anchorLockTimeout)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("audit anchor: %w", err)
	}
	fail := func(err error) (func() error, func(), error) {
		unlock()
		return nil, nil, err
	}
	stores, err := readAnchorFile(ctx, path, m)
	var ice *InvalidChainError
	switch {
	case err != nil && reset && errors.As(err, &ice):
		stores = map[string]Anchor{}
	case err != nil:
		return fail(err)
	}
	next := Anchor{AuditCheckpoint: cp, N: 1}
	if cur, ok := stores[storeID]; ok {
		if cur.Seq >= cp.Seq && !reset {
			return nothing, unlock, nil
		}
		next.N, next.Prev = cur.N+1, cur.Hash()
	}
	stores[storeID] = next
	raw, err := json.Marshal(stores)
	if err != nil {
		return fail(err)
	}
	mac, err := m.MAC(ctx, Purpose, anchorMessage(raw))
	if err != nil {
		return fail(fmt.Errorf("audit anchor: MAC: %w", err))
	}
	b, err := json.Marshal(anchorFile{Version: anchorVersion, Stores: raw, MAC: mac})
	if err != nil {
		return fail(err)
	}
	commit = func() error {
		if err := fileutil.WriteAtomic(path, append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("audit anchor: %w", err)
		}
		return nil
	}
	return commit, unlock, nil
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
	return verifyAnchorAfter(ctx, s, m, purpose, *anchor, res)
}

// verifyAnchorAfter is the anchor half of VerifyAnchored, given the
// Result of a Verify of the whole trail that passed.
func verifyAnchorAfter(ctx context.Context, s rekey.Store, m rekey.MACer, purpose string, anchor rekey.AuditCheckpoint, res Result) (Result, error) {
	ar, err := VerifyAnchor(ctx, s, m, purpose, anchor)
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

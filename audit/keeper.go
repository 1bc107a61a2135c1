package audit

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/rekeyhq/rekey"
)

// GuardChecker is a store whose database guards the trail itself (SQLite's
// append-only triggers). AuditGuardProblems says what is wrong with those
// guards now, or was found wrong and restored when the store opened; nil
// means nothing.
type GuardChecker interface {
	AuditGuardProblems(ctx context.Context) ([]string, error)
}

// Keeper keeps one store's audit trail honest: it checkpoints the chain
// head with a backend-held MAC key and moves the MACed anchor kept outside
// the database, and it verifies the whole trail against both, against the
// state the trail describes (CrossCheck), and against the store's own
// guards. The CLI, the worker and library users share it, so the policy
// lives in one place. Its methods are safe for concurrent use.
//
// A Keeper remembers the outcome of its last Verify: once a Verify found
// the trail invalid, or could not check it, Checkpoint refuses until a
// Verify passes, so that a process never vouches for a trail it found bad.
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
	// Guards checks the store's own guards of the trail; nil means none.
	Guards GuardChecker
	// OpenHead is the seq of the head of the trail when this process
	// opened the store (setup.Open sets it). A trail with events but
	// neither checkpoint nor anchor is invalid (KindUnanchored), and never
	// checkpointed, unless every event in it came after OpenHead (this
	// process wrote them: a new home); an operator must check it and run
	// Reanchor. 0 treats every event as this process's own.
	OpenHead int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives a warning when checkpoints are skipped; nil
	// discards.
	Logger *slog.Logger

	mu    sync.Mutex
	bad   error     // why the last Verify did not pass; nil when it did (or none ran)
	known *verified // the last check that passed, nil when none did (or one failed since)
}

func (k *Keeper) now() time.Time {
	if k.Now == nil {
		return time.Now()
	}
	return k.Now()
}

// Checkpoint MACs the head of the trail (a no-op when it is checkpointed
// already) and moves the anchor forward, after checking what it vouches
// for: the store's guards, the anchor file's MAC and that the trail still
// holds the anchored checkpoint, the hash chain, and the trail against the
// store's state (CrossCheck). The chain and the cross-check read the whole
// trail the first time, and after that only what was appended since this
// Keeper's last check that passed (see check). It returns
// an error matching ErrInvalidChain, and writes nothing, when any of them
// fails, when the last Verify of this Keeper did not pass, and for a trail
// with events but neither checkpoint nor anchor that this process did not
// write alone (see OpenHead).
func (k *Keeper) Checkpoint(ctx context.Context) error {
	if k.MACer == nil {
		if k.Logger != nil {
			k.Logger.Warn("no backend can MAC audit checkpoints: the audit trail is hash-chained but not checkpointed")
		}
		return nil
	}
	k.mu.Lock()
	bad := k.bad
	k.mu.Unlock()
	if bad != nil {
		return fmt.Errorf("audit checkpoint refused: the last verification did not pass: %w", bad)
	}
	if _, err := k.check(ctx, true); err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	return k.checkpoint(ctx, false)
}

// checkpoint makes the checkpoint and moves (or, with reset, restarts) the
// anchor. Every backend call (the checkpoint's MAC, the anchor's MAC) is
// made before anything is written, so that a backend failure can never
// leave a checkpoint in the database that the anchor does not know of
// (which the next check would take for a deleted anchor).
func (k *Keeper) checkpoint(ctx context.Context, reset bool) error {
	cp, stored, err := prepareCheckpoint(ctx, k.Store, k.MACer, Purpose, k.KeyID, k.now())
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	if cp.Seq == 0 {
		return nil
	}
	if k.AnchorPath == "" {
		if !stored {
			_, err = appendCheckpoint(ctx, k.Store, cp)
		}
		return wrapCheckpointErr(err)
	}
	commit, unlock, err := prepareAnchor(ctx, k.AnchorPath, k.StoreID, cp, k.MACer, reset)
	if err != nil {
		return wrapCheckpointErr(err)
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	if !stored {
		got, err := appendCheckpoint(ctx, k.Store, cp)
		if err != nil {
			return wrapCheckpointErr(err)
		}
		if !got.CreatedAt.Equal(cp.CreatedAt) || got.KeyID != cp.KeyID {
			// Another process stored this head first: anchor its row.
			locked = false
			unlock()
			return wrapCheckpointErr(writeAnchor(ctx, k.AnchorPath, k.StoreID, got, k.MACer, reset))
		}
	}
	return wrapCheckpointErr(commit())
}

func wrapCheckpointErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("audit checkpoint: %w", err)
}

// check runs the checks of Verify: the chain, the cross-check, the anchor
// and the store's guards. Checkpoint runs them all too: a checkpoint
// vouches for the whole trail. With since, the chain and the cross-check
// start where the last check of this Keeper that passed ended (when one
// did): what came before was checked then, and a rewrite of it changes the
// hash remembered (verifyFrom); the anchor and the guards are checked in
// full every time. A long-running process (the worker checkpoints every
// cycle) so reads each event once, not once per cycle; Verify (the
// worker's periodic check, rekey audit verify) always reads everything.
// It returns the chain's Result and an *InvalidChainError for the first
// problem.
func (k *Keeper) check(ctx context.Context, since bool) (res Result, err error) {
	fail := func(res Result, p Problem) (Result, error) {
		res.Valid = false
		res.FirstBad = &p
		return res, &InvalidChainError{Problem: p}
	}
	var from *verified
	if since {
		k.mu.Lock()
		from = k.known
		k.mu.Unlock()
	}
	// The state first, then the trail, read once for the chain and the
	// cross-check together.
	cross, err := newCrossPass(ctx, k.Store, from)
	if err != nil {
		return res, err
	}
	defer func() {
		// Remember what passed; forget after anything else, so that the
		// next check reads the whole trail again.
		k.mu.Lock()
		if err == nil {
			k.known = &verified{chain: cross.point, facts: cross.out}
		} else {
			k.known = nil
		}
		k.mu.Unlock()
	}()
	if from != nil {
		res, err = verifyFrom(ctx, k.Store, k.MACer, Purpose, from.chain, cross.event)
	} else {
		res, err = verifyAll(ctx, k.Store, k.MACer, Purpose, cross.event)
	}
	if err != nil {
		return res, err
	}
	if !res.Valid {
		return res, &InvalidChainError{Problem: *res.FirstBad}
	}
	// What is missing or contradicted names the damage best; the anchor
	// then says whether what is left is what this home wrote.
	if p := cross.finish(); p != nil {
		return fail(res, *p)
	}
	if k.AnchorPath != "" {
		anchor, ok, err := ReadAnchor(ctx, k.AnchorPath, k.StoreID, k.MACer)
		var ice *InvalidChainError
		switch {
		case errors.As(err, &ice):
			return fail(res, ice.Problem)
		case err != nil:
			return res, err
		case ok:
			// The whole chain was verified above: only the anchor is left.
			ar, err := verifyAnchorAfter(ctx, k.Store, k.MACer, Purpose, anchor.AuditCheckpoint, res)
			if err != nil {
				return res, err
			}
			if !ar.Valid {
				return fail(res, *ar.FirstBad)
			}
		case res.LastCheckpoint > 0 || res.Checkpoints > 0:
			return fail(res, Problem{Seq: 1, Kind: KindUnanchored, Checkpoint: res.LastCheckpoint, Message: fmt.Sprintf(
				"the database has checkpoints up to seq %d but the anchor %s has none for this store: it was deleted (or the database copied from another home); compare the trail with the checkpoints in the log, then run rekey audit verify --reanchor",
				res.LastCheckpoint, k.AnchorPath)})
		case res.Events > 0 && k.OpenHead > 0:
			return fail(res, Problem{Seq: 1, Kind: KindUnanchored, Message: fmt.Sprintf(
				"nothing vouches for the %d event(s) of the trail: the database has no checkpoint and the anchor %s none for this store; either they were deleted (and the trail possibly rewritten), or the first command died before it checkpointed: compare the trail with the log, then run rekey audit verify --reanchor",
				res.Events, k.AnchorPath)})
		}
	}
	// Last: a dropped trigger is how the trail was tampered with, and the
	// checks above name what was done with it.
	if k.Guards != nil {
		problems, err := k.Guards.AuditGuardProblems(ctx)
		if err != nil {
			return res, err
		}
		if len(problems) > 0 {
			return fail(res, Problem{Seq: 1, Kind: KindStoreGuard, Message: strings.Join(problems, "; ") +
				": someone with write access to the database changed its schema; the trail itself is checked by the hash chain, the checkpoints and the anchor"})
		}
	}
	return res, nil
}

// Verify verifies the whole trail: the store's guards, its hash chain,
// every checkpoint's MAC (when a MACer is set), the MACed anchor kept
// outside the database, and the trail against the store's state. A
// tampered trail is an invalid Result, not an error; the error is for
// what could not be read or MACed (the trail is then not verified). With
// no MACer the Result says so in Unverifiable.
func (k *Keeper) Verify(ctx context.Context) (Result, error) {
	res, err := k.check(ctx, false)
	var ice *InvalidChainError
	if errors.As(err, &ice) {
		err = nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case err != nil:
		k.bad = fmt.Errorf("could not verify the audit trail: %w", err)
		return Result{}, err
	case !res.Valid:
		k.bad = &InvalidChainError{Problem: *res.FirstBad}
	case res.Unverifiable != "":
		k.bad = errors.New(res.Unverifiable)
	default:
		k.bad = nil
	}
	return res, nil
}

// Reanchor is what an operator runs after checking a trail that Verify
// rejects only because of its anchor (KindAnchor, KindUnanchored): when
// the store's guards, the hash chain, the checkpoints' MACs and the
// cross-check with the state all pass, it checkpoints the head and starts
// the anchor afresh there. It returns an *InvalidChainError for any other
// problem, and writes nothing then.
func (k *Keeper) Reanchor(ctx context.Context) (Result, error) {
	if k.MACer == nil {
		return Result{}, rekey.Invalidf("audit: reanchor: no backend can MAC checkpoints")
	}
	saved := k.AnchorPath
	k.AnchorPath = "" // everything but the anchor
	res, err := k.check(ctx, false)
	k.AnchorPath = saved
	if err != nil {
		return res, err
	}
	if err := k.checkpoint(ctx, true); err != nil {
		return res, err
	}
	return k.Verify(ctx)
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

// LogCheckpoint writes cp to l as one structured record, message
// "audit_checkpoint", with seq, hash, mac (hex), key_id and created_at, so
// that a copy of every checkpoint lives outside the home: compared with
// the trail later, it shows a trail cut short or rewritten even when the
// database and the anchor were rewritten together. A MAC is no key
// material. A nil l does nothing.
func LogCheckpoint(l *slog.Logger, cp rekey.AuditCheckpoint) {
	if l == nil {
		return
	}
	l.LogAttrs(context.Background(), slog.LevelInfo, CheckpointLogMessage,
		slog.Int64("seq", cp.Seq),
		slog.String("hash", cp.Hash),
		slog.String("mac", hex.EncodeToString(cp.MAC)),
		slog.String("key_id", cp.KeyID),
		slog.Time("created_at", cp.CreatedAt.UTC()),
	)
}

// CheckpointLogMessage is the message of the records LogCheckpoint writes.
const CheckpointLogMessage = "audit_checkpoint"

// TailCheckpoints calls fn with every checkpoint with a seq greater than
// afterSeq, in seq order, and returns the seq of the last one fn accepted
// (afterSeq if none): the worker forwards every checkpoint, made by any
// process sharing the store, to the log with it.
func TailCheckpoints(ctx context.Context, s rekey.Store, afterSeq int64, fn func(rekey.AuditCheckpoint) error) (int64, error) {
	last := afterSeq
	for {
		page, err := s.ListAuditCheckpoints(ctx, last, pageSize)
		if err != nil {
			return last, fmt.Errorf("audit: tail checkpoints: %w", err)
		}
		for _, cp := range page {
			if cp.Seq <= last {
				return last, fmt.Errorf("audit: tail checkpoints after seq %d: the store returned seq %d", last, cp.Seq)
			}
			if err := fn(cp); err != nil {
				return last, err
			}
			last = cp.Seq
		}
		if len(page) < pageSize {
			return last, nil
		}
	}
}

package audit

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
)

// Kind names what Verify found wrong with the trail.
type Kind string

// Problem kinds.
const (
	// KindEdited: an event's fields no longer give its hash, or its hash is
	// not the one the next event recorded as prev_hash.
	KindEdited Kind = "edited"
	// KindDeleted: events are missing at this seq (a gap, or later events
	// renumbered to close one).
	KindDeleted Kind = "deleted"
	// KindInserted: the event at this seq is not part of the chain as
	// written (later events renumbered to make room, or a duplicate seq).
	KindInserted Kind = "inserted"
	// KindReordered: the event at this seq was written at another position.
	KindReordered Kind = "reordered"
	// KindCheckpointMismatch: a checkpoint whose MAC verifies (or, without
	// a MACer, any checkpoint) records another hash than its event has now,
	// though the chain is consistent: the trail was rewritten, hashes
	// recomputed, at or after Seq.
	KindCheckpointMismatch Kind = "checkpoint_mismatch"
	// KindCheckpointMAC: a checkpoint's MAC is not the backend key's MAC of
	// its seq and hash: the checkpoint was forged or edited (or made with
	// another key), so the events after the last good checkpoint, from
	// Seq, are not vouched for.
	KindCheckpointMAC Kind = "checkpoint_mac"
	// KindTruncated: a checkpoint names an event beyond the end of the
	// trail: the events from Seq on were deleted.
	KindTruncated Kind = "truncated"
	// KindUncheckedTail (informational, not a failure): the events from Seq
	// on come after the last checkpoint, so a consistent rewrite of them
	// could not be detected yet.
	KindUncheckedTail Kind = "unchecked_tail"
)

// Problem is one finding of Verify.
type Problem struct {
	// Seq is the first event concerned: for chain problems the first bad
	// one; for checkpoint problems the earliest possibly rewritten one.
	Seq  int64 `json:"seq"`
	Kind Kind  `json:"kind"`
	// Checkpoint is the seq of the checkpoint involved, if any.
	Checkpoint int64 `json:"checkpoint,omitempty"`
	// Message says what was found, naming the events by seq, type and key.
	Message string `json:"message"`
}

func (p *Problem) String() string { return fmt.Sprintf("%s at seq %d: %s", p.Kind, p.Seq, p.Message) }

// Result is what Verify found.
type Result struct {
	// Valid is true when no problem was found (an unchecked tail is not a
	// problem; read Unverifiable too).
	Valid bool `json:"valid"`
	// Events is the number of events read, LastSeq and HeadHash the seq
	// and hash of the last one (0 and "" for an empty trail).
	Events   int64  `json:"events"`
	LastSeq  int64  `json:"last_seq"`
	HeadHash string `json:"head_hash"`
	// Checkpoints is the number of checkpoints that verified, and
	// LastCheckpoint the seq of the newest of them (0 if none).
	Checkpoints    int   `json:"checkpoints"`
	LastCheckpoint int64 `json:"last_checkpoint"`
	// FirstBad is the first problem found, nil when Valid.
	FirstBad *Problem `json:"first_bad,omitempty"`
	// UncheckedTail, when set, names the events after the last good
	// checkpoint (Kind KindUncheckedTail). It does not make the trail
	// invalid.
	UncheckedTail *Problem `json:"unchecked_tail,omitempty"`
	// Unverifiable, when set, says what could not be checked and why (no
	// MACer: the chain and checkpoint hashes were checked, their MACs not).
	Unverifiable string `json:"unverifiable,omitempty"`
}

// ErrInvalidChain is matched (errors.Is) by *InvalidChainError.
var ErrInvalidChain = errors.New("audit chain failed verification")

// InvalidChainError is returned by Checkpoint when the events since the
// last checkpoint do not verify: it will not vouch for them.
type InvalidChainError struct{ Problem Problem }

func (e *InvalidChainError) Error() string {
	return fmt.Sprintf("audit chain failed verification: %s (run rekey audit verify)", e.Problem.String())
}

// Is makes errors.Is(err, ErrInvalidChain) true.
func (e *InvalidChainError) Is(target error) bool { return target == ErrInvalidChain }

// Verify reads the whole trail in seq order and checks it: seqs contiguous
// from 1, each event's hash (rekey.AuditEvent.ComputeHash), each prev_hash
// link (rekey.GenesisHash first), and each checkpoint: that its event has
// its hash and, when m is not nil, that its MAC is m's MAC for purpose of
// the checkpoint message, compared in constant time. It names the first
// problem in Result.FirstBad (see Kind) and the events not yet covered by a
// checkpoint in Result.UncheckedTail.
//
// With a nil m the MACs are not checked and Result.Unverifiable says so.
// Memory does not grow with the trail: events and checkpoints are read in
// pages. Checkpoints written while Verify runs are left for the next run.
//
// The error is for failures to read the store or to compute a MAC (an
// *rekey.UnreachableError, say); a tampered trail is not an error but an
// invalid Result.
func Verify(ctx context.Context, s rekey.Store, m rekey.MACer, purpose string) (Result, error) {
	if s == nil {
		return Result{}, rekey.Invalidf("audit: verify: no store")
	}
	if m != nil && purpose == "" {
		return Result{}, rekey.Invalidf("audit: verify: no MAC purpose")
	}
	return verifyAll(ctx, s, m, purpose, nil)
}

// verifyAll is Verify, calling each (when not nil) with every event that
// checked out.
func verifyAll(ctx context.Context, s rekey.Store, m rekey.MACer, purpose string, each func(*verifier, rekey.AuditEvent)) (Result, error) {
	bound, err := lastCheckpointSeq(ctx, s)
	if err != nil {
		return Result{}, fmt.Errorf("audit: verify: %w", err)
	}
	v := newVerifier(ctx, m, purpose)
	v.each = each
	v.cps = &checkpointStream{ctx: ctx, s: s, bound: bound}
	v.events = newEventStream(ctx, s, 0)
	if err := v.run(); err != nil {
		return Result{}, fmt.Errorf("audit: verify: %w", err)
	}
	if m == nil {
		v.res.Unverifiable = "no MAC key given (the backend holding it is not available): the hash chain and each checkpoint's hash were checked, the checkpoints' MACs were not, so a rewrite of the whole trail together with its checkpoints would pass"
	}
	return v.res, nil
}

func lastCheckpointSeq(ctx context.Context, s rekey.Store) (int64, error) {
	cp, err := s.LastAuditCheckpoint(ctx)
	switch {
	case errors.Is(err, rekey.ErrCheckpointNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read the last audit checkpoint: %w", err)
	}
	return cp.Seq, nil
}

// verifier holds the state of one pass over the trail.
type verifier struct {
	ctx     context.Context
	m       rekey.MACer
	purpose string
	events  *eventStream
	cps     *checkpointStream

	prev      rekey.AuditEvent // the last good event; Seq 0 and the genesis hash before the first
	lastGood  int64            // seq of the newest checkpoint that verified
	afterGood rekey.AuditEvent // the first good event after lastGood (Seq 0 until there is one)
	recent    *hashWindow      // hashes of recent good events
	res       Result
	// each, when set, is called with every event that checked out (its
	// checkpoints included), in seq order.
	each func(v *verifier, e rekey.AuditEvent)
}

func newVerifier(ctx context.Context, m rekey.MACer, purpose string) *verifier {
	return &verifier{
		ctx:     ctx,
		m:       m,
		purpose: purpose,
		prev:    rekey.AuditEvent{Hash: rekey.GenesisHash},
		recent:  newHashWindow(pageSize),
	}
}

// run checks every event and checkpoint and fills v.res.
func (v *verifier) run() error {
	for {
		e, ok, err := v.events.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		v.res.Events++
		v.res.LastSeq, v.res.HeadHash = e.Seq, e.Hash
		if v.res.FirstBad != nil {
			continue // only counting now
		}
		p, err := v.checkLink(e)
		if err != nil {
			return err
		}
		if p != nil {
			v.res.FirstBad = p
			continue
		}
		v.accept(e)
		if p, err = v.checkCheckpointsAt(e); err != nil {
			return err
		}
		v.res.FirstBad = p
		if p == nil && v.each != nil {
			v.each(v, e)
		}
	}
	if v.res.FirstBad == nil {
		p, err := v.checkCheckpointsBeyondEnd()
		if err != nil {
			return err
		}
		v.res.FirstBad = p
	}
	v.res.Valid = v.res.FirstBad == nil
	v.res.LastCheckpoint = v.lastGood
	if v.res.Valid && v.res.LastSeq > v.lastGood {
		first, last := v.lastGood+1, v.res.LastSeq
		since := "there is no checkpoint yet"
		if v.lastGood > 0 {
			since = fmt.Sprintf("the last checkpoint is of seq %d", v.lastGood)
		}
		v.res.UncheckedTail = &Problem{Seq: first, Kind: KindUncheckedTail, Message: fmt.Sprintf(
			"%d event(s), seq %d..%d (from %s), are not yet covered by a checkpoint (%s): deleting or consistently rewriting them would not be detected until one covers them",
			last-first+1, first, last, v.firstAfterGood(), since)}
	}
	return nil
}

// accept makes e, which checked out, the previous event.
func (v *verifier) accept(e rekey.AuditEvent) {
	v.prev = e
	v.recent.add(e.Hash, e.Seq)
	if v.afterGood.Seq == 0 {
		v.afterGood = e
	}
}

// checkLink checks that e follows v.prev, and classifies the first
// event that does not.
func (v *verifier) checkLink(e rekey.AuditEvent) (*Problem, error) {
	p := v.prev
	x := p.Seq + 1
	switch {
	case e.Seq == p.Seq && p.Seq > 0:
		return &Problem{Seq: e.Seq, Kind: KindInserted, Message: fmt.Sprintf(
			"two events have seq %d, %s and %s: one of them was inserted", e.Seq, describeBody(p), describeBody(e))}, nil
	case e.Seq < x:
		return &Problem{Seq: e.Seq, Kind: KindReordered, Message: fmt.Sprintf(
			"event %s comes after %s in the trail: events are out of order", describe(e), describe(p))}, nil
	case e.Seq > x:
		return &Problem{Seq: x, Kind: KindDeleted, Message: fmt.Sprintf(
			"%s deleted: the trail goes from %s to %s", seqRange(x, e.Seq-1), describeOrStart(p), describe(e))}, nil
	}
	selfOK := e.Hash == e.ComputeHash()
	linked := e.PrevHash == p.Hash
	if selfOK && linked {
		return nil, nil
	}
	ahead, err := v.events.peek(pageSize)
	if err != nil {
		return nil, err
	}
	// An event whose stored hash is right for another seq was written at
	// that position.
	if !selfOK {
		if s, ok := hashesAsSeq(e, x-pageSize, x+pageSize); ok {
			if s < x {
				return &Problem{Seq: s, Kind: KindInserted, Message: fmt.Sprintf(
					"%s inserted: the event now at seq %d (%s) was written as seq %d, and the later events renumbered",
					seqRange(s, x-1), x, describeBody(e), s)}, nil
			}
			for _, f := range ahead {
				if f.PrevHash == p.Hash || hashesAs(f, x) {
					return &Problem{Seq: x, Kind: KindReordered, Message: fmt.Sprintf(
						"events were reordered: seq %d holds the event written as seq %d (%s), and seq %d holds the one written as seq %d (%s)",
						x, s, describeBody(e), f.Seq, x, describeBody(f))}, nil
				}
			}
			return &Problem{Seq: x, Kind: KindDeleted, Message: fmt.Sprintf(
				"%s deleted and the later events renumbered: seq %d holds the event written as seq %d (%s), after %s",
				seqRange(x, s-1), x, s, describeBody(e), describeOrStart(p))}, nil
		}
	}
	// An extra event: the one that should be at x comes right after it.
	if len(ahead) > 0 {
		if n := ahead[0]; n.PrevHash == p.Hash || hashesAs(n, x) {
			return &Problem{Seq: x, Kind: KindInserted, Message: fmt.Sprintf(
				"event %s was inserted: the next event (%s) links to %s", describe(e), describeBody(n), describeOrStart(p))}, nil
		}
	}
	if linked || !selfOK {
		return &Problem{Seq: x, Kind: KindEdited, Message: fmt.Sprintf(
			"event %s was edited: its fields do not give its stored hash", describe(e))}, nil
	}
	// e is consistent in itself but does not link to p.
	if s, ok := v.recent.seq(e.PrevHash); ok && s < p.Seq {
		return &Problem{Seq: s + 1, Kind: KindInserted, Message: fmt.Sprintf(
			"%s inserted: %s links to seq %d", seqRange(s+1, p.Seq), describe(e), s)}, nil
	}
	for _, f := range ahead {
		if f.Hash == e.PrevHash {
			return &Problem{Seq: x, Kind: KindReordered, Message: fmt.Sprintf(
				"events were reordered: %s links to %s, which comes after it", describe(e), describe(f))}, nil
		}
	}
	if p.Seq == 0 {
		return &Problem{Seq: x, Kind: KindEdited, Message: fmt.Sprintf(
			"event %s was edited: it does not link to the start of the trail (its prev_hash is not the genesis hash)", describe(e))}, nil
	}
	if v.lastGood == p.Seq {
		// p is vouched for by a checkpoint, so e is the one rewritten.
		return &Problem{Seq: x, Kind: KindEdited, Message: fmt.Sprintf(
			"event %s was edited and its hash recomputed: its prev_hash is not the hash of %s, which a checkpoint vouches for", describe(e), describe(p))}, nil
	}
	return &Problem{Seq: p.Seq, Kind: KindEdited, Message: fmt.Sprintf(
		"event %s was edited and its hash recomputed (or events after it deleted): %s records another prev_hash", describe(p), describe(e))}, nil
}

// checkCheckpointsAt checks the checkpoints up to e.Seq, e having checked
// out.
func (v *verifier) checkCheckpointsAt(e rekey.AuditEvent) (*Problem, error) {
	for {
		cp, ok, err := v.cps.peek()
		if err != nil || !ok || cp.Seq > e.Seq {
			return nil, err
		}
		v.cps.pop()
		if cp.Seq < e.Seq {
			// The events are contiguous here, so this names no event.
			return &Problem{Seq: v.lastGood + 1, Kind: KindCheckpointMismatch, Checkpoint: cp.Seq, Message: fmt.Sprintf(
				"%s names seq %d, which the trail does not hold", describeCheckpoint(cp), cp.Seq)}, nil
		}
		// The MAC first: a checkpoint that does not authenticate proves
		// nothing about its event either way.
		if p, err := v.checkMAC(cp); err != nil || p != nil {
			return p, err
		}
		if cp.Hash != e.Hash {
			return &Problem{Seq: v.lastGood + 1, Kind: KindCheckpointMismatch, Checkpoint: cp.Seq, Message: fmt.Sprintf(
				"%s records hash %s, but %s now has hash %s in a consistent chain: the trail was rewritten with its hashes recomputed, at or after %s (%s)",
				describeCheckpoint(cp), cp.Hash, describe(e), e.Hash, v.firstAfterGood(), v.lastGoodText())}, nil
		}
		v.lastGood = cp.Seq
		v.afterGood = rekey.AuditEvent{}
		v.res.Checkpoints++
	}
}

// checkCheckpointsBeyondEnd reports the first checkpoint of a seq beyond
// the last event.
func (v *verifier) checkCheckpointsBeyondEnd() (*Problem, error) {
	cp, ok, err := v.cps.peek()
	if err != nil || !ok {
		return nil, err
	}
	if p, err := v.checkMAC(cp); err != nil || p != nil {
		return p, err
	}
	end := v.res.LastSeq
	return &Problem{Seq: end + 1, Kind: KindTruncated, Checkpoint: cp.Seq, Message: fmt.Sprintf(
		"the trail ends at seq %d, but %s vouches for events up to seq %d: %s deleted",
		end, describeCheckpoint(cp), cp.Seq, seqRange(end+1, cp.Seq))}, nil
}

// checkMAC returns a problem when v has a MACer and cp's MAC is not its MAC
// of cp's message.
func (v *verifier) checkMAC(cp rekey.AuditCheckpoint) (*Problem, error) {
	if v.m == nil {
		return nil, nil
	}
	ok, err := macOK(v.ctx, v.m, v.purpose, cp)
	if err != nil || ok {
		return nil, err
	}
	return &Problem{Seq: v.lastGood + 1, Kind: KindCheckpointMAC, Checkpoint: cp.Seq, Message: fmt.Sprintf(
		"%s does not carry the backend key's MAC of its seq and hash: it was forged or edited (or made with another key), and nothing vouches for the events from %s on (%s)",
		describeCheckpoint(cp), v.firstAfterGood(), v.lastGoodText())}, nil
}

// firstAfterGood names the first event after the last good checkpoint.
func (v *verifier) firstAfterGood() string {
	if v.afterGood.Seq == 0 {
		return fmt.Sprintf("seq %d", v.lastGood+1)
	}
	return describe(v.afterGood)
}

func (v *verifier) lastGoodText() string {
	if v.lastGood == 0 {
		return "no earlier checkpoint verifies"
	}
	return fmt.Sprintf("the first event after the last good checkpoint, of seq %d", v.lastGood)
}

// seqRange names events first..last and agrees a verb with them.
func seqRange(first, last int64) string {
	if first == last {
		return fmt.Sprintf("event seq %d was", first)
	}
	return fmt.Sprintf("events seq %d..%d were", first, last)
}

// macOK reports whether cp's MAC is m's MAC of its message, compared in
// constant time.
func macOK(ctx context.Context, m rekey.MACer, purpose string, cp rekey.AuditCheckpoint) (bool, error) {
	want, err := m.MAC(ctx, purpose, checkpointMessage(cp.Seq, cp.Hash))
	if err != nil {
		return false, fmt.Errorf("MAC of the checkpoint of seq %d: %w", cp.Seq, err)
	}
	return hmac.Equal(cp.MAC, want), nil
}

// hashesAs reports whether e's stored hash is that of its fields at seq.
func hashesAs(e rekey.AuditEvent, seq int64) bool {
	e.Seq = seq
	return e.Hash == e.ComputeHash()
}

// hashesAsSeq looks for a seq in [lo, hi], other than e's, at which e's
// fields give its stored hash: the position e was written at.
func hashesAsSeq(e rekey.AuditEvent, lo, hi int64) (int64, bool) {
	for s := max(lo, 1); s <= hi; s++ {
		if s != e.Seq && hashesAs(e, s) {
			return s, true
		}
	}
	return 0, false
}

// describe names an event by seq, type and key.
func describe(e rekey.AuditEvent) string {
	return fmt.Sprintf("seq %d (%s)", e.Seq, describeBody(e))
}

func describeBody(e rekey.AuditEvent) string {
	if e.Key == "" {
		return string(e.Type)
	}
	return fmt.Sprintf("%s, key %q", e.Type, e.Key)
}

func describeOrStart(e rekey.AuditEvent) string {
	if e.Seq == 0 {
		return "the start of the trail"
	}
	return describe(e)
}

func describeCheckpoint(cp rekey.AuditCheckpoint) string {
	s := fmt.Sprintf("the checkpoint of seq %d", cp.Seq)
	if !cp.CreatedAt.IsZero() {
		s += " made " + cp.CreatedAt.UTC().Format(time.RFC3339)
	}
	if cp.KeyID != "" {
		s += fmt.Sprintf(" with %q", cp.KeyID)
	}
	return s
}

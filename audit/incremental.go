package audit

import (
	"context"
	"fmt"
	"maps"

	"github.com/rekeyhq/rekey"
)

// verified is what a Keeper remembers of the last check of its trail that
// passed: the chain up to an event, and the facts the trail recorded up to
// another. The next Checkpoint of the same Keeper checks only what was
// appended since (see Keeper.Checkpoint); Verify always reads the whole
// trail.
type verified struct {
	chain chainPoint
	facts crossFacts
}

// chainPoint is a position of the trail that was verified: the event at
// seq had hash, the checkpoints up to lastCheckpoint verified (checkpoints
// of them), and the trail held events events up to seq.
type chainPoint struct {
	seq            int64
	hash           string
	lastCheckpoint int64
	checkpoints    int
	events         int64
}

// crossFacts is what a cross-check read from the trail: the facts recorded
// by the events up to seq, each checked against the state then.
type crossFacts struct {
	seq  int64
	seen map[fact]bool
}

// verifyFrom verifies the trail after from, a position verified before by
// the same process: the event at from.seq must still be there with the
// hash it had (a rewrite of anything up to it changes that hash, or breaks
// the chain the full Verify checks), then every event, link and checkpoint
// after it is checked as Verify does. Checkpoints made since for events up
// to from.seq are checked against their events one by one. What is up to
// from.seq is not read again: an edit there that does not recompute the
// hashes is left to the next full Verify, which finds it.
func verifyFrom(ctx context.Context, s rekey.Store, m rekey.MACer, purpose string, from chainPoint, each func(*verifier, rekey.AuditEvent)) (Result, error) {
	if from.seq == 0 {
		return verifyAll(ctx, s, m, purpose, each)
	}
	bound, err := lastCheckpointSeq(ctx, s)
	if err != nil {
		return Result{}, fmt.Errorf("audit: verify: %w", err)
	}
	v := newVerifier(ctx, m, purpose)
	v.each = each
	v.cps = &checkpointStream{ctx: ctx, s: s, after: from.lastCheckpoint, bound: bound}
	v.events = newEventStream(ctx, s, from.seq-1)
	v.lastGood, v.res.Checkpoints, v.res.Events = from.lastCheckpoint, from.checkpoints, from.events
	fail := func(p Problem) (Result, error) {
		v.res.FirstBad = &p
		v.res.Valid = false
		return v.res, nil
	}
	e, ok, err := v.events.next()
	switch {
	case err != nil:
		return Result{}, fmt.Errorf("audit: verify: %w", err)
	case !ok || e.Seq != from.seq:
		return fail(Problem{Seq: from.seq, Kind: KindTruncated, Message: fmt.Sprintf(
			"event seq %d, verified earlier by this process, is no longer in the trail: events were deleted", from.seq)})
	case e.Hash != from.hash:
		return fail(Problem{Seq: from.seq, Kind: KindCheckpointMismatch, Message: fmt.Sprintf(
			"%s had hash %s when this process verified it and now has hash %s: the trail was rewritten", describe(e), from.hash, e.Hash)})
	case e.Hash != e.ComputeHash():
		return fail(Problem{Seq: e.Seq, Kind: KindEdited, Message: fmt.Sprintf(
			"event %s was edited: its fields do not give its stored hash", describe(e))})
	}
	v.res.LastSeq, v.res.HeadHash = e.Seq, e.Hash
	v.accept(e)
	v.afterGood = rekey.AuditEvent{}
	// Checkpoints of events up to from.seq, made since: each against its
	// event, read alone.
	for {
		cp, ok, err := v.cps.peek()
		if err != nil {
			return Result{}, fmt.Errorf("audit: verify: %w", err)
		}
		if !ok || cp.Seq > from.seq {
			break
		}
		v.cps.pop()
		if p, err := v.checkMAC(cp); err != nil || p != nil {
			if err != nil {
				return Result{}, fmt.Errorf("audit: verify: %w", err)
			}
			return fail(*p)
		}
		at, err := s.ListAudit(ctx, rekey.AuditQuery{AfterSeq: cp.Seq - 1, Limit: 1})
		if err != nil {
			return Result{}, fmt.Errorf("audit: verify: read the event of the checkpoint of seq %d: %w", cp.Seq, err)
		}
		if len(at) == 0 || at[0].Seq != cp.Seq || at[0].Hash != cp.Hash {
			return fail(Problem{Seq: cp.Seq, Kind: KindCheckpointMismatch, Checkpoint: cp.Seq, Message: fmt.Sprintf(
				"%s names an event the trail no longer holds with that hash: the trail was rewritten", describeCheckpoint(cp))})
		}
		v.lastGood = max(v.lastGood, cp.Seq)
		v.res.Checkpoints++
	}
	if err := v.run(); err != nil {
		return Result{}, fmt.Errorf("audit: verify: %w", err)
	}
	return v.res, nil
}

// crossPass is a cross-check made while the chain is read (Keeper.check
// reads the trail once for both): the state is read first, then every
// event that checks out is given to event, then finish compares.
type crossPass struct {
	head  int64  // the head when the state was read
	st    *state // the state
	out   crossFacts
	point chainPoint // the chain at the last event up to head
	later map[fact]bool
	bad   *Problem
}

// newCrossPass reads the head and the state of s; from, when not nil, is
// what an earlier pass read (its facts are copied, not changed).
func newCrossPass(ctx context.Context, s rekey.Store, from *verified) (*crossPass, error) {
	head, err := HeadSeq(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("audit: cross-check: %w", err)
	}
	st, err := readState(ctx, s)
	if err != nil {
		return nil, err
	}
	c := &crossPass{head: head, st: st, out: crossFacts{seen: map[fact]bool{}}, later: map[fact]bool{}}
	if from != nil {
		c.out.seq, c.point = from.facts.seq, from.chain
		maps.Copy(c.out.seen, from.facts.seen)
	}
	return c, nil
}

// event takes in e, an event that checked out. Events after head were
// written after the state was read: their facts count for this pass (the
// state may hold what they record), but are not kept for the next, which
// reads them again and checks them against the state it reads.
func (c *crossPass) event(v *verifier, e rekey.AuditEvent) {
	if e.Seq <= c.out.seq {
		return // read by an earlier pass
	}
	if e.Seq > c.head {
		for _, f := range eventFacts(e) {
			c.later[f] = true
		}
		return
	}
	for _, f := range eventFacts(e) {
		c.out.seen[f] = true
	}
	if c.bad == nil {
		if msg := contradiction(e, c.st.keys, c.st.versions, c.st.rotations); msg != "" {
			c.bad = &Problem{Seq: e.Seq, Kind: KindStateMismatch, Message: fmt.Sprintf(
				"event %s says %s: a forged event", describe(e), msg)}
		}
	}
	c.out.seq = e.Seq
	if v != nil {
		c.point = chainPoint{seq: e.Seq, hash: e.Hash, lastCheckpoint: v.lastGood, checkpoints: v.res.Checkpoints, events: v.res.Events}
	}
}

// finish returns the first problem: an event the state contradicts, or a
// state with no event recording it.
func (c *crossPass) finish() *Problem {
	if c.bad != nil {
		return c.bad
	}
	return c.st.missing(func(f fact) bool { return c.out.seen[f] || c.later[f] }, c.head)
}

// crossCheckFrom is CrossCheck reading the events after from.seq only
// (nil: all of them).
func crossCheckFrom(ctx context.Context, s rekey.Store, from *verified) (*Problem, error) {
	c, err := newCrossPass(ctx, s, from)
	if err != nil {
		return nil, err
	}
	err = eachEvent(ctx, s, rekey.AuditQuery{AfterSeq: c.out.seq}, func(e rekey.AuditEvent) error {
		c.event(nil, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: cross-check: %w", err)
	}
	return c.finish(), nil
}

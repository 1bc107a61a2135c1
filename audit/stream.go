package audit

import (
	"context"
	"fmt"

	"github.com/rekeyhq/rekey"
)

// pageSize is how many events or checkpoints one store call reads. It is
// also how far Verify looks ahead to tell an insertion from a reordering.
const pageSize = 1000

// eventStream reads the whole trail after a seq, in seq order, one page at
// a time, with a bounded look-ahead.
type eventStream struct {
	ctx   context.Context
	s     rekey.Store
	after int64 // seq of the last event read from the store
	buf   []rekey.AuditEvent
	eof   bool
}

func newEventStream(ctx context.Context, s rekey.Store, afterSeq int64) *eventStream {
	return &eventStream{ctx: ctx, s: s, after: afterSeq}
}

// fill reads pages until the buffer holds at least n events or the trail
// ends.
func (st *eventStream) fill(n int) error {
	for len(st.buf) < n && !st.eof {
		page, err := st.s.ListAudit(st.ctx, rekey.AuditQuery{AfterSeq: st.after, Limit: pageSize})
		if err != nil {
			return fmt.Errorf("read audit events after seq %d: %w", st.after, err)
		}
		if len(page) > 0 {
			last := page[len(page)-1].Seq
			if last <= st.after {
				// A store that does not honour AfterSeq would loop forever.
				return fmt.Errorf("read audit events after seq %d: the store returned seq %d", st.after, last)
			}
			st.after = last
		}
		st.buf = append(st.buf, page...)
		st.eof = len(page) < pageSize
	}
	return nil
}

// next returns the next event, or ok false at the end of the trail.
func (st *eventStream) next() (e rekey.AuditEvent, ok bool, err error) {
	if err := st.fill(1); err != nil {
		return e, false, err
	}
	if len(st.buf) == 0 {
		return e, false, nil
	}
	e = st.buf[0]
	st.buf[0] = rekey.AuditEvent{}
	st.buf = st.buf[1:]
	return e, true, nil
}

// peek returns up to n of the events after the one next returned last,
// without consuming them.
func (st *eventStream) peek(n int) ([]rekey.AuditEvent, error) {
	if err := st.fill(n); err != nil {
		return nil, err
	}
	return st.buf[:min(n, len(st.buf))], nil
}

// checkpointStream reads checkpoints with afterSeq < seq <= bound in seq
// order, one page at a time. The bound is the last checkpoint when
// verification began: checkpoints written while it runs are left for the
// next run, so that one made for an event appended meanwhile is not taken
// for evidence of truncation.
type checkpointStream struct {
	ctx   context.Context
	s     rekey.Store
	after int64
	bound int64
	buf   []rekey.AuditCheckpoint
	eof   bool
}

func (st *checkpointStream) fill() error {
	for len(st.buf) == 0 && !st.eof {
		if st.after >= st.bound {
			st.eof = true
			return nil
		}
		page, err := st.s.ListAuditCheckpoints(st.ctx, st.after, pageSize)
		if err != nil {
			return fmt.Errorf("read audit checkpoints after seq %d: %w", st.after, err)
		}
		st.eof = len(page) < pageSize
		for _, cp := range page {
			if cp.Seq <= st.after {
				return fmt.Errorf("read audit checkpoints after seq %d: the store returned seq %d", st.after, cp.Seq)
			}
			st.after = cp.Seq
			if cp.Seq > st.bound {
				st.eof = true
				break
			}
			st.buf = append(st.buf, cp)
		}
	}
	return nil
}

// peek returns the next checkpoint without consuming it.
func (st *checkpointStream) peek() (rekey.AuditCheckpoint, bool, error) {
	if err := st.fill(); err != nil {
		return rekey.AuditCheckpoint{}, false, err
	}
	if len(st.buf) == 0 {
		return rekey.AuditCheckpoint{}, false, nil
	}
	return st.buf[0], true, nil
}

// pop consumes the checkpoint peek returned.
func (st *checkpointStream) pop() { st.buf = st.buf[1:] }

// hashWindow remembers the hashes of the last few good events, so that an
// event linking back past its predecessor can be named as following
// inserted events.
type hashWindow struct {
	seqs  map[string]int64
	order []string // ring of the hashes in seqs
	next  int
}

func newHashWindow(n int) *hashWindow {
	return &hashWindow{seqs: make(map[string]int64, n), order: make([]string, 0, n)}
}

func (w *hashWindow) add(hash string, seq int64) {
	if len(w.order) < cap(w.order) {
		w.order = append(w.order, hash)
	} else {
		delete(w.seqs, w.order[w.next])
		w.order[w.next] = hash
		w.next = (w.next + 1) % len(w.order)
	}
	w.seqs[hash] = seq
}

func (w *hashWindow) seq(hash string) (int64, bool) {
	s, ok := w.seqs[hash]
	return s, ok
}

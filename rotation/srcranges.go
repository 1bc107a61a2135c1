package rotation

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
)

// Sources in the shared re-wrap. A DEK source's rows are split into
// ranges too, by its id column, and those ranges are "one more set of
// ranges of the rotation": stored in rekey's own store with the rotation's
// other ranges (one SplitRewrap), each under its own lease, worked by any
// worker that has the source configured. Nothing is written to the
// application's database but the compare-and-swaps of its rows.
//
// A range is stored as (From, To] bounds (rekey.RewrapRange). A source
// range's bounds are encoded so that, as strings, they sort after every id
// of rekey's own DEKs (NewID ids are 0-9 and A-Z) and in the order they
// were made, whatever order the source's ids have:
//
//	"~source" SEP SEQ SEP NAME SEP ID
//
// with SEQ an 8-digit sequence over all source bounds of the split and ID
// the source's own id as text ("" for the bound that opens a source). So
// the rotation's ranges are: rekey's DEKs (the last of which has a source
// bound as To: no upper bound), then per source (NAME, "") … the source's
// bounds …, its last range ending at the next source's opening bound or
// unbounded. Within a source range, ids are compared by the source's
// database (ListDEKsUpTo), never as strings.
//
// A source batch commits in two steps, as in a plain source pass: the
// swaps in the application's table (after confirming the range's lease in
// rekey's store), then the range's checkpoint (CommitRangeBatch with no
// swaps, fenced by the range's lease). A crash or a lost lease between
// them leaves rows on the target version that are not listed again.
const srcBoundPrefix = "~source" + sourceCursorSep

// srcBound encodes bound seq of source name at id.
func srcBound(seq int, name, id string) string {
	return fmt.Sprintf("%s%08d%s%s%s%s", srcBoundPrefix, seq, sourceCursorSep, name, sourceCursorSep, id)
}

// parseSrcBound decodes a source bound; ok is false for anything else (an
// id of rekey's own DEKs, or "").
func parseSrcBound(b string) (name, id string, ok bool) {
	rest, ok := strings.CutPrefix(b, srcBoundPrefix)
	if !ok {
		return "", "", false
	}
	seq, rest, ok := strings.Cut(rest, sourceCursorSep)
	if !ok {
		return "", "", false
	}
	if _, err := strconv.Atoi(seq); err != nil {
		return "", "", false
	}
	name, id, ok = strings.Cut(rest, sourceCursorSep)
	return name, id, ok
}

// rangeSpan is what one range covers: rows of source (rekey's own DEKs
// when "") with ids in (from, to], "" meaning no bound, compared in the
// ids' own order.
type rangeSpan struct {
	source   string
	from, to string
}

func spanOf(rg rekey.RewrapRange) rangeSpan {
	name, from, ok := parseSrcBound(rg.From)
	if !ok {
		sp := rangeSpan{from: rg.From, to: rg.To}
		if _, _, src := parseSrcBound(rg.To); src {
			sp.to = "" // the last range of rekey's own DEKs
		}
		return sp
	}
	sp := rangeSpan{source: name, from: from}
	if n, to, ok := parseSrcBound(rg.To); ok && n == name && to != "" {
		sp.to = to
	}
	return sp
}

// sourceBounder is what a source needs to be split into ranges
// (source.Source has it).
type sourceBounder interface {
	DEKBounds(ctx context.Context, key string, notVersion, every int) ([]string, error)
	ListDEKsUpTo(ctx context.Context, q rekey.DEKQuery, upTo string) ([]rekey.DEK, error)
}

// sourceBounds returns the bounds that split the sources of key into
// ranges of about size rows, to follow the bounds of rekey's own DEKs
// (storeBounds). A source is split only when it can be (sourceBounder)
// and holds more than one range; the others are left to the plain source
// pass. A source that cannot be read is left out (logged).
func (d *driver) sourceBounds(ctx context.Context, storeBounds []string, size int) []string {
	if n := len(storeBounds); n > 0 && storeBounds[n-1] >= srcBoundPrefix {
		return nil // ids that would sort among source bounds: keep sources whole
	}
	var out []string
	for _, s := range d.e.sourcesFor(d.key.Name) {
		sb, ok := s.DEKs.(sourceBounder)
		if !ok || strings.Contains(s.Name, sourceCursorSep) {
			continue
		}
		bounds, err := sb.DEKBounds(ctx, d.key.Name, d.r.ToVersion, size)
		if err != nil {
			d.e.log.Warn("DEK source cannot be split into ranges; one worker re-wraps it after the shared ranges", "key_id", d.key.Name,
				"rotation_id", d.r.ID, "source", s.Name, "error", err)
			continue
		}
		if len(bounds) == 0 {
			continue
		}
		out = append(out, srcBound(len(out), s.Name, ""))
		for _, b := range bounds {
			out = append(out, srcBound(len(out), s.Name, b))
		}
	}
	return out
}

// sourceNamed returns the source of key named name.
func (e *Engine) sourceNamed(key, name string) (Source, sourceBounder, bool) {
	for _, s := range e.sourcesFor(key) {
		if s.Name == name {
			sb, ok := s.DEKs.(sourceBounder)
			return s, sb, ok
		}
	}
	return Source{}, nil, false
}

// workSourceRange is workRange over a source range: rows of the source
// with ids in the span not on the target version, batch by batch from the
// range's cursor, each batch swapped in the source and then checkpointed
// in rekey's store under the range's lease.
func (e *Engine) workSourceRange(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, r rekey.Rotation, rg rekey.RewrapRange, count int) (int64, error) {
	sp := spanOf(rg)
	s, sb, ok := e.sourceNamed(k.Name, sp.source)
	if !ok {
		return 0, fmt.Errorf("rotation %s of key %s: range %d is of DEK source %s, which this worker does not have: configure the same dek_sources on every replica",
			r.ID, r.Key, rg.Index, sp.source)
	}
	rs, _ := e.rangeSharer()
	cursor := rg.Cursor
	if cursor == "" {
		cursor = sp.from
	}
	e.log.Info("re-wrapping a source range of a shared rotation", "key_id", k.Name, "rotation_id", r.ID, "source", s.Name,
		"range", rg.Index, "of", count, "from", cursor, "to", sp.to)
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return done, context.Cause(ctx)
		}
		deks, err := sb.ListDEKsUpTo(ctx, rekey.DEKQuery{Key: k.Name, NotVersion: r.ToVersion, After: cursor, Limit: e.cfg.BatchSize}, sp.to)
		if err != nil {
			return done, sourceErr(s.Name, fmt.Errorf("list DEKs of key %s in source %s: %w", k.Name, s.Name, err))
		}
		ck := &rangeCheckpoint{e: e, rs: rs, kl: kl, r: r, index: rg.Index, count: count, from: cursor, cursor: cursor}
		if len(deks) > 0 {
			res, err := e.rewrapSourceBatch(ctx, kl, b, s, deks, r.ToVersion)
			if err != nil {
				return done, err
			}
			ck.cursor = deks[len(deks)-1].ID
			if _, err := ck.commitBatch(ctx, nil, res.done, res.failed); err != nil {
				return done, err
			}
			done += res.done
			cursor = ck.cursor
			if err := e.hit(failpoint.RewrapAfterBatchCommit); err != nil {
				return done, err
			}
		}
		if len(deks) < e.cfg.BatchSize {
			return done, ck.finish(ctx)
		}
	}
}

// sourceResume returns, per source split into ranges, the cursor after its
// last range: the plain source pass that follows the ranges starts there
// (the rows before it were met by a range).
func sourceResume(ranges []rekey.RewrapRange) map[string]string {
	out := map[string]string{}
	for _, rg := range ranges {
		sp := spanOf(rg)
		if sp.source == "" {
			continue
		}
		c := rg.Cursor
		if c == "" {
			c = sp.from
		}
		out[sp.source] = c // ranges are in order: the last one wins
	}
	return out
}

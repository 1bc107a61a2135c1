package metrics

import (
	"context"

	"github.com/rekeyhq/rekey/status"
)

// SourceCountsFunc counts a key's rows per version in every DEK source that
// may hold rows of it (rotation.Engine.SourceCounts); a source that cannot
// be counted carries its error.
type SourceCountsFunc func(ctx context.Context, key string) []status.SourceCount

// SetSourceCounts gives the metrics the DEK sources' counts: from then on,
// rekey_retirement_blocked counts their rows as the engine's retirement
// gate does (status.BlockingDEKs: the rows on the version, those of no
// known version, and a source that cannot be counted blocks). Until it is
// called, only rekey's own DEKs count.
func (m *Metrics) SetSourceCounts(fn SourceCountsFunc) {
	if fn == nil {
		m.sources.Store(nil)
		return
	}
	m.sources.Store(&fn)
}

// readSourceCounts fills each snapshot's DEK source counts.
func (m *Metrics) readSourceCounts(ctx context.Context, snap []keySnapshot) {
	fp := m.sources.Load()
	if fp == nil {
		return
	}
	for i := range snap {
		snap[i].sources = (*fp)(ctx, snap[i].key.Name)
	}
}

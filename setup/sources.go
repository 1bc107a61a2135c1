package setup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/httpapi"
	"github.com/rekeyhq/rekey/metrics"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/source"
	"github.com/rekeyhq/rekey/status"
)

// openSources prepares every configured DEK source. It does not connect:
// a source whose database is down or whose table is missing fails the
// cycles of its key (loudly) while the other keys rotate; CheckSources
// and `rekey source check` say what is wrong.
func openSources(cfg *config.Config) ([]*source.Source, error) {
	var out []*source.Source
	for i, sc := range cfg.DEKSources {
		s, err := source.Open(source.Config{
			Name: sc.Name, Driver: sc.Driver, DSN: sc.DSN.Value(), Table: sc.Table,
			IDColumn: sc.IDColumn, WrappedColumn: sc.WrappedColumn, VersionColumn: sc.VersionColumn,
			Key: sc.Key, KeyColumn: sc.KeyColumn, Where: sc.Where,
			Format: sc.Format, EncryptionContext: sc.EncryptionContext,
		})
		if err != nil {
			for _, o := range out {
				_ = o.Close()
			}
			return nil, fmt.Errorf("dek_sources[%d]: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// engineSources is the engine's view of the sources.
func engineSources(srcs []*source.Source) []rotation.Source {
	out := make([]rotation.Source, len(srcs))
	for i, s := range srcs {
		c := s.Config()
		out[i] = rotation.Source{Name: s.Name(), DEKs: s, PerRowKey: c.KeyColumn != "", Native: c.Native(), Format: c.Format, EncryptionContext: c.EncryptionContext}
	}
	return out
}

// Source returns the DEK source called name, or nil.
func (s *System) Source(name string) *source.Source {
	for _, src := range s.Sources {
		if src.Name() == name {
			return src
		}
	}
	return nil
}

// CheckSources checks every DEK source online (source.Check) and returns
// one error per source that is wrong, each naming the source.
func (s *System) CheckSources(ctx context.Context) []error {
	var errs []error
	for _, src := range s.Sources {
		if err := src.Check(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func closeSources(srcs []*source.Source) error {
	var errs []error
	for _, s := range srcs {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// registerSourceMetrics registers rekey_source_deks and rekey_source_up
// when there are sources.
func registerSourceMetrics(reg prometheus.Registerer, st rekey.Store, srcs []*source.Source, logger *slog.Logger) error {
	if len(srcs) == 0 {
		return nil
	}
	counters := make([]metrics.SourceCounter, len(srcs))
	for i, s := range srcs {
		counters[i] = s
	}
	if err := reg.Register(metrics.NewSourceCollector(st, counters, logger)); err != nil {
		return fmt.Errorf("register DEK source metrics: %w", err)
	}
	return nil
}

// addHTTPSources gives the HTTP server the DEK sources: /readyz probes
// each, the status views count each key's rows in them.
func addHTTPSources(cfg *httpapi.Config, s *System) {
	if len(s.Sources) == 0 {
		return
	}
	for _, src := range s.Sources {
		cfg.Sources = append(cfg.Sources, httpapi.Source{Name: src.Name(), Key: src.Config().Key, Probe: src.Probe})
	}
	cfg.SourceCounts = s.sourceCounts()
}

// sourceCounts returns the count of a key's rows in every DEK source, each
// call bounded in time (a hung database must not hang the status page or
// a scrape), or nil when there are no sources.
func (s *System) sourceCounts() metrics.SourceCountsFunc {
	if len(s.Sources) == 0 || s.Engine == nil {
		return nil
	}
	eng := s.Engine
	return func(ctx context.Context, key string) []status.SourceCount {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return eng.SourceCounts(ctx, key)
	}
}

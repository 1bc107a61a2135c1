package metrics

import (
	"context"
	"log/slog"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rekeyhq/rekey"
)

// SourceCounter is a DEK source as the source metrics read it
// (*source.Source is one).
type SourceCounter interface {
	Name() string
	Holds(key string) bool
	CountDEKs(ctx context.Context, key string) (map[int]int64, error)
}

// SourceCollector exports, at scrape time, the rows of each DEK source (the
// application's own tables) per key and version:
//
//	rekey_source_deks{source,key,version}  rows referencing the version
//	rekey_source_up{source}                1 when every count of the source succeeded, else 0
//
// Each scrape runs one COUNT … GROUP BY per source and key in the
// application's database; on very large tables, scrape less often.
type SourceCollector struct {
	store   rekey.Store
	sources []SourceCounter
	logger  *slog.Logger
	deks    *prometheus.Desc
	up      *prometheus.Desc
}

// NewSourceCollector returns the collector over sources; register it on
// the same registry as New's. A nil logger discards errors.
func NewSourceCollector(store rekey.Store, sources []SourceCounter, logger *slog.Logger) *SourceCollector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &SourceCollector{
		store: store, sources: sources, logger: logger,
		deks: prometheus.NewDesc("rekey_source_deks", "DEKs (rows) in a DEK source (the application's own table) per key and version.", []string{"source", "key", "version"}, nil),
		up:   prometheus.NewDesc("rekey_source_up", "1 when the DEK source answered the last scrape's counts, else 0.", []string{"source"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *SourceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.deks
	ch <- c.up
}

// Collect implements prometheus.Collector.
func (c *SourceCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	keys, err := c.store.ListKeys(ctx)
	if err != nil {
		c.logger.Error("metrics: reading the keys for the DEK source counts", "error", err.Error())
		return
	}
	for _, s := range c.sources {
		up := 1.0
		for _, k := range keys {
			if !s.Holds(k.Name) {
				continue
			}
			counts, err := s.CountDEKs(ctx, k.Name)
			if err != nil {
				up = 0
				c.logger.Error("metrics: counting the rows of a DEK source", "source", s.Name(), "key_id", k.Name, "error", err.Error())
				continue
			}
			for v, n := range counts {
				ch <- prometheus.MustNewConstMetric(c.deks, prometheus.GaugeValue, float64(n), s.Name(), k.Name, strconv.Itoa(v))
			}
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, s.Name())
	}
}

package metrics

import (
	"context"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rekeyhq/rekey"
)

type usageDescs struct {
	encryptions, max, ratio *prometheus.Desc
}

func newUsageDescs() usageDescs {
	return usageDescs{
		encryptions: prometheus.NewDesc(NameKeyEncryptions,
			"Wraps counted under each usable version of the key (never fewer than were done), against rekey_key_max_encryptions; absent where nothing counts the backend's wraps.",
			[]string{"key", "version"}, nil),
		max: prometheus.NewDesc(NameKeyMaxEncryptions,
			"The key's max_encryptions: wraps one version may do before new wraps are refused.",
			[]string{"key"}, nil),
		ratio: prometheus.NewDesc(NameKeyUsageRatio,
			"Wraps counted under the key's active version over its max_encryptions, 0..1; due at rotate_at (default 0.8), refused at 1.",
			[]string{"key"}, nil),
	}
}

// SetBackends gives the metrics the backends (as opened, in the
// middleware) to read wrap counts through at scrape time
// (rekey.VersionUsage). Until it is called there are no usage gauges but
// rekey_key_max_encryptions.
func (m *Metrics) SetBackends(backends map[string]rekey.KMS) {
	m.backends.Store(&backends)
}

// readUsage fills each snapshot's wrap counts of usable versions. A count
// that cannot be read is logged and left out: the gauge is absent rather
// than wrong.
func (m *Metrics) readUsage(ctx context.Context, snap []keySnapshot) {
	bp := m.backends.Load()
	if bp == nil {
		return
	}
	for i := range snap {
		ks := &snap[i]
		for _, v := range ks.versions {
			if !v.State.Usable() {
				continue
			}
			u, err := rekey.VersionUsage(ctx, *bp, ks.key, v)
			if err != nil {
				m.logger.Debug("metrics: wrap count not read", "key", ks.key.Name, "version", v.Version, "error", err.Error())
				continue
			}
			if ks.wraps == nil {
				ks.wraps = map[int]int64{}
			}
			ks.wraps[v.Version] = u.Encryptions
		}
	}
}

// collectUsage emits the usage gauges of one key.
func (m *Metrics) collectUsage(ch chan<- prometheus.Metric, ks keySnapshot) {
	k := ks.key
	m.emit(ch, m.usage.max, float64(k.Policy.EffectiveMaxEncryptions()), k.Name)
	for version, n := range ks.wraps {
		m.emit(ch, m.usage.encryptions, float64(n), k.Name, strconv.Itoa(version))
	}
	if n, ok := ks.wraps[k.ActiveVersion]; ok {
		m.emit(ch, m.usage.ratio, rekey.UsageOf(k, n).Ratio(), k.Name)
	}
}

package report

import (
	"context"
	"fmt"
	"math"

	"github.com/rekeyhq/rekey"
)

// Options adds to a report what rekey's store alone cannot say.
type Options struct {
	// Backends, when set, are read for each key's wrap count
	// (rekey.VersionUsage): Key.Usage.
	Backends map[string]rekey.KMS
}

// UsageHighRatio is the share of max_encryptions from which the report
// says "usage high" (the threshold of the alert RekeyKeyUsageHigh).
const UsageHighRatio = 0.9

// Usage is a key's active version's wrap count against its limit.
type Usage struct {
	Version     int   `json:"version"`
	Encryptions int64 `json:"encryptions"`
	Max         int64 `json:"max_encryptions"`
	// Threshold is rotate_at × max_encryptions: the key is due by usage
	// from this count.
	Threshold int64   `json:"rotate_at_encryptions"`
	Ratio     float64 `json:"ratio"`
	// High is Ratio >= UsageHighRatio.
	High bool `json:"high"`
	// DueByUsage is true when the count reached Threshold.
	DueByUsage bool `json:"due_by_usage"`
	// TooLow is set when the key is due by usage but its max_encryptions
	// is too low for its DEKs, so it is not rotated (rekey.UsageRotationBlocked).
	TooLow *rekey.UsageTooLow `json:"too_low,omitempty"`
	Text   string             `json:"text"`
}

// usage fills kr.Usage from the active version's count, when a backend
// counts it, and makes kr.Due follow rekey.RotationDue (by schedule or
// by usage).
func (b *keyBuilder) usage(ctx context.Context, kr *Key, versions []rekey.KeyVersion) {
	if b.backends == nil {
		return
	}
	for _, v := range versions {
		if v.Version != b.k.ActiveVersion {
			continue
		}
		u, err := rekey.VersionUsage(ctx, b.backends, b.k, v)
		if err != nil {
			return
		}
		reason, due := rekey.RotationDue(b.k, b.now, u.Encryptions)
		kr.Due = kr.Due || due
		var rewrapped int64
		if reason == rekey.ReasonUsage {
			if rewrapped, err = rekey.LastRewrapped(ctx, b.s, b.k); err != nil {
				return
			}
		}
		ku := &Usage{Version: v.Version, Encryptions: u.Encryptions, Max: u.Max, Threshold: u.Threshold, Ratio: u.Ratio(),
			High: u.Ratio() >= UsageHighRatio, DueByUsage: u.Due(), TooLow: rekey.UsageRotationBlocked(b.k, reason, kr.DEKs, rewrapped)}
		ku.Text = usageText(*ku)
		kr.Usage = ku
	}
}

// usageText is the usage line: "v2 did 900 of max_encryptions 1000 wraps
// (90.0%): usage high; due by usage from 800".
func usageText(u Usage) string {
	s := fmt.Sprintf("v%d did %d of max_encryptions %d wraps (%.1f%%)", u.Version, u.Encryptions, u.Max, math.Floor(u.Ratio*1000)/10)
	switch {
	case u.Encryptions >= u.Max:
		s += ": limit reached, new wraps are refused until the key rotates"
	case u.High:
		s += ": usage high"
	}
	if u.DueByUsage {
		s += fmt.Sprintf("; due by usage (from %d wraps, rotate_at × max_encryptions)", u.Threshold)
	} else {
		s += fmt.Sprintf("; due by usage from %d wraps (rotate_at × max_encryptions)", u.Threshold)
	}
	return s
}

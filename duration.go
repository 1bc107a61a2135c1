package rekey

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Day is 24 hours, the unit "d" of ParseDuration.
const Day = 24 * time.Hour

// dayCount is a plain decimal day count: no sign, exponent, hex or NaN.
var dayCount = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// maxDays bounds durations to 100 years, far from time.Duration's limit.
const maxDays = 100 * 365

// ParseDuration parses a duration in Go syntax ("90m", "1h30m", "2s") with
// one addition: a leading whole or decimal number of days ("90d", "7d12h",
// "1.5d"). "never" parses as 0 when allowNever is set. Negative durations
// are refused.
func ParseDuration(s string, allowNever bool) (time.Duration, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, Invalidf("empty duration: use Go syntax plus d for days, e.g. 90d, 12h, 30s")
	}
	if in == "never" {
		if allowNever {
			return 0, nil
		}
		return 0, Invalidf("duration %q: never is only allowed for destroy_after", s)
	}
	if strings.HasPrefix(in, "-") {
		return 0, Invalidf("duration %q is negative", s)
	}
	var total time.Duration
	if i := strings.IndexByte(in, 'd'); i >= 0 {
		days, err := strconv.ParseFloat(in[:i], 64)
		if !dayCount.MatchString(in[:i]) || err != nil || days > maxDays {
			return 0, Invalidf("duration %q: bad day count: use e.g. 90d or 7d12h", s)
		}
		total = time.Duration(days * float64(Day))
		in = in[i+1:]
		if in == "" {
			return total, nil
		}
	}
	d, err := time.ParseDuration(in)
	if err != nil || d < 0 || d > maxDays*Day-total {
		return 0, Invalidf("duration %q: use Go syntax plus d for days, e.g. 90d, 12h, 30s", s)
	}
	return total + d, nil
}

// FormatDuration prints d the way ParseDuration reads it, using days for
// whole multiples of 24h ("90d", "7d", "36h0m0s" stays Go syntax).
func FormatDuration(d time.Duration) string {
	if d < 0 {
		if d == math.MinInt64 { // -d overflows back to itself
			return d.String()
		}
		return "-" + FormatDuration(-d)
	}
	if d == 0 {
		return "0s"
	}
	if d%Day == 0 {
		return strconv.FormatInt(int64(d/Day), 10) + "d"
	}
	if d > Day {
		days := d / Day
		return strconv.FormatInt(int64(days), 10) + "d" + (d - days*Day).String()
	}
	return d.String()
}

package rekey

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Day is 24 hours, the unit "d" of ParseDuration.
const Day = 24 * time.Hour

// ParseDuration parses a duration in Go syntax ("90m", "1h30m", "2s") with
// one addition: a leading whole or decimal number of days ("90d", "7d12h",
// "1.5d"). "never" parses as 0 when allowNever is set. Negative durations
// are refused.
func ParseDuration(s string, allowNever bool) (time.Duration, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("%w: empty duration: use Go syntax plus d for days, e.g. 90d, 12h, 30s", ErrInvalidArgument)
	}
	if in == "never" {
		if allowNever {
			return 0, nil
		}
		return 0, fmt.Errorf("%w: duration %q: never is only allowed for destroy_after", ErrInvalidArgument, s)
	}
	if strings.HasPrefix(in, "-") {
		return 0, fmt.Errorf("%w: duration %q is negative", ErrInvalidArgument, s)
	}
	var total time.Duration
	if i := strings.IndexByte(in, 'd'); i >= 0 {
		days, err := strconv.ParseFloat(in[:i], 64)
		if err != nil || days < 0 || days > 100*365 {
			return 0, fmt.Errorf("%w: duration %q: bad day count: use e.g. 90d or 7d12h", ErrInvalidArgument, s)
		}
		total = time.Duration(days * float64(Day))
		in = in[i+1:]
		if in == "" {
			return total, nil
		}
	}
	d, err := time.ParseDuration(in)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%w: duration %q: use Go syntax plus d for days, e.g. 90d, 12h, 30s", ErrInvalidArgument, s)
	}
	return total + d, nil
}

// FormatDuration prints d the way ParseDuration reads it, using days for
// whole multiples of 24h ("90d", "7d", "36h0m0s" stays Go syntax).
func FormatDuration(d time.Duration) string {
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

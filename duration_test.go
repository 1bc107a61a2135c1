package rekey

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in    string
		never bool
		want  time.Duration
		err   bool
	}{
		{"90d", false, 90 * Day, false},
		{"7d12h", false, 7*Day + 12*time.Hour, false},
		{"1.5d", false, 36 * time.Hour, false},
		{"2s", false, 2 * time.Second, false},
		{"1h30m", false, 90 * time.Minute, false},
		{"0s", false, 0, false},
		{"never", true, 0, false},
		{"never", false, 0, true},
		{"", false, 0, true},
		{"5x", false, 0, true},
		{"-1d", false, 0, true},
		{"-5s", false, 0, true},
		{"d", false, 0, true},
		{"3dd", false, 0, true},
		{"99999999d", false, 0, true},
		{"NaNd", false, 0, true},
		{"0x1p4d", false, 0, true},
		{"36500d2562047h", false, 0, true},
		{"1e3d", false, 0, true},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in, tt.never)
		if tt.err {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("ParseDuration(%q) err = %v, want ErrInvalidArgument", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestFormatDurationRoundTrip(t *testing.T) {
	t.Parallel()
	for _, d := range []time.Duration{0, time.Second, 90 * Day, 7*Day + 12*time.Hour, 36 * time.Hour, 1500 * time.Millisecond} {
		got, err := ParseDuration(FormatDuration(d), false)
		if err != nil || got != d {
			t.Errorf("%v -> %q -> %v, %v", d, FormatDuration(d), got, err)
		}
	}
}

func TestFormatDurationMinInt(t *testing.T) {
	if got := FormatDuration(math.MinInt64); got != time.Duration(math.MinInt64).String() {
		t.Errorf("FormatDuration(MinInt64) = %q", got)
	}
}

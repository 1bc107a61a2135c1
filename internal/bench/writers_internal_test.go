package bench

import (
	"errors"
	"testing"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	xs := []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, c := range []struct{ q, want float64 }{{0.5, 5}, {0.99, 10}, {1, 10}, {0.1, 1}, {0.11, 2}} {
		if got := percentile(xs, c.q); got != c.want {
			t.Errorf("percentile(1..10, %v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
	if xs[0] != 5 {
		t.Error("percentile sorted its input in place")
	}
}

func TestIsLocked(t *testing.T) {
	t.Parallel()
	for msg, want := range map[string]bool{
		"rekey dek create: exit status 1: create dek: database is locked": true,
		"sqlitestore: database table is locked":                           true,
		"rekey decrypt: exit status 1: no such file":                      false,
	} {
		if got := isLocked(errors.New(msg)); got != want {
			t.Errorf("isLocked(%q) = %v, want %v", msg, got, want)
		}
	}
}

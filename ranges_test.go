package rekey

import "testing"

func TestRangeLeaseKey(t *testing.T) {
	k := RangeLeaseKey("01JROT", 7)
	if k != "rewrap/01JROT/7" {
		t.Fatalf("RangeLeaseKey = %q", k)
	}
	if ValidateKeyName(k) == nil {
		t.Fatalf("range lease key %q is a valid key name: it could collide with a key lease", k)
	}
	id, i, ok := ParseRangeLeaseKey(k)
	if !ok || id != "01JROT" || i != 7 {
		t.Fatalf("ParseRangeLeaseKey(%q) = %q, %d, %v", k, id, i, ok)
	}
	for _, bad := range []string{"payments", "rewrap/", "rewrap/x", "rewrap//1", "rewrap/x/-1", "rewrap/x/01", "rewrap/x/1a"} {
		if _, _, ok := ParseRangeLeaseKey(bad); ok {
			t.Errorf("ParseRangeLeaseKey(%q) accepted it", bad)
		}
	}
}

package rotation

import (
	"os"
	"testing"
)

func TestParseOwner(t *testing.T) {
	t.Parallel()
	tests := []struct {
		owner string
		host  string
		pid   int
		ok    bool
	}{
		{"db1-4242", "db1", 4242, true},
		{"db-1.example.com-7", "db-1.example.com", 7, true},
		{"host--12", "host-", 12, true},
		{"worker-1", "worker", 1, true}, // parses: only its host name keeps it from being judged
		{"host-0", "", 0, false},
		{"host-012", "", 0, false},
		{"host-+12", "", 0, false},
		{"host--0", "", 0, false},
		{"host-1a", "", 0, false},
		{"host-", "", 0, false},
		{"-12", "", 0, false},
		{"12", "", 0, false},
		{"host-99999999999999999999999", "", 0, false},
		{"", "", 0, false},
	}
	for _, tc := range tests {
		host, pid, ok := parseOwner(tc.owner)
		if host != tc.host || pid != tc.pid || ok != tc.ok {
			t.Errorf("parseOwner(%q) = %q, %d, %v; want %q, %d, %v", tc.owner, host, pid, ok, tc.host, tc.pid, tc.ok)
		}
	}
	host, pid, ok := parseOwner(DefaultOwner())
	if self, err := os.Hostname(); err == nil && self != "" && (!ok || host != self || pid != os.Getpid()) {
		t.Errorf("parseOwner(DefaultOwner() = %q) = %q, %d, %v", DefaultOwner(), host, pid, ok)
	}
	if _, dead := deadOwner(DefaultOwner()); dead {
		t.Error("this process judged dead")
	}
}

package rekey

import (
	"sync"
	"testing"
)

func TestNewIDOrderedAndUnique(t *testing.T) {
	t.Parallel()
	const n = 20000
	prev := ""
	for i := 0; i < n; i++ {
		id := NewID()
		if !ValidID(id) {
			t.Fatalf("NewID() = %q is not valid", id)
		}
		if id <= prev {
			t.Fatalf("ids not increasing: %q after %q", id, prev)
		}
		prev = id
	}
}

func TestNewIDConcurrentUnique(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]string, 2000)
			for i := range local {
				local[i] = NewID()
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range local {
				if seen[id] {
					t.Errorf("duplicate id %s", id)
				}
				seen[id] = true
			}
		}()
	}
	wg.Wait()
}

func TestValidID(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "abc", "01JDXA4N2Z3Y4X5W6V7T8S9R0", "01JDXA4N2Z3Y4X5W6V7T8S9R0I", "81JDXA4N2Z3Y4X5W6V7T8S9R0Q", "01jdxa4n2z3y4x5w6v7t8s9r0q"} {
		if ValidID(s) {
			t.Errorf("ValidID(%q) = true", s)
		}
	}
}

package bench

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// timedPool calls fn once for every index, from several workers, and
// reports progress; an error stops the others and is returned.
func TestTimedPool(t *testing.T) {
	var mu sync.Mutex
	var progress []int
	e := &runEnv{o: Options{Progress: func(phase string, done, total int) {
		mu.Lock()
		defer mu.Unlock()
		if phase == "p" && total == 1000 {
			progress = append(progress, done)
		}
	}}}
	var seen [1000]atomic.Int32
	rate, err := e.timedPool("p", 4, 1000, 100, func(i int) error {
		seen[i].Add(1)
		return nil
	})
	if err != nil || rate <= 0 {
		t.Fatalf("timedPool = %v, %v", rate, err)
	}
	for i := range seen {
		if n := seen[i].Load(); n != 1 {
			t.Fatalf("index %d called %d times", i, n)
		}
	}
	if len(progress) != 11 || progress[len(progress)-1] != 1000 {
		t.Errorf("progress reports %v, want 0, 100, ..., 900 in some order, then 1000", progress)
	}

	boom := errors.New("boom")
	var calls atomic.Int32
	_, err = e.timedPool("q", 4, 100_000, 1000, func(i int) error {
		calls.Add(1)
		if i == 10 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("timedPool with a failing call = %v, want boom", err)
	}
	if n := calls.Load(); n > 50_000 {
		t.Errorf("%d calls after the error at index 10: the others did not stop", n)
	}
}

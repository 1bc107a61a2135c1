package failpoint_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey/failpoint"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		spec    string
		want    string // canonical form, "" for a nil set
		wantErr string // substring of the error
	}{
		{spec: "", want: ""},
		{spec: "  ; ", want: ""},
		{spec: "rotation.after_claim=crash", want: "rotation.after_claim=crash@1"},
		{spec: " rewrap.after_batch_commit = error@3 ; rotation.after_commit=crash@2;", want: "rewrap.after_batch_commit=error@3;rotation.after_commit=crash@2"},
		{spec: "rotation.nope=crash", wantErr: `unknown failpoint "rotation.nope": allowed are rotation.after_claim, rotation.after_backend_rotate`},
		{spec: "rotation.after_claim=explode", wantErr: `unknown action "explode": allowed are crash, error`},
		{spec: "rotation.after_claim=crash@0", wantErr: "bad hit number"},
		{spec: "rotation.after_claim=crash@x", wantErr: "bad hit number"},
		{spec: "rotation.after_claim", wantErr: "want name=crash[@N]"},
		{spec: "rotation.after_claim=crash;rotation.after_claim=error", wantErr: "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := failpoint.Parse(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want it to contain %q", tt.spec, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.spec, err)
			}
			if tt.want == "" && s != nil {
				t.Fatalf("Parse(%q) = %v, want nil set", tt.spec, s)
			}
			if got := s.String(); got != tt.want {
				t.Fatalf("Parse(%q) = %q, want %q", tt.spec, got, tt.want)
			}
		})
	}
}

func TestNamesAreTheContract(t *testing.T) {
	t.Parallel()
	want := "rotation.after_claim rotation.after_backend_rotate rotation.after_version_recorded rewrap.after_backend rewrap.after_batch_commit rotation.before_commit rotation.after_commit retire.after_backend_disable"
	if got := strings.Join(failpoint.Names(), " "); got != want {
		t.Fatalf("Names() = %q, want %q", got, want)
	}
}

func TestNilSetNeverFires(t *testing.T) {
	t.Parallel()
	var s *failpoint.Set
	for _, n := range failpoint.Names() {
		if err := s.Hit(n); err != nil {
			t.Fatalf("nil set Hit(%s) = %v", n, err)
		}
	}
	s.SetExit(func(int) { t.Fatal("exit called") })
	if s.Hits(failpoint.RotationAfterClaim) != 0 || s.String() != "" {
		t.Fatal("nil set reports state")
	}
}

func TestErrorFiresOnTheNthHitOnly(t *testing.T) {
	t.Parallel()
	s := failpoint.MustParse("rewrap.after_backend=error@3")
	for i := 1; i <= 5; i++ {
		err := s.Hit(failpoint.RewrapAfterBackend)
		if (i == 3) != (err != nil) {
			t.Fatalf("hit %d: err = %v", i, err)
		}
		if i == 3 {
			if !errors.Is(err, failpoint.ErrInjected) || err.Error() != "failpoint rewrap.after_backend: injected error" {
				t.Fatalf("hit 3: err = %q", err)
			}
		}
		if err := s.Hit(failpoint.RotationAfterClaim); err != nil {
			t.Fatalf("unconfigured point fired: %v", err)
		}
	}
	if got := s.Hits(failpoint.RewrapAfterBackend); got != 5 {
		t.Fatalf("Hits = %d, want 5", got)
	}
}

func TestCrashExitsWith137OnTheNthHit(t *testing.T) {
	t.Parallel()
	s := failpoint.MustParse("rotation.after_commit=crash@2")
	var codes []int
	var out strings.Builder
	s.SetExit(func(code int) { codes = append(codes, code) })
	s.SetOutput(&out)
	if err := s.Hit(failpoint.RotationAfterCommit); err != nil || len(codes) != 0 {
		t.Fatalf("first hit: err=%v exits=%v", err, codes)
	}
	err := s.Hit(failpoint.RotationAfterCommit)
	if len(codes) != 1 || codes[0] != failpoint.CrashStatus || failpoint.CrashStatus != 137 {
		t.Fatalf("second hit: exits=%v", codes)
	}
	if out.String() != "failpoint rotation.after_commit: crash (exit 137)\n" {
		t.Fatalf("crash message = %q", out.String())
	}
	// An exit function that returns (tests) must still stop the step.
	if !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("second hit returned %v, want an injected error", err)
	}
	if err := s.Hit(failpoint.RotationAfterCommit); err != nil || len(codes) != 1 {
		t.Fatalf("third hit: err=%v exits=%v", err, codes)
	}
}

func TestConcurrentHitsFireExactlyOnce(t *testing.T) {
	t.Parallel()
	s := failpoint.MustParse("rewrap.after_batch_commit=error@50")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		fired int
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				if s.Hit(failpoint.RewrapAfterBatchCommit) != nil {
					mu.Lock()
					fired++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if fired != 1 || s.Hits(failpoint.RewrapAfterBatchCommit) != 200 {
		t.Fatalf("fired %d times over %d hits, want once over 200", fired, s.Hits(failpoint.RewrapAfterBatchCommit))
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv(failpoint.EnvVar, "retire.after_backend_disable=error")
	s, err := failpoint.FromEnv()
	if err != nil || s.String() != "retire.after_backend_disable=error@1" {
		t.Fatalf("FromEnv = %v, %v", s, err)
	}
	t.Setenv(failpoint.EnvVar, "")
	if s, err := failpoint.FromEnv(); s != nil || err != nil {
		t.Fatalf("FromEnv with empty env = %v, %v", s, err)
	}
}

func BenchmarkHitNil(b *testing.B) {
	var s *failpoint.Set
	for b.Loop() {
		_ = s.Hit(failpoint.RewrapAfterBackend)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("rotation.after_claim=crash@2;rewrap.after_backend=error")
	f.Add("=;@")
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := failpoint.Parse(spec)
		if err != nil {
			return
		}
		// A parsed set must re-parse to itself.
		again, err := failpoint.Parse(s.String())
		if err != nil || again.String() != s.String() {
			t.Fatalf("round trip of %q: %q, %v", spec, again.String(), err)
		}
	})
}

// Package failpoint injects crashes and errors at named points of the
// rotation engine, so that tests (and operators rehearsing a recovery) can
// stop a rotation exactly where a real crash or outage could.
//
// A specification is read from REKEY_FAILPOINTS:
//
//	REKEY_FAILPOINTS="rotation.after_backend_rotate=crash;rewrap.after_batch_commit=error@3"
//
// Each entry is name=action[@N]: crash exits the process at once with status
// 137 on the N-th hit of the point, error makes that one hit (the N-th) return
// an error. N defaults to 1. Names are the contract names of DESIGN.md; an
// unknown name or action is refused.
//
// A nil *Set is valid and does nothing: the cost of an unset failpoint is one
// nil check.
package failpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// EnvVar is the environment variable FromEnv reads.
const EnvVar = "REKEY_FAILPOINTS"

// CrashStatus is the exit status of a crash failpoint (the status of a
// process killed by SIGKILL, as a real crash would look to a supervisor).
const CrashStatus = 137

// Failpoint names (contract: DESIGN.md "Failpoints").
const (
	RotationAfterClaim           = "rotation.after_claim"
	RotationAfterBackendRotate   = "rotation.after_backend_rotate"
	RotationAfterVersionRecorded = "rotation.after_version_recorded"
	RewrapAfterBackend           = "rewrap.after_backend"
	RewrapAfterBatchCommit       = "rewrap.after_batch_commit"
	RotationBeforeCommit         = "rotation.before_commit"
	RotationAfterCommit          = "rotation.after_commit"
	RetireAfterBackendDisable    = "retire.after_backend_disable"
)

var names = []string{
	RotationAfterClaim,
	RotationAfterBackendRotate,
	RotationAfterVersionRecorded,
	RewrapAfterBackend,
	RewrapAfterBatchCommit,
	RotationBeforeCommit,
	RotationAfterCommit,
	RetireAfterBackendDisable,
}

// Names returns the failpoint names, in the order a rotation reaches them.
func Names() []string { return slices.Clone(names) }

// Action is what a failpoint does when it fires.
type Action string

// Actions.
const (
	Crash Action = "crash" // exit the process at once with status 137
	Error Action = "error" // the step returns an *InjectedError
)

// ErrInjected matches (errors.Is) every error a failpoint returns.
var ErrInjected = errors.New("injected error")

// InjectedError is the error an error failpoint returns.
type InjectedError struct {
	Name string
}

func (e *InjectedError) Error() string { return "failpoint " + e.Name + ": injected error" }

// Is makes errors.Is(err, ErrInjected) true.
func (e *InjectedError) Is(target error) bool { return target == ErrInjected }

type point struct {
	action Action
	nth    int64
	hits   int64
}

// Set is a parsed failpoint specification. It is safe for concurrent use;
// a nil *Set never fires.
type Set struct {
	mu     sync.Mutex
	points map[string]*point
	exit   func(code int)
	stderr io.Writer
}

// Parse reads a specification ("name=crash[@N];name=error[@N]"). An empty
// specification gives a nil *Set. Unknown names and actions, a missing or
// non-positive N, and a name given twice are errors that name what was wrong
// and what is allowed.
func Parse(spec string) (*Set, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, nil
	}
	s := &Set{points: make(map[string]*point), exit: os.Exit, stderr: os.Stderr}
	for entry := range strings.SplitSeq(spec, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, rest, ok := strings.Cut(entry, "=")
		name, rest = strings.TrimSpace(name), strings.TrimSpace(rest)
		if !ok || name == "" || rest == "" {
			return nil, fmt.Errorf("%s: entry %q: want name=crash[@N] or name=error[@N]", EnvVar, entry)
		}
		if !slices.Contains(names, name) {
			return nil, fmt.Errorf("%s: unknown failpoint %q: allowed are %s", EnvVar, name, strings.Join(names, ", "))
		}
		if _, dup := s.points[name]; dup {
			return nil, fmt.Errorf("%s: failpoint %q given twice", EnvVar, name)
		}
		act, nthText, hasNth := strings.Cut(rest, "@")
		p := &point{action: Action(strings.TrimSpace(act)), nth: 1}
		if p.action != Crash && p.action != Error {
			return nil, fmt.Errorf("%s: failpoint %q: unknown action %q: allowed are crash, error", EnvVar, name, act)
		}
		if hasNth {
			n, err := strconv.ParseInt(strings.TrimSpace(nthText), 10, 64)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("%s: failpoint %q: bad hit number %q: want a whole number >= 1, e.g. %s=%s@2", EnvVar, name, nthText, name, p.action)
			}
			p.nth = n
		}
		s.points[name] = p
	}
	if len(s.points) == 0 {
		return nil, nil
	}
	return s, nil
}

// MustParse is Parse for tests: it panics on a bad specification.
func MustParse(spec string) *Set {
	s, err := Parse(spec)
	if err != nil {
		panic(err)
	}
	return s
}

// FromEnv parses $REKEY_FAILPOINTS; unset or empty gives a nil *Set.
func FromEnv() (*Set, error) { return Parse(os.Getenv(EnvVar)) }

// SetExit replaces the function a crash failpoint calls (os.Exit by default),
// for tests. Call it before the first Hit.
func (s *Set) SetExit(exit func(code int)) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.exit = exit
	s.mu.Unlock()
}

// SetOutput replaces where a crash failpoint announces itself before
// exiting (os.Stderr by default); nil silences it. Call it before the
// first Hit.
func (s *Set) SetOutput(w io.Writer) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.stderr = w
	s.mu.Unlock()
}

// Hit records one pass through the named point. It returns an
// *InjectedError on the configured hit of an error failpoint, exits the
// process with status 137 on the configured hit of a crash failpoint, and
// returns nil otherwise (always, for a nil *Set).
func (s *Set) Hit(name string) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	p := s.points[name]
	if p == nil {
		s.mu.Unlock()
		return nil
	}
	p.hits++
	fire := p.hits == p.nth
	action, exit, stderr := p.action, s.exit, s.stderr
	s.mu.Unlock()
	if !fire {
		return nil
	}
	if action == Crash {
		if stderr != nil {
			fmt.Fprintf(stderr, "failpoint %s: crash (exit %d)\n", name, CrashStatus)
		}
		exit(CrashStatus)
		// A test's exit function may return; the step then fails as with
		// an error failpoint, so that nothing after the point runs.
	}
	return &InjectedError{Name: name}
}

// Hits returns how many times the named point was passed.
func (s *Set) Hits(name string) int64 {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.points[name]; p != nil {
		return p.hits
	}
	return 0
}

// String returns the specification in canonical form.
func (s *Set) String() string {
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for _, n := range names {
		if p := s.points[n]; p != nil {
			parts = append(parts, fmt.Sprintf("%s=%s@%d", n, p.action, p.nth))
		}
	}
	return strings.Join(parts, ";")
}

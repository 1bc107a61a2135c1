package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// signalWriter collects what is written and closes seen the first time
// the text contains want.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

const firstRunHintText = "rekey: no keys yet, so nothing to rotate: create one with 'rekey key create NAME', or watch a rotation live with 'rekey run --demo'; status page: "

// TestFirstRunHint: `rekey run` on the embedded default with no keys says
// in one human line what to do next and where the status page is, only
// when stderr is a terminal; every other line stays JSON.
func TestFirstRunHint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		terminal bool
		setup    func(e *env) []string // extra arguments of run
		want     string                // "" means no hint
	}{
		{"terminal, no keys", true, nil, firstRunHintText + "http://127.0.0.1:"},
		{"not a terminal", false, nil, ""},
		{"terminal, HTTP off", true, func(e *env) []string { return []string{"--listen", ""} }, firstRunHintText + `off (--listen "")`},
		{"terminal, a key exists", true, func(e *env) []string {
			e.must("key", "create", "payments")
			return nil
		}, ""},
		{"terminal, --config", true, func(e *env) []string {
			dir := filepath.Join(filepath.Dir(e.home), "other")
			e.must("init", "--dir", dir)
			return []string{"--config", filepath.Join(dir, "rekey.yaml")}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			args := []string{"run", "--log-level", "info", "--listen", "127.0.0.1:0"}
			if tc.setup != nil {
				args = append(args, tc.setup(e)...)
			}
			stderr := &signalWriter{want: "rotation worker starting", seen: make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var asked []io.Writer
			var mu sync.Mutex
			code := make(chan int, 1)
			go func() {
				code <- runIn(ctx, args, runEnv{stdin: strings.NewReader(""), stdout: io.Discard, stderr: stderr, getenv: e.getenv,
					terminal: func(w io.Writer) bool {
						mu.Lock()
						asked = append(asked, w)
						mu.Unlock()
						return tc.terminal
					}})
			}()
			select {
			case <-stderr.seen:
			case c := <-code:
				t.Fatalf("rekey run exited %d before the worker started:\n%s", c, stderr)
			case <-time.After(time.Minute):
				t.Fatalf("the worker did not start within a minute:\n%s", stderr)
			}
			cancel()
			if c := <-code; c != exitOK {
				t.Fatalf("rekey run: exit %d\n%s", c, stderr)
			}
			var hints int
			for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
				if strings.HasPrefix(line, "rekey: no keys yet") {
					hints++
					if tc.want == "" || !strings.HasPrefix(line, tc.want) {
						t.Errorf("hint %q, want prefix %q", line, tc.want)
					}
					continue
				}
				if strings.HasPrefix(line, "rekey: created the embedded default") {
					continue // the first use's own line
				}
				if !json.Valid([]byte(line)) {
					t.Errorf("a log line is not JSON: %q", line)
				}
			}
			wantHints := 0
			if tc.want != "" {
				wantHints = 1
			}
			if hints != wantHints {
				t.Errorf("%d hint lines, want %d:\n%s", hints, wantHints, stderr)
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.name == "not a terminal" && (len(asked) == 0 || asked[0] != io.Writer(stderr)) {
				t.Errorf("the terminal check was asked about %v, not stderr", asked)
			}
		})
	}
}

// TestDemoRefusesBadFlags: --demo runs until Ctrl-C in a home of its own,
// so --once and --config are usage errors that create nothing.
func TestDemoRefusesBadFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--demo", "--once"}, "--demo runs until Ctrl-C: drop --once"},
		{[]string{"run", "--demo", "--config", "rekey.yaml"}, "never reads --config: drop --config"},
	} {
		e := newEnv(t)
		// A deadline, so that a demo that wrongly starts ends the test
		// instead of running until Ctrl-C.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var out, errb bytes.Buffer
		code := run(ctx, tc.args, strings.NewReader(""), &out, &errb, e.getenv)
		cancel()
		errs := errb.String()
		if code != exitUsage || !strings.Contains(errs, tc.want) {
			t.Errorf("rekey %s: exit %d, want %d with %q; stderr: %s", strings.Join(tc.args, " "), code, exitUsage, tc.want, errs)
		}
		if _, err := os.Stat(e.home); err == nil {
			t.Errorf("rekey %s created %s", strings.Join(tc.args, " "), e.home)
		}
	}
}

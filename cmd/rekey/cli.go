package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
	"github.com/rekeyhq/rekey/worker"
	"github.com/spf13/cobra"
)

// Exit codes (contract).
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks an error as the user's misuse of the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// cli is one invocation: its streams, environment, clock and global flags,
// and what it opened (closed at the end).
type cli struct {
	stdin      io.Reader
	stdout     io.Writer
	stderr     io.Writer
	getenv     func(string) string
	now        func() time.Time
	clock      worker.Clock // nil: the real clock
	configPath string
	jsonOut    bool
	logLevel   string
	// tolerateBackendErrors is set by the worker: see
	// setup.Options.TolerateBackendErrors.
	tolerateBackendErrors bool
	// logFallback is the level commands log at unless asked: warn, info
	// for the worker.
	logFallback slog.Level
	// readOnly opens the store read-only (the command only reads): see
	// readOnlyCommands.
	readOnly bool
	sys      *setup.System
	// terminal decides whether a stream is a terminal (the first-run
	// hint); nil means isTerminal's check of the file.
	terminal func(io.Writer) bool
}

// readOnlyCommands only read: they open the store read-only and write no
// audit checkpoint, so that they work on a read-only copy of a home (a
// preserved database, a backup being inspected).
var readOnlyCommands = map[string]bool{
	"status": true, "key list": true, "key show": true, "dek show": true, "plan": true,
	"audit list": true, "audit verify": true, "audit export": true, "report": true, "decrypt": true,
	"source list": true, "source check": true,
}

// runEnv is what an invocation runs in; tests give it a fake clock.
type runEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	clock          worker.Clock
	// terminal replaces the check of whether a stream is a terminal.
	terminal func(io.Writer) bool
}

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	return runIn(ctx, args, runEnv{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv})
}

// runIn is run in e. REKEY_TEST_CLOCK_OFFSET (a duration, test hook like
// REKEY_FAILPOINTS) moves the clock of a real process forward, so that
// end-to-end tests of the binary need not sleep for a deadline.
func runIn(ctx context.Context, args []string, e runEnv) int {
	c := &cli{stdin: e.stdin, stdout: e.stdout, stderr: e.stderr, getenv: e.getenv, now: e.now, clock: e.clock, terminal: e.terminal, logFallback: slog.LevelWarn}
	if c.now == nil {
		c.now = time.Now
		if off := c.getenv(envClockOffset); off != "" {
			d, err := rekey.ParseDuration(off, true)
			if err != nil {
				fmt.Fprintf(e.stderr, "rekey: %s=%q: %v\n", envClockOffset, off, err)
				return exitUsage
			}
			c.now = func() time.Time { return time.Now().Add(d) }
		}
	}
	root := c.rootCommand()
	root.SetArgs(args)
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	err := root.ExecuteContext(ctx)
	if c.sys != nil {
		// Close checkpoints whatever the command wrote to the audit trail
		// before the process exits.
		if cerr := c.sys.Close(); cerr != nil {
			fmt.Fprintf(e.stderr, "rekey: warning: %v\n", cerr)
		}
	}
	if err == nil {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintf(e.stderr, "rekey: %v\nRun 'rekey --help' for usage.\n", err)
		return exitUsage
	}
	var ee exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(e.stderr, "rekey: %s\n", ee.msg)
		}
		return ee.code
	}
	fmt.Fprintf(e.stderr, "rekey: %v\n", err)
	return exitFailure
}

// envClockOffset moves the process's clock (tests of the binary).
const envClockOffset = "REKEY_TEST_CLOCK_OFFSET"

// exitError ends the command with a code, printing msg if set.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// isCobraUsage recognises cobra's own argument and flag errors.
func isCobraUsage(err error) bool {
	s := err.Error()
	// Flag parse errors arrive as usageError (SetFlagErrorFunc) and argument
	// counts through exactArgs; this catches what cobra reports itself. A
	// library error matching rekey.ErrInvalidArgument is not a usage error:
	// the command line was fine, the state refused it (exit 1).
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument",
		"required flag", "if any flags in the group"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "rekey",
		Short: "Root-key rotation for envelope encryption",
		Long: `rekey rotates the root keys that wrap your data-encryption keys (DEKs):
it finds keys near their rotation deadline, creates a new key version,
re-wraps every DEK under it, keeps the old version pending retirement for a
grace period, retires it only when no DEK depends on it, and records every
step in a tamper-evident audit trail.

Configuration: --config PATH, else $REKEY_CONFIG, else ./rekey.yaml, else the
embedded default in $REKEY_HOME (default ./rekey-data: local keyring + SQLite),
created on first use.

Exit codes: 0 ok, 1 failure, 2 usage error.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&c.configPath, "config", "", "config file (default: $REKEY_CONFIG, ./rekey.yaml, or the embedded default in $REKEY_HOME)")
	root.PersistentFlags().BoolVar(&c.jsonOut, "json", false, "print JSON instead of text")
	root.PersistentFlags().StringVar(&c.logLevel, "log-level", "", "log level: debug, info, warn, error (default: warn for commands, log.level of the config for run)")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		c.readOnly = readOnlyCommands[strings.TrimPrefix(cmd.CommandPath(), "rekey ")]
		if c.logLevel != "" {
			var l slog.Level
			if err := l.UnmarshalText([]byte(c.logLevel)); err != nil {
				return usagef("--log-level %q: use debug, info, warn or error", c.logLevel)
			}
		}
		return nil
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		c.initCommand(),
		c.keyCommand(),
		c.dekCommand(),
		c.encryptCommand(),
		c.decryptCommand(),
		c.statusCommand(),
		c.configCommand(),
		c.sourceCommand(),
		c.auditCommand(),
		c.reportCommand(),
		c.docsCommand(),
		c.completionCommand(),
	)
	c.addEngineCommands(root)
	return root
}

// printJSON writes v as indented JSON.
func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exactArgs is cobra.ExactArgs with an error that says what is missing.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s): %s (got %d)", cmd.CommandPath(), n, names, len(args))
		}
		return nil
	}
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/spf13/cobra"
)

// addEngineCommands adds the commands of the rotation engine.
func (c *cli) addEngineCommands(root *cobra.Command) {
	root.AddCommand(c.runCommand(), c.planCommand(), c.rotateCommand(), c.retireCommand(), c.benchCommand(), c.benchEngineCmd())
}

func (c *cli) runCommand() *cobra.Command {
	var once, demo bool
	var listen string
	cmd := &cobra.Command{
		Use:   "run [--once] [--listen ADDR] [--demo]",
		Short: "Run the rotation worker",
		Long: `Run the rotation worker: one cycle at start, then one every
worker.check_interval. A cycle resumes any open rotation, rotates every key
that is due (re-wrapping all its DEKs under the new version), and retires old
versions whose grace has passed once no DEK references them. One key's failure
never stops another's rotation. SIGTERM/SIGINT stops cleanly: the current
batch is checkpointed, leases are released, exit 0.

Declared keys (keys: in the config) are created or reconciled at start.
Logs are JSON lines on stderr. REKEY_FAILPOINTS injects crashes and errors
for testing (see README).

With --once, one cycle runs and the exit code is 1 if any key failed.

With --demo, rekey shows a rotation live in a throwaway home of its own (a
temporary directory, removed on exit; never ./rekey-data, $REKEY_HOME or
--config): a key with a 30 s period that is due at once, 3000 DEKs and a
sealed sample file, the worker checking every second, and the status page on
a free 127.0.0.1 port (or --listen). It prints each step as it happens
(rotation started, DEKs re-wrapped, committed, old version retired, the sample
file still decrypts): v1 → v2 → v3 within a minute. Ctrl-C stops it.`,
		Example: "  rekey run\n  rekey run --once\n  rekey run --demo",
		Args:    exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if demo {
				if once {
					return usagef("--demo runs until Ctrl-C: drop --once")
				}
				if c.configPath != "" {
					return usagef("--demo uses a throwaway home of its own and never reads --config: drop --config")
				}
				return c.runDemo(cmd.Context(), listen, cmd.Flags().Changed("listen"))
			}
			return c.runWorker(cmd.Context(), once, listen, cmd.Flags().Changed("listen"))
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "run one cycle and exit")
	cmd.Flags().BoolVar(&demo, "demo", false, "show a rotation live in a throwaway home (30 s key period; the user's home is never touched)")
	cmd.Flags().StringVar(&listen, "listen", "", "address for /metrics, /healthz, /readyz, /api/v1/status and the status page (default from config: 127.0.0.1:9464; empty string disables)")
	return cmd
}

func (c *cli) runWorker(ctx context.Context, once bool, listen string, listenSet bool) error {
	c.tolerateBackendErrors = true
	c.logFallback = slog.LevelInfo // the worker logs at the config's level
	a, err := c.open(ctx)
	if err != nil {
		return err
	}
	if !listenSet && !once {
		// --once serves nothing unless asked: a one-shot run has no
		// scraper, and must not fight a daemon for its port.
		listen = a.Config.HTTP.Listen
	}
	a.Logger.Info("rekey run", "config", a.ConfigPath, "once", once)
	var boundAddr net.Addr
	if listen != "" {
		httpCtx, stopHTTP := context.WithCancel(ctx)
		addr, done, err := a.Listen(httpCtx, listen)
		if err != nil {
			stopHTTP()
			return fmt.Errorf("--listen %s: %w (choose another address with --listen or http.listen, or --listen \"\" to serve nothing)", listen, err)
		}
		boundAddr = addr
		defer func() { stopHTTP(); <-done }()
	}
	if !once {
		c.firstRunHint(ctx, a, boundAddr)
		return a.Worker.Run(ctx)
	}
	r := a.Worker.RunOnce(ctx)
	if ctx.Err() != nil {
		return nil // stopped by a signal: checkpointed, leases released
	}
	if bad := a.Worker.AuditProblem(); bad != nil {
		// The cycle ran, but no checkpoint vouches for a trail that does
		// not verify: say so, and fail.
		return exitError{code: exitFailure, msg: fmt.Sprintf("%v; no audit checkpoint was written: run rekey audit verify", bad)}
	}
	if !r.OK() {
		return exitError{code: exitFailure, msg: fmt.Sprintf("%d key(s) failed this cycle: see the log above", r.Failed)}
	}
	return nil
}

func (c *cli) planCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "plan",
		Short: "Dry run: what the next cycle would do, DEKs to re-wrap, backend calls, ETA",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			eng := a.Engine
			p, err := eng.Plan(cmd.Context())
			if err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(p)
			}
			c.printPlan(p)
			return nil
		},
	}
}

func (c *cli) printPlan(p rotation.Plan) {
	if len(p.Keys) == 0 {
		fmt.Fprintln(c.stdout, "no keys: nothing to do")
		return
	}
	for _, k := range p.Keys {
		state := "ok"
		switch {
		case k.Overdue:
			state = "OVERDUE"
		case k.Due && k.DueReason == rekey.ReasonUsage && k.UsageTooLow != nil:
			state = "due by usage, max_encryptions too low"
		case k.Due && k.DueReason == rekey.ReasonUsage:
			state = "due by usage"
		case k.Due:
			state = "due"
		case k.DueSoon:
			state = "due soon"
		}
		fmt.Fprintf(c.stdout, "key %s (backend %s, v%d active, expires %s, %s)\n", k.Key, k.Backend, k.ActiveVersion, k.ExpiresAt.Format(time.RFC3339), state)
		if k.Usage != nil {
			fmt.Fprintf(c.stdout, "  usage: %s\n", formatUsage(*k.Usage))
		}
		if k.UsageTooLow != nil {
			fmt.Fprintf(c.stdout, "  NOT ROTATED: %s\n", k.UsageTooLow)
		}
		fmt.Fprintf(c.stdout, "  next cycle: %s\n", k.Action)
		if k.MoveTo != "" {
			fmt.Fprintf(c.stdout, "  move: backend %s → %s (new version on %s; every DEK unwrapped on %s, wrapped on %s)\n", k.Backend, k.MoveTo, k.MoveTo, k.Backend, k.MoveTo)
		}
		if k.Rotation != nil {
			r := k.Rotation
			fmt.Fprintf(c.stdout, "  open rotation: %s v%d→v%d, %s, %d/%d DEKs re-wrapped, started %s\n",
				r.ID, r.FromVersion, r.ToVersion, r.State, r.Done, r.Total, r.StartedAt.Format(time.RFC3339))
			if r.LastError != "" {
				fmt.Fprintf(c.stdout, "    last error: %s\n", printable(r.LastError))
			}
		}
		if k.DEKsToRewrap > 0 {
			fmt.Fprintf(c.stdout, "  DEKs to re-wrap: %d (about %.1fs at %.0f DEKs/s, %s)\n", k.DEKsToRewrap, k.EstimatedSeconds, k.Rate, k.RateSource)
		}
		if len(k.BackendCalls) > 0 {
			fmt.Fprintf(c.stdout, "  backend calls: %s\n", formatCalls(k.BackendCalls))
		}
		c.printSourceCounts(k.Sources)
		for _, v := range k.Versions {
			line := fmt.Sprintf("  v%d %s, %d DEKs: %s", v.Version, v.State, v.DEKs, v.Action)
			if v.Backend != "" && v.Backend != k.Backend {
				line = fmt.Sprintf("  v%d (on %s) %s, %d DEKs: %s", v.Version, v.Backend, v.State, v.DEKs, v.Action)
			}
			if !v.RetireAfter.IsZero() {
				line += " (retires after " + v.RetireAfter.Format(time.RFC3339) + ")"
			}
			if v.Why != "" {
				line += " — " + v.Why
			}
			fmt.Fprintln(c.stdout, line)
		}
		if k.Error != "" {
			fmt.Fprintf(c.stdout, "  error: %s\n", k.Error)
		}
	}
}

// formatCalls prints backend call counts as "current_version 1,
// rotate_key 1, rewrap_batch 3", sorted by name.
func formatCalls(calls map[string]int64) string {
	parts := make([]string, 0, len(calls))
	for _, name := range slices.Sorted(maps.Keys(calls)) {
		parts = append(parts, fmt.Sprintf("%s %d", name, calls[name]))
	}
	return strings.Join(parts, ", ")
}

func (c *cli) rotateCommand() *cobra.Command {
	var reason string
	var compromised int
	cmd := &cobra.Command{
		Use:   "rotate NAME [--reason TEXT] [--compromised VERSION]",
		Short: "Rotate a key now (manual), or in an emergency with --compromised",
		Long: `Rotate a key now: create a new version, re-wrap every DEK under it, commit.
The old version stays pending retirement for the key's grace.

--compromised VERSION is the emergency path: the version is marked compromised
at once (applications can no longer open DEKs under it), the key is rotated,
that version's DEKs are re-wrapped first, and the version is disabled in the
backend as soon as no DEK references it.`,
		Example: "  rekey rotate payments --reason \"staff change\"\n  rekey rotate payments --compromised 1",
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			eng := a.Engine
			var r rekey.Rotation
			if cmd.Flags().Changed("compromised") {
				if compromised < 1 {
					return usagef("--compromised takes a version number (1, 2, ...), got %d", compromised)
				}
				r, err = eng.RotateCompromised(cmd.Context(), args[0], compromised)
			} else {
				r, err = eng.Rotate(cmd.Context(), args[0], rekey.ReasonManual, reason)
			}
			if err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(r)
			}
			fmt.Fprintf(c.stdout, "rotated key %s: v%d → v%d, %d DEKs re-wrapped", r.Key, r.FromVersion, r.ToVersion, r.Done)
			if r.Failed > 0 {
				fmt.Fprintf(c.stdout, ", %d could not be unwrapped (%v): their version cannot retire until they are fixed", r.Failed, r.FailedDEKs)
			}
			fmt.Fprintln(c.stdout)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit trail)")
	cmd.Flags().IntVar(&compromised, "compromised", 0, "emergency: the compromised VERSION to re-wrap away from and refuse")
	return cmd
}

func (c *cli) retireCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "retire NAME VERSION",
		Short: "Retire an old version now; refused while any DEK references it",
		Args:  exactArgs(2, "NAME VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := strconv.Atoi(args[1])
			if err != nil || v < 1 {
				return usagef("VERSION must be a version number (1, 2, ...), got %q", args[1])
			}
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			eng := a.Engine
			if err := eng.Retire(cmd.Context(), args[0], v); err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(map[string]any{"key": args[0], "version": v, "state": rekey.VersionRetired})
			}
			fmt.Fprintf(c.stdout, "retired key %s version %d\n", args[0], v)
			return nil
		},
	}
}

// formatUsage prints a wrap count against its limit: "900 of 1000 wraps
// (90%; due at 800, refused at 1000)".
func formatUsage(u rekey.Usage) string {
	return fmt.Sprintf("%d of max_encryptions %d wraps (%.0f%%; due at %d, new wraps refused at %d)",
		u.Encryptions, u.Max, 100*u.Ratio(), u.Threshold, u.Max)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/spf13/cobra"
)

// addEngineCommands adds the commands of the rotation engine.
func (c *cli) addEngineCommands(root *cobra.Command) {
	root.AddCommand(c.runCommand(), c.planCommand(), c.rotateCommand(), c.retireCommand())
}

// engine builds the rotation engine over the app's store and backends.
func (c *cli) engine(a *app, obs rotation.Observer) (*rotation.Engine, error) {
	fps, err := failpoint.Parse(c.getenv(failpoint.EnvVar))
	if err != nil {
		return nil, usagef("%s: %v", failpoint.EnvVar, err)
	}
	w := a.cfg.Worker
	return rotation.New(rotation.Config{
		Store: a.store, Backends: a.backends, Logger: a.logger, Now: a.now,
		Owner: c.getenv("REKEY_WORKER_ID"), BatchSize: w.BatchSize, Concurrency: w.Concurrency,
		LeaseTTL: w.LeaseTTL, Failpoints: fps, Observer: obs, // kms_rate_limit: now kmsmw's, where backends are opened
	})
}

// reconcileKeys creates the keys declared in the config that the store
// lacks and brings the policy of the others in line, recording each change
// (key.created, policy.changed). A declared key on another backend than the
// stored one is an error for that key: keys do not move between backends.
func (c *cli) reconcileKeys(ctx context.Context, a *app) error {
	var errs []error
	for i, kc := range a.cfg.Keys {
		p := a.cfg.Policy(kc)
		k, err := a.store.GetKey(ctx, kc.Name)
		switch {
		case errors.Is(err, rekey.ErrKeyNotFound):
			if _, err := a.keyring.CreateKey(ctx, kc.Name, kc.Backend, p); err != nil {
				errs = append(errs, fmt.Errorf("keys[%d] %s: create: %w", i, kc.Name, err))
				continue
			}
			a.logger.Info("declared key created", "key_id", kc.Name, "backend", kc.Backend)
		case err != nil:
			errs = append(errs, fmt.Errorf("keys[%d] %s: %w", i, kc.Name, err))
		case k.Backend != kc.Backend:
			errs = append(errs, fmt.Errorf("keys[%d] %s: declared on backend %s but stored on %s: keys do not move between backends; declare it with backend: %s or rename it",
				i, kc.Name, kc.Backend, k.Backend, k.Backend))
		case !reflect.DeepEqual(k.Policy, p):
			// The active version's period is measured from when it became
			// active: expiry moves with the period.
			activated := k.ExpiresAt.Add(-k.Policy.RotationPeriod)
			expires := activated.Add(p.RotationPeriod)
			now := rekey.NormalizeTime(a.now())
			ev := rekey.AuditEvent{Time: now, Type: rekey.AuditPolicyChanged, Key: k.Name, FromVersion: k.ActiveVersion, ToVersion: k.ActiveVersion,
				Status: "success", Actor: "config", Reason: policyDiff(k.Policy, p)}
			if err := a.store.UpdateKeyPolicy(ctx, k.Name, p, expires, ev); err != nil {
				errs = append(errs, fmt.Errorf("keys[%d] %s: update policy: %w", i, kc.Name, err))
				continue
			}
			a.logger.Info("declared key policy changed", "key_id", k.Name, "change", ev.Reason, "expires_at", expires)
		}
	}
	return errors.Join(errs...)
}

func policyDiff(old, new rekey.Policy) string {
	s := ""
	add := func(name string, a, b time.Duration) {
		if a != b {
			if s != "" {
				s += " "
			}
			s += name + "=" + rekey.FormatDuration(a) + "->" + rekey.FormatDuration(b)
		}
	}
	add("rotation_period", old.RotationPeriod, new.RotationPeriod)
	add("rotate_within", old.RotateWithin, new.RotateWithin)
	add("notify_within", old.NotifyWithin, new.NotifyWithin)
	add("grace", old.Grace, new.Grace)
	add("destroy_after", old.DestroyAfter, new.DestroyAfter)
	return s
}

func (c *cli) runCommand() *cobra.Command {
	var once bool
	var listen string
	cmd := &cobra.Command{
		Use:   "run [--once] [--listen ADDR]",
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

With --once, one cycle runs and the exit code is 1 if any key failed.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.runWorker(cmd.Context(), once, listen, cmd.Flags().Changed("listen"))
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "run one cycle and exit")
	cmd.Flags().StringVar(&listen, "listen", "", "address for /metrics, /healthz, /readyz, /api/v1/status and the status page (default from config: 127.0.0.1:9464; empty string disables)")
	return cmd
}

func (c *cli) runWorker(ctx context.Context, once bool, listen string, listenSet bool) error {
	c.tolerateBackendErrors = true
	a, err := c.open(ctx)
	if err != nil {
		return err
	}
	// The worker logs at the config's level (info by default).
	a.logger = c.newLogger(a.cfg, slog.LevelInfo)
	if !listenSet && !once {
		// --once serves nothing unless asked: a one-shot run has no
		// scraper, and must not fight a daemon for its port.
		listen = a.cfg.HTTP.Listen
	}
	w, err := c.newWorker(ctx, a, listen, once)
	if err != nil {
		return err
	}
	return w.run(ctx, once)
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
			eng, err := c.engine(a, nil)
			if err != nil {
				return err
			}
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
		case k.Due:
			state = "due"
		case k.DueSoon:
			state = "due soon"
		}
		fmt.Fprintf(c.stdout, "key %s (backend %s, v%d active, expires %s, %s)\n", k.Key, k.Backend, k.ActiveVersion, k.ExpiresAt.Format(time.RFC3339), state)
		fmt.Fprintf(c.stdout, "  next cycle: %s\n", k.Action)
		if k.Rotation != nil {
			fmt.Fprintf(c.stdout, "  open rotation: %+v\n", *k.Rotation)
		}
		if k.DEKsToRewrap > 0 {
			fmt.Fprintf(c.stdout, "  DEKs to re-wrap: %d (about %.1fs at %.0f DEKs/s, %s)\n", k.DEKsToRewrap, k.EstimatedSeconds, k.Rate, k.RateSource)
		}
		if len(k.BackendCalls) > 0 {
			fmt.Fprintf(c.stdout, "  backend calls: %v\n", k.BackendCalls)
		}
		for _, v := range k.Versions {
			line := fmt.Sprintf("  v%d %s, %d DEKs: %s", v.Version, v.State, v.DEKs, v.Action)
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
			eng, err := c.engine(a, nil)
			if err != nil {
				return err
			}
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
			eng, err := c.engine(a, nil)
			if err != nil {
				return err
			}
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

package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/status"
	"github.com/rekeyhq/rekey/store/retrystore"
	"github.com/spf13/cobra"
)

func (c *cli) keyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Create, list and show root keys"}
	cmd.AddCommand(c.keyCreateCommand(), c.keyListCommand(), c.keyShowCommand(), c.keyMoveCommand())
	return cmd
}

func (c *cli) keyCreateCommand() *cobra.Command {
	var backend, period, within, notify, grace, destroy string
	var maxEnc int64
	var rotateAt float64
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a root key (version 1) in a backend",
		Long: `Create a root key: the backend creates version 1 and the store records it
as active until now + rotation period. Policy flags default to the config's
defaults (90d period, rotate 7d before expiry, 7d grace). Durations take Go
syntax plus d for days: 90d, 12h, 3s.`,
		Example: "  rekey key create payments\n  rekey key create demo --period 3s --rotate-within 1s --grace 0s",
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rekey.ValidateKeyName(args[0]); err != nil {
				return usagef("%v", err)
			}
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			p := a.Config.Defaults
			for _, f := range []struct {
				flag, val string
				dst       *time.Duration
				never     bool
			}{
				{"period", period, &p.RotationPeriod, false},
				{"rotate-within", within, &p.RotateWithin, false},
				{"notify-within", notify, &p.NotifyWithin, false},
				{"grace", grace, &p.Grace, false},
				{"destroy-after", destroy, &p.DestroyAfter, true},
			} {
				if f.val == "" {
					continue
				}
				d, err := rekey.ParseDuration(f.val, f.never)
				if err != nil {
					return usagef("--%s: %v", f.flag, err)
				}
				*f.dst = d
			}
			if f := cmd.Flags().Lookup("max-encryptions"); f.Changed {
				if maxEnc < 1 || maxEnc > rekey.MaxMaxEncryptions {
					return usagef("--max-encryptions %d: must be 1 to %d (2^32, the AES-GCM random-nonce bound); the default is %d (2^30)", maxEnc, rekey.MaxMaxEncryptions, rekey.DefaultMaxEncryptions)
				}
				p.MaxEncryptions = maxEnc
			}
			if f := cmd.Flags().Lookup("rotate-at"); f.Changed {
				if !(rotateAt > 0 && rotateAt <= 1) {
					return usagef("--rotate-at %g: must be a fraction above 0 and at most 1 (default %g)", rotateAt, rekey.DefaultRotateAt)
				}
				p.RotateAt = rotateAt
			}
			if err := p.Validate(); err != nil {
				return usagef("%v", err)
			}
			b, err := defaultBackend(a, backend)
			if err != nil {
				return err
			}
			// A key the backend creates but the store cannot record stays
			// in the backend under that name: check the store can be
			// written first (another process may hold its write lock).
			if w, ok := retrystore.Unwrap(a.Store).(interface{ CheckWrite(context.Context) error }); ok {
				if err := w.CheckWrite(cmd.Context()); err != nil {
					return err
				}
			}
			k, err := a.Keyring.CreateKey(cmd.Context(), args[0], b, p)
			if err != nil {
				return err
			}
			if c.jsonOut {
				v, err := status.Key(cmd.Context(), a.Store, a.Backends, k.Name, c.now())
				if err != nil {
					return err
				}
				return c.printJSON(v)
			}
			fmt.Fprintf(c.stdout, "created key %s in backend %s: version 1 active until %s (rotation period %s)\n",
				k.Name, k.Backend, k.ExpiresAt.Format(time.RFC3339), rekey.FormatDuration(k.Policy.RotationPeriod))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&backend, "backend", "", "backend name from the config (default: the only backend, or \"local\")")
	f.StringVar(&period, "period", "", "rotation period (default from config: 90d)")
	f.StringVar(&within, "rotate-within", "", "rotate when expiry is this close (default 7d)")
	f.StringVar(&notify, "notify-within", "", "signal \"due soon\" when expiry is this close (default 14d)")
	f.StringVar(&grace, "grace", "", "keep an old version pending retirement this long (default 7d)")
	f.StringVar(&destroy, "destroy-after", "", "destroy retired versions after this long, or never (default never)")
	f.Int64Var(&maxEnc, "max-encryptions", 0, "wraps one key version may do; past it new wraps are refused until the key rotates (default from config: 1073741824 = 2^30)")
	f.Float64Var(&rotateAt, "rotate-at", 0, "the key is due when its active version did this fraction of --max-encryptions (default 0.8)")
	return cmd
}

func (c *cli) keyListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List root keys",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := c.buildStatus(cmd.Context())
			if err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(st.Keys)
			}
			if len(st.Keys) == 0 {
				fmt.Fprintln(c.stdout, "no keys yet: create one with 'rekey key create NAME'")
				return nil
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tBACKEND\tACTIVE\tEXPIRES\tDEKS\tSTATE")
			for _, k := range st.Keys {
				fmt.Fprintf(tw, "%s\t%s\tv%d\t%s\t%d\t%s\n", k.Name, k.Backend, k.ActiveVersion,
					k.ExpiresAt.Format(time.RFC3339), k.DEKs, dueWord(k))
			}
			return tw.Flush()
		},
	}
}

func dueWord(k status.KeyView) string {
	switch {
	case k.Overdue:
		return "OVERDUE"
	case k.Due && k.DueReason == rekey.ReasonUsage && k.UsageTooLow != nil:
		return "due by usage, max_encryptions too low"
	case k.Due && k.DueReason == rekey.ReasonUsage:
		return "due by usage"
	case k.Due:
		return "due"
	case k.DueSoon:
		return "due soon"
	}
	return "ok"
}

func (c *cli) keyShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a root key, its policy, versions and DEKs per version",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			v, err := status.KeyWith(cmd.Context(), a.Store, a.Backends, args[0], c.now(), c.statusOptions())
			if err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(v)
			}
			c.printKey(v)
			c.printSourceCounts(v.Sources)
			return nil
		},
	}
}

func (c *cli) printKey(v status.KeyView) {
	fmt.Fprintf(c.stdout, "key %s (backend %s)\n", v.Name, v.Backend)
	fmt.Fprintf(c.stdout, "  active version  v%d\n", v.ActiveVersion)
	fmt.Fprintf(c.stdout, "  expires at      %s (%s, %s)\n", v.ExpiresAt.Format(time.RFC3339), humanUntil(v.ExpiresIn), dueWord(v))
	fmt.Fprintf(c.stdout, "  policy          period %s, rotate within %s, notify within %s, grace %s, destroy after %s\n",
		v.Policy.RotationPeriod, v.Policy.RotateWithin, v.Policy.NotifyWithin, v.Policy.Grace, v.Policy.DestroyAfter)
	fmt.Fprintf(c.stdout, "  usage limit     max_encryptions %d, due at rotate_at %g\n", v.Policy.MaxEncryptions, v.Policy.RotateAt)
	if v.Usage != nil {
		fmt.Fprintf(c.stdout, "  usage           %s\n", formatUsage(*v.Usage))
	}
	if v.UsageTooLow != nil {
		fmt.Fprintf(c.stdout, "  NOT ROTATED     %s\n", v.UsageTooLow)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VERSION\tSTATE\tDEKS\tWRAPS\tCREATED\tRETIRE AFTER")
	for _, vv := range v.Versions {
		ra := "-"
		if vv.RetireAfter != nil {
			ra = vv.RetireAfter.Format(time.RFC3339)
			if vv.RetirementBlocked {
				ra += " (blocked: DEKs still reference it)"
			}
		}
		wraps := "-"
		if vv.Encryptions != nil {
			wraps = fmt.Sprint(*vv.Encryptions)
		}
		fmt.Fprintf(tw, "  v%d\t%s\t%d\t%s\t%s\t%s\n", vv.Version, vv.State, vv.DEKs, wraps, vv.CreatedAt.Format(time.RFC3339), ra)
	}
	tw.Flush()
}

// humanUntil renders a number of seconds as "in 3d4h" or "5m ago".
func humanUntil(sec float64) string {
	d := time.Duration(sec * float64(time.Second)).Round(time.Second)
	if d >= 0 {
		return "in " + shortDuration(d)
	}
	return shortDuration(-d) + " ago"
}

func shortDuration(d time.Duration) string {
	if d >= rekey.Day {
		days := d / rekey.Day
		h := (d - days*rekey.Day) / time.Hour
		if h == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, h)
	}
	return d.String()
}

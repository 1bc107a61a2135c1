package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/spf13/cobra"
)

// parseSince reads --since: a duration back from now (7d, 12h) or an RFC 3339
// time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := rekey.ParseDuration(s, false); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("--since %q: give a duration back from now (7d, 12h) or an RFC 3339 time (2026-01-31T00:00:00Z)", s)
}

func (c *cli) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read, verify and export the tamper-evident audit trail",
		Long: `Every state change of rekey writes an audit event in the same transaction:
key.created, policy.changed, rotation.started, version.created,
version.adopted, rewrap.progress, rotation.committed, rotation.completed,
rotation.failed, version.pending_retirement, version.retired,
version.destroyed, retirement.blocked, version.compromised.

Events are hash-chained (each carries the SHA-256 of the previous), and the
head of the chain is checkpointed with a MAC made by a key held in a backend,
not in the database, at the end of every command and worker cycle that wrote
events.`,
	}
	cmd.AddCommand(c.auditListCommand(), c.auditVerifyCommand(), c.auditExportCommand())
	return cmd
}

func (c *cli) auditListCommand() *cobra.Command {
	var key, since string
	var limit int
	cmd := &cobra.Command{
		Use:   "list [--key NAME] [--since D]",
		Short: "List audit events in order (--json: one JSON object per line)",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			from, err := parseSince(since, c.now())
			if err != nil {
				return err
			}
			q := rekey.AuditQuery{Key: key, Since: from}
			if c.jsonOut {
				_, err := audit.Export(cmd.Context(), a.Store, c.stdout, q)
				return err
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tKEY\tVERSIONS\tDEKS\tSTATUS\tACTOR\tDETAIL")
			n := 0
			_, err = audit.Tail(cmd.Context(), a.Store, 0, func(e rekey.AuditEvent) error {
				if (key != "" && e.Key != key) || (!from.IsZero() && e.Time.Before(from)) {
					return nil
				}
				if limit > 0 && n >= limit {
					return nil
				}
				n++
				versions := ""
				switch {
				case e.FromVersion > 0 && e.ToVersion > 0 && e.FromVersion != e.ToVersion:
					versions = fmt.Sprintf("v%d→v%d", e.FromVersion, e.ToVersion)
				case e.ToVersion > 0:
					versions = fmt.Sprintf("v%d", e.ToVersion)
				case e.FromVersion > 0:
					versions = fmt.Sprintf("v%d", e.FromVersion)
				}
				detail := e.Reason
				if e.Error != "" {
					detail = strings.TrimSpace(detail + " error: " + e.Error)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339), e.Type, e.Key, versions, e.DEKs, e.Status, e.Actor, detail)
				return nil
			})
			if err != nil {
				return err
			}
			if n == 0 {
				fmt.Fprintln(c.stdout, "no audit events match")
				return nil
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "only events of this key")
	cmd.Flags().StringVar(&since, "since", "", "only events since a duration ago (7d) or an RFC 3339 time")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many events (text output)")
	return cmd
}

func (c *cli) auditVerifyCommand() *cobra.Command {
	var reanchor bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Recompute the hash chain and check every checkpoint; exit 1 naming the first bad event",
		Long: `Recompute every event's hash and link, check that sequence numbers are
contiguous, and check each checkpoint's MAC with the backend key. Names the
first edited, deleted, inserted, reordered or truncated event and exits 1.

Events after the newest checkpoint are hash-chained but not yet vouched for by
a MAC: a consistent rewrite of them by someone with database write access
would only be caught against the next checkpoint. verify says how many.

verify also checks the trail against the state it describes (every key,
version, state change and rotation has its event, and no event contradicts the
state), the MACed anchor kept beside the database (audit.anchor), and the
database's append-only triggers.

--reanchor is for an operator who has checked the trail (against the
checkpoints the worker forwards to its log, or a backup) when verify rejects
only its anchor (missing, in an old format, or not MACed by this backend's
key): if everything else verifies, it checkpoints the head and writes a new
anchor there.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			var res audit.Result
			if reanchor {
				res, err = a.Audit.Reanchor(cmd.Context())
				var ice *audit.InvalidChainError
				if errors.As(err, &ice) {
					return exitError{code: exitFailure, msg: "not re-anchored: the audit trail does not verify: " + ice.Problem.String()}
				}
			} else {
				res, err = a.Audit.Verify(cmd.Context())
			}
			if err != nil {
				return err
			}
			if c.jsonOut {
				if err := c.printJSON(res); err != nil {
					return err
				}
			} else {
				printVerify(c, res)
			}
			if !res.Valid {
				return exitError{code: exitFailure, msg: "the audit trail does not verify: " + res.FirstBad.String()}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&reanchor, "reanchor", false, "after checking the trail yourself: checkpoint it and start a new anchor, when only the anchor is wrong")
	return cmd
}

func printVerify(c *cli, res audit.Result) {
	if res.Valid {
		fmt.Fprintf(c.stdout, "audit trail OK: %d events, every hash recomputes and links to the previous one", res.Events)
		if res.Checkpoints > 0 {
			fmt.Fprintf(c.stdout, "; %d checkpoint(s) verified, the newest at seq %d", res.Checkpoints, res.LastCheckpoint)
		}
		fmt.Fprintln(c.stdout)
	} else {
		fmt.Fprintf(c.stdout, "audit trail INVALID: %s\n", res.FirstBad)
	}
	if res.UncheckedTail != nil {
		fmt.Fprintf(c.stdout, "note: %s\n", res.UncheckedTail.Message)
	}
	if res.Unverifiable != "" {
		fmt.Fprintf(c.stdout, "note: %s\n", res.Unverifiable)
	}
}

func (c *cli) auditExportCommand() *cobra.Command {
	var key, since, out string
	cmd := &cobra.Command{
		Use:   "export [--out F] [--key NAME] [--since D]",
		Short: "Export audit events as JSON lines (for a SIEM)",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			from, err := parseSince(since, c.now())
			if err != nil {
				return err
			}
			q := rekey.AuditQuery{Key: key, Since: from}
			if out == "" || out == "-" {
				_, err := audit.Export(cmd.Context(), a.Store, c.stdout, q)
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			n, err := audit.Export(cmd.Context(), a.Store, f, q)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return errors.Join(err, os.Remove(out))
			}
			fmt.Fprintf(c.stderr, "exported %d audit events to %s\n", n, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "only events of this key")
	cmd.Flags().StringVar(&since, "since", "", "only events since a duration ago (7d) or an RFC 3339 time")
	cmd.Flags().StringVar(&out, "out", "-", "output file (0600), - for stdout")
	return cmd
}

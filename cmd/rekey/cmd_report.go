package main

import (
	"bufio"
	"fmt"

	"github.com/rekeyhq/rekey/report"
	"github.com/spf13/cobra"
)

func (c *cli) reportCommand() *cobra.Command {
	var since, format string
	cmd := &cobra.Command{
		Use:   "report [--since D] [--format md|json|html]",
		Short: "Compliance report: policies, rotations (on time or late), retirements, open problems, audit verification",
		Long: `The evidence an auditor asks for (SOC 2, PCI DSS 3.7.4): for each key its
policy, every rotation in the period (when, from→to, DEKs re-wrapped,
duration, on time or LATE and by how much), retirements, the problems open
now, and the result of verifying the audit trail.

A scheduled rotation is on time when it committed before the old version's
period ended (its activation + rotation_period); manual and emergency
rotations are not judged. --since takes a duration back from now (90d) or an
RFC 3339 time; default: all history.`,
		Example: "  rekey report --since 90d > rotation-evidence.md\n  rekey report --format html > report.html",
		Args:    exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c.jsonOut && !cmd.Flags().Changed("format") {
				format = "json"
			}
			switch format {
			case "md", "markdown", "json", "html":
			default:
				return usagef("--format %q: use md, json or html", format)
			}
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			now := c.now()
			from, err := parseSince(since, now)
			if err != nil {
				return err
			}
			res, err := a.Audit.Verify(cmd.Context())
			if err != nil {
				return fmt.Errorf("verify the audit trail: %w", err)
			}
			chain := report.ChainCheck{Valid: res.Valid, Events: res.Events, Checkpoints: res.Checkpoints, LastSeq: res.LastSeq,
				HeadHash: res.HeadHash, Unverifiable: res.Unverifiable, CheckedAt: now}
			if res.FirstBad != nil {
				chain.FirstBad = res.FirstBad.String()
			}
			r, err := report.BuildWith(cmd.Context(), a.Store, from, now, chain, report.Options{Backends: a.Backends})
			if err != nil {
				return err
			}
			w := bufio.NewWriter(c.stdout)
			switch format {
			case "json":
				err = r.JSON(w)
			case "html":
				err = r.HTML(w)
			default:
				err = r.Markdown(w)
			}
			if err != nil {
				return err
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "period start: a duration back from now (90d) or an RFC 3339 time (default: all history)")
	cmd.Flags().StringVar(&format, "format", "md", "md, json or html")
	return cmd
}

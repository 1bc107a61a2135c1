package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/rekeyhq/rekey/status"
	"github.com/spf13/cobra"
)

func (c *cli) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Keys, versions, DEK counts, due/overdue, open rotations",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := c.buildStatus(cmd.Context())
			if err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(st)
			}
			c.printStatus(st)
			return nil
		},
	}
}

// buildStatus opens the store and builds the status view that status, key
// list and /api/v1/status print.
func (c *cli) buildStatus(ctx context.Context) (status.Status, error) {
	a, err := c.open(ctx)
	if err != nil {
		return status.Status{}, err
	}
	return status.Build(ctx, a.Store, c.now())
}

func (c *cli) printStatus(st status.Status) {
	if len(st.Keys) == 0 {
		fmt.Fprintln(c.stdout, "no keys yet: create one with 'rekey key create NAME'")
		return
	}
	for i, k := range st.Keys {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		c.printKey(k)
	}
	fmt.Fprintln(c.stdout)
	if len(st.Rotations) == 0 {
		fmt.Fprintln(c.stdout, "open rotations: none")
	} else {
		fmt.Fprintln(c.stdout, "open rotations:")
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  KEY\tFROM→TO\tSTATE\tPROGRESS\tSTARTED\tLAST ERROR")
		for _, r := range st.Rotations {
			fmt.Fprintf(tw, "  %s\tv%d→v%d\t%s\t%d/%d (%.0f%%)\t%s\t%s\n", r.Key, r.FromVersion, r.ToVersion, r.State,
				r.Done, r.Total, r.Progress*100, r.StartedAt.Format(time.RFC3339), r.LastError)
		}
		tw.Flush()
	}
	if len(st.Recent) > 0 {
		fmt.Fprintln(c.stdout, "recent rotations:")
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  KEY\tFROM→TO\tREASON\tSTATE\tDEKS\tSTARTED\tFINISHED")
		for _, r := range st.Recent {
			fin := "-"
			if !r.FinishedAt.IsZero() {
				fin = r.FinishedAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "  %s\tv%d→v%d\t%s\t%s\t%d\t%s\t%s\n", r.Key, r.FromVersion, r.ToVersion, r.Reason, r.State, r.Done,
				r.StartedAt.Format(time.RFC3339), fin)
		}
		tw.Flush()
	}
	for _, r := range st.Recent {
		if len(r.FailedDEKs) > 0 {
			fmt.Fprintf(c.stdout, "rotation %s of key %s (v%d→v%d): %d DEK(s) could not be unwrapped and block retirement of their version: %v\n",
				r.ID, r.Key, r.FromVersion, r.ToVersion, r.Failed, r.FailedDEKs)
		}
	}
}

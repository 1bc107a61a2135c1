package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

func (c *cli) keyMoveCommand() *cobra.Command {
	var to, reason string
	cmd := &cobra.Command{
		Use:   "move NAME --to BACKEND [--reason TEXT]",
		Short: "Move a key to another backend, as a rotation",
		Long: `Move a key to another configured backend: a rotation (reason move) whose
new version is created on BACKEND (the key is created there if BACKEND holds
no version of it yet). Every DEK is unwrapped on its version's backend and
wrapped on BACKEND; the commit makes BACKEND the key's backend. The old
versions stay on the old backend, pending retirement for the key's grace,
and are retired there as usual. Every audit event of the move names both
backends. A crash at any point is finished by the next run (rekey run, or
this command again) with exactly one new version.`,
		Example: "  rekey key move payments --to aws\n  rekey key move payments --to hsm --reason \"leaving the embedded keyring\"",
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usagef("--to BACKEND is required: name a backend from backends: in the config")
			}
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			if _, ok := a.Config.Backends[to]; !ok {
				return usagef("--to %q: no such backend in %s: configured backends: %s", to, a.ConfigPath, backendNames(a.Config.Backends))
			}
			r, err := a.Engine.Move(cmd.Context(), args[0], to, reason)
			if err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(r)
			}
			fmt.Fprintf(c.stdout, "moved key %s to backend %s: v%d → v%d, %d DEKs re-wrapped", r.Key, r.ToBackend, r.FromVersion, r.ToVersion, r.Done)
			if r.Failed > 0 {
				fmt.Fprintf(c.stdout, ", %d could not be unwrapped (%v): they stay on the old backend's version, which cannot retire until they are fixed", r.Failed, r.FailedDEKs)
			}
			fmt.Fprintln(c.stdout)
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the configured backend to move the key to")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit trail)")
	return cmd
}

// backendNames lists configured backend names for a message.
func backendNames[V any](m map[string]V) string {
	names := slices.Sorted(maps.Keys(m))
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(names, ", ")
}

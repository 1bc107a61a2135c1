package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/rotation"
	"github.com/rekeyhq/rekey/source"
	"github.com/spf13/cobra"
)

// sourceView is a DEK source as source list prints it: never its DSN.
type sourceView struct {
	Name          string `json:"name"`
	Driver        string `json:"driver"`
	Table         string `json:"table"`
	IDColumn      string `json:"id_column"`
	WrappedColumn string `json:"wrapped_column"`
	VersionColumn string `json:"version_column"`
	Key           string `json:"key,omitempty"`
	KeyColumn     string `json:"key_column,omitempty"`
	Where         string `json:"where,omitempty"`
}

func (c *cli) sourceCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "source", Short: "DEK sources: the application's own tables of wrapped DEKs (dek_sources)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the configured DEK sources (never their DSN)",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			views := make([]sourceView, 0, len(a.Config.DEKSources))
			for _, s := range a.Config.DEKSources {
				views = append(views, sourceView{s.Name, s.Driver, s.Table, s.IDColumn, s.WrappedColumn, s.VersionColumn, s.Key, s.KeyColumn, s.Where})
			}
			if c.jsonOut {
				return c.printJSON(map[string]any{"sources": views})
			}
			if len(views) == 0 {
				fmt.Fprintf(c.stdout, "no DEK sources: declare them under dek_sources: in %s\n", a.ConfigPath)
				return nil
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDRIVER\tTABLE\tID\tWRAPPED\tVERSION\tKEY\tWHERE")
			for _, v := range views {
				key := v.Key
				if v.KeyColumn != "" {
					key = "column " + v.KeyColumn
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Driver, v.Table, v.IDColumn, v.WrappedColumn, v.VersionColumn, key, orDash(v.Where))
			}
			return tw.Flush()
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "check NAME",
		Short: "Check a DEK source online: table, columns, types, privileges; print its rows per version",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			src := a.Source(args[0])
			if src == nil {
				names := make([]string, 0, len(a.Sources))
				for _, s := range a.Sources {
					names = append(names, s.Name())
				}
				return usagef("no DEK source %q in %s: configured sources: %s", args[0], a.ConfigPath, orNone(names))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			cerr := src.Check(ctx)
			out := map[string]any{"source": src.Name(), "ok": cerr == nil}
			var counts map[int]int64
			if cerr == nil && src.Config().Key != "" {
				if counts, err = src.CountDEKs(ctx, src.Config().Key); err == nil {
					out["key"], out["deks_by_version"] = src.Config().Key, counts
				}
			}
			if cerr != nil {
				out["problems"] = checkProblems(cerr)
			}
			if c.jsonOut {
				if err := c.printJSON(out); err != nil {
					return err
				}
			} else if cerr == nil {
				fmt.Fprintf(c.stdout, "source %s: ok (table %s, columns, types and privileges)\n", src.Name(), src.Config().Table)
				for _, v := range slices.Sorted(maps.Keys(counts)) {
					fmt.Fprintf(c.stdout, "  key %s v%d: %d rows\n", src.Config().Key, v, counts[v])
				}
			}
			if cerr != nil {
				if c.jsonOut {
					return exitError{code: exitFailure}
				}
				return exitError{code: exitFailure, msg: printable(cerr.Error())}
			}
			return nil
		},
	})
	return cmd
}

func checkProblems(err error) []string {
	var ce *source.CheckError
	if errors.As(err, &ce) {
		return ce.Problems
	}
	return []string{err.Error()}
}

// onlineProblems connects to the store, every backend and every DEK source
// and returns what is wrong, each line naming the part.
func (c *cli) onlineProblems(ctx context.Context) ([]string, error) {
	a, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var probs []string
	if err := a.Store.Ping(ctx); err != nil {
		probs = append(probs, "store: "+err.Error())
	}
	for _, name := range slices.Sorted(maps.Keys(a.Backends)) {
		if p, ok := a.Backends[name].(rekey.Pinger); ok {
			if err := p.Ping(ctx); err != nil {
				probs = append(probs, fmt.Sprintf("backends.%s: %v", name, err))
			}
		}
	}
	for _, err := range a.CheckSources(ctx) {
		probs = append(probs, err.Error())
	}
	return probs, nil
}

// sourceCounts returns each source's rows of key per version (nil without
// sources).
func (c *cli) sourceCounts(ctx context.Context, key string) []rotation.SourceCount {
	if c.sys == nil || len(c.sys.Sources) == 0 {
		return nil
	}
	// An unreachable database must not hang status: each count is bounded.
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return c.sys.Engine.SourceCounts(ctx, key)
}

func (c *cli) printSourceCounts(counts []rotation.SourceCount) {
	for _, sc := range counts {
		if sc.Error != "" {
			fmt.Fprintf(c.stdout, "  source %-9s ERROR %s\n", sc.Source, printable(sc.Error))
			continue
		}
		parts := make([]string, 0, len(sc.Versions))
		for _, v := range slices.Sorted(maps.Keys(sc.Versions)) {
			parts = append(parts, fmt.Sprintf("v%d %d", v, sc.Versions[v]))
		}
		fmt.Fprintf(c.stdout, "  source %-9s %s\n", sc.Source, orNone(parts))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

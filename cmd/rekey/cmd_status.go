package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/status"
	"github.com/spf13/cobra"
)

func (c *cli) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Keys, versions, DEK counts, due/overdue, open rotations",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// A broken backend (a corrupt keyring) must not hide what the
			// store holds: open it tolerated, and report it per key.
			c.tolerateBackendErrors = true
			st, err := c.buildStatusWith(cmd.Context(), c.statusOptions())
			if err != nil {
				return err
			}
			problems := c.backendProblems(cmd.Context(), st)
			notes := c.backendNotes(cmd.Context(), st, problems)
			if c.jsonOut {
				keys := make([]statusKey, len(st.Keys))
				for i, k := range st.Keys {
					keys[i] = statusKey{KeyView: k, BackendError: problems[k.Name], BackendNote: notes[k.Name]}
				}
				if err := c.printJSON(struct {
					status.Status
					Keys []statusKey `json:"keys"`
				}{st, keys}); err != nil {
					return err
				}
			} else {
				c.printStatus(st, problems, notes)
			}
			if len(problems) > 0 {
				return exitError{code: exitFailure, msg: fmt.Sprintf("%d key(s) have a backend problem: see backend_error above", len(problems))}
			}
			return nil
		},
	}
}

// buildStatus opens the store and builds the status view that status, key
// list and /api/v1/status print.
func (c *cli) buildStatus(ctx context.Context) (status.Status, error) {
	return c.buildStatusWith(ctx, status.Options{})
}

// buildStatusWith is buildStatus with the additions of opt.
func (c *cli) buildStatusWith(ctx context.Context, opt status.Options) (status.Status, error) {
	a, err := c.open(ctx)
	if err != nil {
		return status.Status{}, err
	}
	if opt.SourceCounts != nil && (c.sys == nil || len(c.sys.Sources) == 0) {
		opt.SourceCounts = nil
	}
	return status.BuildWith(ctx, a.Store, a.Backends, c.now(), opt)
}

// statusOptions adds the DEK sources' counts to a status view (KeyView.Sources,
// which also count in retirement_blocked).
func (c *cli) statusOptions() status.Options {
	return status.Options{SourceCounts: c.sourceCounts}
}

// statusKey is a key of status --json: the key view and the problem its
// backend has, if any.
type statusKey struct {
	status.KeyView
	BackendError string `json:"backend_error,omitempty"`
	// BackendNote says what the backend cannot do for this key (retire
	// single versions), so that status does not pretend it did.
	BackendNote string `json:"backend_note,omitempty"`
}

// backendNotes returns, per key whose backend works but cannot retire
// single versions (rekey.Capabilities.RetireVersion false: Key Protect,
// for one), a note saying that its old versions are retired in rekey's
// store only and stay usable at the backend.
func (c *cli) backendNotes(ctx context.Context, st status.Status, problems map[string]string) map[string]string {
	notes := map[string]string{}
	if c.sys == nil {
		return notes
	}
	for _, k := range st.Keys {
		b, ok := c.sys.Backends[k.Backend]
		if !ok || problems[k.Name] != "" {
			continue
		}
		if rekey.CapabilitiesOf(b).RetireVersion {
			if n := c.deletionNote(ctx, k, b); n != "" {
				notes[k.Name] = n
			}
			continue
		}
		var old []string
		for _, v := range k.Versions {
			if v.State == rekey.VersionRetired || v.State == rekey.VersionDestroyed {
				old = append(old, fmt.Sprintf("v%d", v.Version))
			}
		}
		what := "old versions are retired in rekey only"
		if len(old) > 0 {
			what = strings.Join(old, ", ") + " retired in rekey only"
		}
		notes[k.Name] = fmt.Sprintf("backend %s (%s) cannot retire single key versions: %s (rekey refuses them; the backend can still unwrap under them until the whole key is deleted there)",
			k.Backend, c.sys.Config.Backends[k.Backend].Type, what)
	}
	return notes
}

// deletionScheduler is a backend whose destroyed versions are deleted
// after a waiting period (AWS KMS: ScheduleKeyDeletion).
type deletionScheduler interface {
	DeletionDate(ctx context.Context, ref string, version int) (time.Time, error)
}

// deletionNote says when the backend deletes each destroyed version of k,
// for a backend that schedules deletions; "" otherwise.
func (c *cli) deletionNote(ctx context.Context, k status.KeyView, b rekey.KMS) string {
	ds, ok := kmsmw.Unwrap(b).(deletionScheduler)
	if !ok {
		return ""
	}
	key, err := c.sys.Store.GetKey(ctx, k.Name)
	if err != nil {
		return ""
	}
	var parts []string
	for _, v := range k.Versions {
		if v.State != rekey.VersionDestroyed {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		when, err := ds.DeletionDate(cctx, key.BackendRef, v.Version)
		cancel()
		switch {
		case err != nil:
			parts = append(parts, fmt.Sprintf("v%d: deletion date unknown (%v)", v.Version, err))
		case !when.IsZero():
			parts = append(parts, fmt.Sprintf("v%d deleted by the backend on %s", v.Version, when.UTC().Format(time.RFC3339)))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "backend " + k.Backend + " deletes destroyed versions after a waiting period (cancel it there to recover one): " + strings.Join(parts, "; ")
}

// backendProblems asks each key's backend for its current version: an
// error, or a version behind the store's active one (a keyring restored
// from an older backup: DEKs wrapped under the newer versions would not
// open), is that key's problem.
func (c *cli) backendProblems(ctx context.Context, st status.Status) map[string]string {
	problems := map[string]string{}
	if c.sys == nil {
		return problems
	}
	for _, k := range st.Keys {
		b, ok := c.sys.Backends[k.Backend]
		if !ok {
			problems[k.Name] = fmt.Sprintf("backend %q is not configured: add it to backends: in %s", k.Backend, c.sys.ConfigPath)
			continue
		}
		key, err := c.sys.Store.GetKey(ctx, k.Name)
		if err != nil {
			problems[k.Name] = err.Error()
			continue
		}
		// The active version's number at the backend: after a move
		// (rekey key move) it is not rekey's number.
		active := rekey.Placement{Version: key.ActiveVersion}
		if vs, err := c.sys.Store.ListVersions(ctx, k.Name); err == nil {
			for _, v := range vs {
				if v.Version == key.ActiveVersion {
					active = rekey.PlacementOf(key, v)
				}
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		v, err := b.CurrentVersion(cctx, key.BackendRef)
		cancel()
		switch {
		case err != nil:
			problems[k.Name] = err.Error()
		case v < active.Version:
			problems[k.Name] = fmt.Sprintf("the backend's current version is v%d, behind the store's active v%d (v%d at the backend): the backend (keyring) was rolled back, e.g. restored from an older backup, and DEKs under the newer versions will not open: restore its newest copy", v, k.ActiveVersion, active.Version)
		}
	}
	return problems
}

func (c *cli) printStatus(st status.Status, problems, notes map[string]string) {
	if len(st.Keys) == 0 {
		fmt.Fprintln(c.stdout, "no keys yet: create one with 'rekey key create NAME'")
		return
	}
	for i, k := range st.Keys {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		c.printKey(k)
		c.printSourceCounts(k.Sources)
		if p := problems[k.Name]; p != "" {
			fmt.Fprintf(c.stdout, "  BACKEND ERROR   %s\n", printable(p))
		}
		if n := notes[k.Name]; n != "" {
			fmt.Fprintf(c.stdout, "  BACKEND NOTE    %s\n", n)
		}
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

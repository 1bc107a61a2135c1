package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/spf13/cobra"
)

func (c *cli) dekCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "dek", Short: "Create and inspect data-encryption keys (stored wrapped, never in plaintext)"}
	cmd.AddCommand(c.dekCreateCommand(), c.dekShowCommand())
	return cmd
}

func (c *cli) dekCreateCommand() *cobra.Command {
	var key, label string
	var count int
	cmd := &cobra.Command{
		Use:   "create --key NAME [--label L] [--count N]",
		Short: "Create DEKs wrapped under a key's active version",
		Long: `Create DEKs: random 32-byte keys, wrapped under the key's active version and
stored; the plaintext is never printed. --count N creates N of them in
batches of 1000 (bulk provisioning).`,
		Example: "  rekey dek create --key payments\n  rekey dek create --key payments --count 10000",
		Args:    exactArgs(0, "none (use --key)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usagef("--key is required: the root key to wrap the DEK under")
			}
			if count < 1 {
				return usagef("--count must be at least 1 (got %d)", count)
			}
			if err := checkLabel(label); err != nil {
				return err
			}
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("count") {
				n, err := a.Keyring.NewDEKs(cmd.Context(), key, label, count)
				if err != nil {
					if n > 0 {
						return fmt.Errorf("created %d of %d DEKs, then: %w", n, count, err)
					}
					return err
				}
				if c.jsonOut {
					return c.printJSON(map[string]int{"created": n})
				}
				fmt.Fprintf(c.stdout, "created %d DEKs under key %s\n", n, key)
				return nil
			}
			id, plain, err := a.Keyring.NewDEK(cmd.Context(), key, label)
			if err != nil {
				return err
			}
			clear(plain) // the CLI never shows a plaintext DEK
			d, err := a.Store.GetDEK(cmd.Context(), id)
			if err != nil {
				return err
			}
			if c.jsonOut {
				return c.printJSON(map[string]any{"id": d.ID, "key": d.Key, "version": d.Version})
			}
			fmt.Fprintln(c.stdout, d.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "root key to wrap under (required)")
	cmd.Flags().StringVar(&label, "label", "", "free-text label stored with the DEK")
	cmd.Flags().IntVar(&count, "count", 1, "how many DEKs to create")
	return cmd
}

func (c *cli) dekShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a DEK's key, version and label, and check that it unwraps",
		Long: `Show a DEK's metadata and check that its wrapped form still unwraps under its
key version (the plaintext is never shown). Exits 1, naming the DEK, when it
does not.`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			id := args[0]
			if !rekey.ValidID(id) {
				return usagef("%q is not a DEK id (26 characters of 0-9 and A-Z, as printed by 'rekey dek create')", id)
			}
			d, err := a.Store.GetDEK(cmd.Context(), id)
			if errors.Is(err, rekey.ErrDEKNotFound) {
				return fmt.Errorf("dek %s: this store (%s) does not have it: %w: check the id, or use the --config or $REKEY_HOME it was created with", id, a.ConfigPath, err)
			}
			if err != nil {
				return fmt.Errorf("dek %s: %w", id, err)
			}
			plain, err := a.Keyring.OpenDEK(cmd.Context(), id)
			clear(plain)
			if c.jsonOut {
				out := map[string]any{"id": d.ID, "key": d.Key, "version": d.Version, "label": d.Label,
					"created_at": d.CreatedAt, "updated_at": d.UpdatedAt, "wrapped_bytes": len(d.Wrapped), "unwraps": err == nil}
				if err != nil {
					out["error"] = err.Error()
				}
				if perr := c.printJSON(out); perr != nil {
					return perr
				}
				if err != nil {
					return exitError{code: exitFailure, msg: err.Error()}
				}
				return nil
			}
			fmt.Fprintf(c.stdout, "dek %s\n  key       %s\n  version   v%d\n", d.ID, d.Key, d.Version)
			if d.Label != "" {
				// Labels stored through the library are not checked:
				// escape what a terminal would act on.
				fmt.Fprintf(c.stdout, "  label     %s\n", printable(d.Label))
			}
			fmt.Fprintf(c.stdout, "  created   %s\n  updated   %s\n", d.CreatedAt.Format(time.RFC3339), d.UpdatedAt.Format(time.RFC3339))
			if err != nil {
				fmt.Fprintln(c.stdout, "  unwraps   NO")
				return err
			}
			fmt.Fprintln(c.stdout, "  unwraps   yes")
			return nil
		},
	}
}

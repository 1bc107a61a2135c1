package main

import (
	"fmt"
	"path/filepath"

	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/setup"
	"github.com/spf13/cobra"
)

func (c *cli) initCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "init [--dir DIR]",
		Short: "Create the embedded default: config, keyring, master key (0600), SQLite database",
		Long: `Create the embedded default in DIR (default $REKEY_HOME, else ./rekey-data):
rekey.yaml, a master key file (0600; skipped when REKEY_MASTER_KEY is set), an
encrypted local keyring (0600) and a SQLite database (0600). Running it again
changes nothing. Other commands create the same on first use.

The master key file beside the keyring is for trying rekey and for
development: in production keep the master key in a secret manager and pass it
as REKEY_MASTER_KEY, or use a KMS/HSM backend.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			home := dir
			if home == "" {
				_, home, _ = config.Resolve("", c.getenv)
				if c.configPath != "" {
					return usagef("init creates the embedded default; give --dir instead of --config")
				}
			}
			created, err := setup.InitHome(cmd.Context(), home, c.getenv)
			if err != nil {
				return err
			}
			if c.jsonOut {
				if created == nil {
					created = []string{}
				}
				return c.printJSON(map[string]any{"home": home, "config": filepath.Join(home, config.FileName), "created": created})
			}
			if len(created) == 0 {
				fmt.Fprintf(c.stdout, "rekey is already initialized in %s\n", home)
				return nil
			}
			fmt.Fprintf(c.stdout, "initialized rekey in %s:\n", home)
			for _, f := range created {
				fmt.Fprintf(c.stdout, "  %s\n", f)
			}
			fmt.Fprintln(c.stdout, "next: rekey key create NAME")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory of the embedded default (default $REKEY_HOME or ./rekey-data)")
	return cmd
}

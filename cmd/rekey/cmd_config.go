package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/rekeyhq/rekey/config"
	"github.com/spf13/cobra"
)

func (c *cli) configCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check the configuration"}
	var online bool
	validate := &cobra.Command{
		Use:   "validate",
		Short: "Validate the config file: every problem is printed with its field path",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, home, fromFile := config.Resolve(c.configPath, c.getenv)
			if !fromFile {
				cfg := config.Default(home)
				if err := cfg.Validate(); err != nil {
					return err
				}
				if c.jsonOut {
					return c.printJSON(map[string]any{"valid": true, "config": "embedded default", "home": home})
				}
				fmt.Fprintf(c.stdout, "no config file: the embedded default in %s is valid\n", home)
				return nil
			}
			_, err := config.Load(path)
			if err != nil {
				var ve *config.ValidationError
				if !errors.As(err, &ve) {
					return err // it could not be read: Load says why
				}
				if c.jsonOut {
					c.printJSON(map[string]any{"valid": false, "config": path, "problems": ve.Problems})
					return exitError{code: exitFailure}
				}
				return fmt.Errorf("%s is not valid:\n%w", path, err)
			}
			if online {
				probs, err := c.onlineProblems(cmd.Context())
				if err != nil {
					return err
				}
				if len(probs) > 0 {
					if c.jsonOut {
						c.printJSON(map[string]any{"valid": false, "config": path, "online_problems": probs})
						return exitError{code: exitFailure}
					}
					return fmt.Errorf("%s is valid, but online checks failed:\n  %s", path, strings.Join(probs, "\n  "))
				}
			}
			if c.jsonOut {
				return c.printJSON(map[string]any{"valid": true, "config": path, "online": online})
			}
			if online {
				fmt.Fprintf(c.stdout, "%s is valid; the store, backends and DEK sources answered\n", path)
				return nil
			}
			fmt.Fprintf(c.stdout, "%s is valid\n", path)
			return nil
		},
	}
	validate.Flags().BoolVar(&online, "online", false, "also connect to the store, the backends and every DEK source (table, columns, types, privileges)")
	cmd.AddCommand(validate)
	return cmd
}

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/setup"
)

// firstRunHint prints one human line to stderr when `rekey run` starts on
// the embedded default with no keys and stderr is a terminal: what to do
// next, and where the status page is. The JSON log is unchanged; a
// machine reading stderr (not a terminal) never sees the line.
func (c *cli) firstRunHint(ctx context.Context, sys *setup.System, addr net.Addr) {
	if !c.isTerminal(c.stderr) || !c.onEmbeddedDefault(sys) || len(sys.Config.Keys) > 0 {
		return
	}
	keys, err := sys.Store.ListKeys(ctx)
	if err != nil || len(keys) > 0 {
		return
	}
	page := `off (--listen "")`
	if addr != nil {
		page = "http://" + addr.String() + "/"
	}
	fmt.Fprintf(c.stderr, "rekey: no keys yet, so nothing to rotate: create one with 'rekey key create NAME', or watch a rotation live with 'rekey run --demo'; status page: %s\n", page)
}

// onEmbeddedDefault reports whether sys was opened on the embedded
// default: no --config, no $REKEY_CONFIG, no ./rekey.yaml, so the home is
// $REKEY_HOME (default ./rekey-data).
func (c *cli) onEmbeddedDefault(sys *setup.System) bool {
	if c.configPath != "" || c.getenv(setup.EnvConfig) != "" {
		return false
	}
	home := c.getenv(setup.EnvHome)
	if home == "" {
		home = config.DefaultHome
	}
	return filepath.Clean(sys.Home) == filepath.Clean(home)
}

// isTerminal reports whether w is a terminal: a file on a character
// device (a tty; /dev/null is one too, where the line is lost harmlessly).
// Tests replace it through runEnv.
func (c *cli) isTerminal(w io.Writer) bool {
	if c.terminal != nil {
		return c.terminal(w)
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/setup"
)

// open opens rekey through the library's front door (setup.Open: the
// configuration resolved as DESIGN.md says, the embedded default created on
// first use, the store and the backends wrapped in their middleware), once
// per invocation; run closes it.
func (c *cli) open(ctx context.Context) (*setup.System, error) {
	if c.sys != nil {
		return c.sys, nil
	}
	sys, err := setup.Open(ctx, setup.Options{
		ConfigPath:            c.configPath,
		Getenv:                c.getenv,
		LoggerFor:             func(cfg *config.Config) *slog.Logger { return c.newLogger(cfg, c.logFallback) },
		Now:                   c.now,
		Clock:                 c.clock,
		Actor:                 setup.DefaultActor(c.getenv),
		TolerateBackendErrors: c.tolerateBackendErrors,
		ReadOnly:              c.readOnly,
	})
	if err != nil {
		return nil, err
	}
	if len(sys.Created) > 0 {
		fmt.Fprintf(c.stderr, "rekey: created the embedded default in %s (local keyring + SQLite); production keeps the master key out of this directory: see README\n", sys.Home)
	}
	c.sys = sys
	return sys, nil
}

// newLogger makes the JSON (or text) logger on stderr. The CLI commands log
// at warn unless asked; the worker at the config's level.
func (c *cli) newLogger(cfg *config.Config, fallback slog.Level) *slog.Logger {
	level := fallback
	if cfg != nil && cfg.Log.Level != "" && fallback == slog.LevelInfo {
		level = cfg.Log.SlogLevel()
	}
	if c.logLevel != "" {
		var l slog.Level
		if err := l.UnmarshalText([]byte(c.logLevel)); err == nil {
			level = l
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg != nil && cfg.Log.Format == config.LogText {
		return slog.New(slog.NewTextHandler(c.stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(c.stderr, opts))
}

// defaultBackend picks the backend a new key goes to when --backend is not
// given: the only one, or the one called "local".
func defaultBackend(sys *setup.System, flag string) (string, error) {
	if flag != "" {
		if _, ok := sys.Backends[flag]; !ok {
			return "", usagef("--backend %q is not configured: configured backends are %s", flag, strings.Join(sys.Config.BackendNames(), ", "))
		}
		return flag, nil
	}
	if b := sys.Config.DefaultBackend(); b != "" {
		return b, nil
	}
	if _, ok := sys.Backends["local"]; ok {
		return "local", nil
	}
	return "", usagef("several backends are configured (%s): choose one with --backend", strings.Join(sys.Config.BackendNames(), ", "))
}

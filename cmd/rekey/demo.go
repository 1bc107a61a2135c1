package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/internal/fileutil"
	"github.com/rekeyhq/rekey/setup"
)

// The demo's key and its policy: a 30 s period, due 10 s before its end,
// the old version kept 20 s for unwrap. The key is created as if demoHeadStart
// ago, so its first rotation is due as soon as the worker starts and
// v1 → v2 → v3 fits in well under a minute.
const (
	demoKey        = "demo"
	demoDEKs       = 3000
	demoHeadStart  = 21 * time.Second
	demoPollEvery  = 200 * time.Millisecond
	demoSampleName = "sample.txt"
)

var demoPolicy = rekey.Policy{
	RotationPeriod: 30 * time.Second,
	RotateWithin:   10 * time.Second,
	NotifyWithin:   15 * time.Second,
	Grace:          20 * time.Second,
}

// demoConfig is the demo home's rekey.yaml: the embedded default's files,
// a worker that looks every second, and warnings only in the log (the
// demo prints what happens in words).
const demoConfig = `# rekey run --demo: a throwaway home, removed when the demo stops.
version: 1
store:
  driver: sqlite
  dsn: rekey.db
backends:
  local:
    type: local
    keyring: keyring
    master_key_file: master.key
worker:
  check_interval: 1s
  batch_size: 500
http:
  listen: 127.0.0.1:0
log:
  level: warn
`

// demoSample is the plaintext of the demo's sealed sample file.
var demoSample = []byte(strings.Repeat("rekey demo: this file is sealed under a DEK wrapped by the demo key.\n", 64))

// runDemo is `rekey run --demo`: a separate, temporary home (never the
// user's ./rekey-data, $REKEY_HOME or --config), a key with a 30 s period,
// demoDEKs DEKs and a sealed sample file, the worker and the status page,
// and a line for each step of each rotation as it happens. It runs until
// ctx ends (Ctrl-C), then removes the demo home.
func (c *cli) runDemo(ctx context.Context, listen string, listenSet bool) (err error) {
	dir, err := os.MkdirTemp("", "rekey-demo-")
	if err != nil {
		return fmt.Errorf("create the demo home: %w (set TMPDIR to a writable directory)", err)
	}
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = fmt.Errorf("remove the demo home: %w", rerr)
		}
	}()
	home := filepath.Join(dir, "home")
	say := func(format string, args ...any) { fmt.Fprintf(c.stdout, format+"\n", args...) }
	say("rekey demo: a throwaway home in %s (removed on exit; your ./rekey-data, $REKEY_HOME and --config are not touched)", home)

	getenv := demoGetenv(c.getenv)
	if _, err := setup.InitHome(ctx, home, getenv); err != nil {
		return fmt.Errorf("create the demo home: %w", err)
	}
	if err := fileutil.WriteAtomic(filepath.Join(home, config.FileName), []byte(demoConfig), 0o600); err != nil {
		return fmt.Errorf("create the demo home: %w", err)
	}
	level := slog.LevelWarn
	if c.logLevel != "" {
		_ = level.UnmarshalText([]byte(c.logLevel)) // checked by PersistentPreRunE
	}
	sys, err := setup.Open(ctx, setup.Options{
		Home: home, Getenv: getenv, Now: c.now, Clock: c.clock, Actor: "demo",
		Logger: slog.New(slog.NewJSONHandler(c.stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		return fmt.Errorf("open the demo home: %w", err)
	}
	defer func() {
		if cerr := sys.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	// The key is created with a clock demoHeadStart behind: version 1 is
	// then already near the end of its period, and due now.
	early := rekey.NewKeyring(sys.Store, sys.Backends, rekey.WithActor("demo"),
		rekey.WithClock(func() time.Time { return c.now().Add(-demoHeadStart) }))
	if _, err := early.CreateKey(ctx, demoKey, "local", demoPolicy); err != nil {
		return fmt.Errorf("create the demo key: %w", err)
	}
	say("created key %s: rotation period %s, rotated %s before it ends, old versions kept %s; version 1 was made %s early, so it is due now",
		demoKey, rekey.FormatDuration(demoPolicy.RotationPeriod), rekey.FormatDuration(demoPolicy.RotateWithin),
		rekey.FormatDuration(demoPolicy.Grace), rekey.FormatDuration(demoHeadStart))
	if _, err := sys.Keyring.NewDEKs(ctx, demoKey, "demo", demoDEKs); err != nil {
		return fmt.Errorf("create the demo DEKs: %w", err)
	}
	sample := filepath.Join(dir, demoSampleName)
	sealed := sample + ".rekey"
	if err := fileutil.WriteAtomic(sample, demoSample, 0o600); err != nil {
		return err
	}
	var sealedBuf bytes.Buffer
	if _, err := sys.Keyring.SealStream(ctx, demoKey, &sealedBuf, bytes.NewReader(demoSample), nil); err != nil {
		return fmt.Errorf("seal the sample file: %w", err)
	}
	if err := fileutil.WriteAtomic(sealed, sealedBuf.Bytes(), 0o600); err != nil {
		return err
	}
	say("created %d DEKs under %s v1, and sealed %s into %s under one more", demoDEKs, demoKey, sample, sealed)

	if !listenSet {
		listen = "127.0.0.1:0"
	}
	if listen != "" {
		httpCtx, stopHTTP := context.WithCancel(ctx)
		addr, done, err := sys.Listen(httpCtx, listen)
		if err != nil {
			stopHTTP()
			return fmt.Errorf("--listen %s: %w (choose another address with --listen)", listen, err)
		}
		defer func() { stopHTTP(); <-done }()
		say("status page: http://%s/  (JSON: http://%s/api/v1/status)", addr, addr)
	}
	say("look around meanwhile: REKEY_HOME=%s rekey status; rekey decrypt --in %s (with the same REKEY_HOME)", home, sealed)
	say("rotating: the worker checks every %s; Ctrl-C stops the demo", rekey.FormatDuration(sys.Config.Worker.CheckInterval))

	narrated := make(chan struct{})
	n := demoNarrator{sys: sys, say: say, sealed: sealed, now: c.now}
	go func() {
		defer close(narrated)
		n.follow(ctx)
	}()
	werr := sys.Worker.Run(ctx)
	<-narrated
	// Tell what the worker wrote after the narrator's last look: every
	// step taken before the stop is on the screen.
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	n.catchUp(drainCtx)
	cancel()
	say("demo stopped; removing %s", dir)
	if werr != nil && !errors.Is(werr, context.Canceled) {
		return werr
	}
	return nil
}

// demoGetenv hides the variables that would point the demo at the user's
// setup (the master key; the config and home are never read, Options.Home
// wins) and passes the others (REKEY_FAILPOINTS, the clock offset).
func demoGetenv(getenv func(string) string) func(string) string {
	return func(name string) string {
		switch name {
		case setup.EnvMasterKey, setup.EnvConfig, setup.EnvHome:
			return ""
		}
		return getenv(name)
	}
}

// demoNarrator prints, in words, the audit events of the demo as they are
// written: the audit trail is the typed record of each step.
type demoNarrator struct {
	sys       *setup.System
	say       func(string, ...any)
	sealed    string
	now       func() time.Time
	seq       int64
	completed int
}

// follow reads the audit trail every demoPollEvery until ctx ends.
func (n *demoNarrator) follow(ctx context.Context) {
	t := time.NewTicker(demoPollEvery)
	defer t.Stop()
	for {
		n.catchUp(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// catchUp prints every event written since the last one printed.
func (n *demoNarrator) catchUp(ctx context.Context) {
	for {
		evs, err := n.sys.Store.ListAudit(ctx, rekey.AuditQuery{AfterSeq: n.seq, Limit: 100})
		if err != nil {
			if ctx.Err() == nil {
				n.say("could not read the audit trail: %v", err)
			}
			return
		}
		for _, ev := range evs {
			n.seq = ev.Seq
			n.describe(ctx, ev)
		}
		if len(evs) < 100 {
			return
		}
	}
}

// describe prints one event, and after each rotation checks that the
// sample file still opens.
func (n *demoNarrator) describe(ctx context.Context, ev rekey.AuditEvent) {
	at := ev.Time.Local().Format("15:04:05")
	switch ev.Type {
	case rekey.AuditRotationStarted:
		n.say("%s  rotation of %s started (%s): v%d → a new version", at, ev.Key, ev.Reason, ev.FromVersion)
	case rekey.AuditVersionCreated:
		n.say("%s  the backend created %s v%d", at, ev.Key, ev.ToVersion)
	case rekey.AuditRotationCommitted:
		n.say("%s  rotation v%d → v%d committed: %d DEKs re-wrapped under v%d, now the active version", at, ev.FromVersion, ev.ToVersion, ev.DEKs, ev.ToVersion)
	case rekey.AuditRotationCompleted:
		n.completed++
		n.say("%s  rotation v%d → v%d completed (%d so far)", at, ev.FromVersion, ev.ToVersion, n.completed)
		n.checkSample(ctx)
	case rekey.AuditVersionPendingRetirement:
		n.say("%s  %s v%d pending retirement: it still unwraps for %s (grace)", at, ev.Key, ev.FromVersion, rekey.FormatDuration(demoPolicy.Grace))
	case rekey.AuditVersionRetired:
		n.say("%s  %s v%d retired: no DEK references it any more", at, ev.Key, ev.FromVersion)
	case rekey.AuditRotationFailed:
		n.say("%s  rotation of %s failed: %s (the worker retries next cycle)", at, ev.Key, printable(ev.Error))
	case rekey.AuditRetirementBlocked:
		n.say("%s  %s v%d cannot retire yet: %s", at, ev.Key, ev.FromVersion, printable(ev.Error))
	}
}

// checkSample opens the sealed sample file and says whether it still
// decrypts to the original.
func (n *demoNarrator) checkSample(ctx context.Context) {
	f, err := os.Open(n.sealed)
	if err != nil {
		n.say("          the sample file: %v", err)
		return
	}
	defer f.Close()
	var out bytes.Buffer
	id, err := n.sys.Keyring.OpenStream(ctx, &out, f, nil)
	switch {
	case err != nil:
		n.say("          the sample file does NOT decrypt: %v", err)
	case !bytes.Equal(out.Bytes(), demoSample):
		n.say("          the sample file decrypts to something else: this is a bug")
	default:
		v := 0
		if d, err := n.sys.Store.GetDEK(ctx, id); err == nil {
			v = d.Version
		}
		n.say("          %s still decrypts (its DEK is now wrapped under v%d)", filepath.Base(n.sealed), v)
	}
}

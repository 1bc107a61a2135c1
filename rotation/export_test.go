package rotation

import "github.com/rekeyhq/rekey"

// SetTestHook installs a function that runs at every failpoint (before the
// configured failpoint set); an error it returns is injected there. Tests
// use it to act at an exact step: a concurrent writer, a takeover, a stop.
func SetTestHook(e *Engine, h func(name string) error) { e.testHook = h }

// RangeSource returns the DEK source a re-wrap range is of ("" for
// rekey's own DEKs).
func RangeSource(rg rekey.RewrapRange) string { return spanOf(rg).source }

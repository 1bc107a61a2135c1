package rotation

// SetTestHook installs a function that runs at every failpoint (before the
// configured failpoint set); an error it returns is injected there. Tests
// use it to act at an exact step: a concurrent writer, a takeover, a stop.
func SetTestHook(e *Engine, h func(name string) error) { e.testHook = h }

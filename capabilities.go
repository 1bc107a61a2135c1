package rekey

// Capabilities says which optional interfaces of a KMS a backend really
// offers. A decorator (rate limit, retry, metrics) implements every optional
// interface so that it can pass each call on; it reports the capabilities of
// the backend it wraps through a Capabilities method, and callers resolve
// them once with CapabilitiesOf rather than by type assertion.
type Capabilities struct {
	Rewrap        bool // Rewrapper: server-side re-wrap, one DEK per call
	BatchRewrap   bool // BatchRewrapper: many DEKs per call
	RetireVersion bool // VersionRetirer: disable and destroy single versions
	Ping          bool // Pinger
	MAC           bool // MACer
	FindKey       bool // KeyFinder: find a key by name
	NativeRewrap  bool // NativeRewrapper: re-wrap the provider's own ciphertexts made outside rekey
	DeleteKey     bool // KeyDeleter: delete a whole key
}

// CapabilityReporter is a KMS (typically a decorator) that says itself
// which optional interfaces it offers.
type CapabilityReporter interface {
	Capabilities() Capabilities
}

// CapabilitiesOf returns the optional capabilities of k: those it reports
// when it is a CapabilityReporter, else those its type implements.
func CapabilitiesOf(k KMS) Capabilities {
	if k == nil {
		return Capabilities{}
	}
	if r, ok := k.(CapabilityReporter); ok {
		return r.Capabilities()
	}
	var c Capabilities
	_, c.Rewrap = k.(Rewrapper)
	_, c.BatchRewrap = k.(BatchRewrapper)
	_, c.RetireVersion = k.(VersionRetirer)
	_, c.Ping = k.(Pinger)
	_, c.MAC = k.(MACer)
	_, c.FindKey = k.(KeyFinder)
	_, c.NativeRewrap = k.(NativeRewrapper)
	_, c.DeleteKey = k.(KeyDeleter)
	return c
}

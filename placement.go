package rekey

// Placement is where one version of a root key lives: the configured
// backend name, the backend's reference for the key, and the version's
// number at that backend (which a KMS's Wrap, Unwrap, Rewrap and
// RetireVersion take).
type Placement struct {
	Backend string `json:"backend"`
	Ref     string `json:"backend_ref"`
	Version int    `json:"backend_version"`
}

// PlacementOf resolves where version v of key k lives: v's own backend,
// reference and backend version where it records them, else the key's
// backend and reference and v's own number. It is the one home of that
// rule: the Keyring, the rotation engine and plan all resolve through it.
func PlacementOf(k Key, v KeyVersion) Placement {
	p := Placement{Backend: v.Backend, Ref: v.BackendRef, Version: v.BackendVersion}
	if p.Backend == "" {
		p.Backend, p.Ref = k.Backend, k.BackendRef
	}
	if p.Version == 0 {
		p.Version = v.Version
	}
	return p
}

// Moved reports whether p is on another backend (or another reference)
// than the key k's current one.
func (p Placement) Moved(k Key) bool { return p.Backend != k.Backend || p.Ref != k.BackendRef }

package torture

import (
	"crypto/sha256"
	"math/rand/v2"
	"sync"
)

// sealed is a file a writer sealed with `rekey encrypt`: the plaintext's
// fingerprint (the plaintext itself is deleted once sealed).
type sealed struct {
	path string // the envelope
	key  string
	sum  [sha256.Size]byte
	size int
}

// model is what the writers did, kept by the harness outside the store:
// the fingerprint of every DEK seen so far, how many DEKs each key gained
// that were not seen yet, and the sealed files.
type model struct {
	mu      sync.Mutex
	prints  map[string][sha256.Size]byte // DEK id → SHA-256 of its plaintext
	keyOf   map[string]string            // DEK id → key
	unseen  map[string]int               // key → DEKs created whose id the harness has not seen yet
	files   []sealed
	created int // DEKs created by the writers (not the initial ones)
}

func newModel() *model {
	return &model{prints: map[string][sha256.Size]byte{}, keyOf: map[string]string{}, unseen: map[string]int{}}
}

// addUnknown records n new DEKs of key whose ids the harness learns at the
// next check (CLI dek create, encrypt).
func (m *model) addUnknown(key string, n int) {
	m.mu.Lock()
	m.unseen[key] += n
	m.mu.Unlock()
}

// addKnown records a DEK whose plaintext the harness saw at birth (made
// through the library). plain is not kept.
func (m *model) addKnown(key, id string, plain []byte) {
	m.mu.Lock()
	m.prints[id] = sha256.Sum256(plain)
	m.keyOf[id] = key
	m.mu.Unlock()
}

func (m *model) addFile(f sealed) {
	m.mu.Lock()
	m.files = append(m.files, f)
	m.mu.Unlock()
}

// countCreated adds n to the DEKs the writers created and reports whether
// the total stays within max (the writers stop creating beyond it).
func (m *model) countCreated(n, max int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.created+n > max {
		return false
	}
	m.created += n
	return true
}

// randomFile returns one sealed file, or false when there is none.
func (m *model) randomFile(rng *rand.Rand) (sealed, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.files) == 0 {
		return sealed{}, false
	}
	return m.files[rng.IntN(len(m.files))], true
}

// randomKnownDEK returns the id of one DEK made through the library.
func (m *model) randomKnownDEK(rng *rand.Rand) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.prints) == 0 {
		return "", false
	}
	// Map order is not seeded: pick the i-th in a sorted walk would cost
	// a sort each time; a random draw over the map is enough here (which
	// DEK a reader opens does not change the schedule of the worker).
	i := rng.IntN(len(m.prints))
	for id := range m.prints {
		if i == 0 {
			return id, true
		}
		i--
	}
	return "", false
}

func (m *model) fileCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.files)
}

// filesToCheck returns every file (all) or a random sample of at most n
// that always includes the newest ones.
func (m *model) filesToCheck(all bool, n int, rng *rand.Rand) []sealed {
	m.mu.Lock()
	defer m.mu.Unlock()
	if all || len(m.files) <= n {
		return append([]sealed(nil), m.files...)
	}
	out := append([]sealed(nil), m.files[len(m.files)-n/2:]...)
	rest := m.files[:len(m.files)-n/2]
	for _, i := range rng.Perm(len(rest))[:n-n/2] {
		out = append(out, rest[i])
	}
	return out
}

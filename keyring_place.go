package rekey

import (
	"context"
	"fmt"
	"sync"
)

// placeCache remembers where each version of each key lives. A version's
// placement never changes once its row exists (a row without a backend is
// on the key's backend until the key moves, and the store stamps it with
// that backend in the move's commit), so entries are never invalidated;
// a version not cached yet is looked up with one ListVersions.
type placeCache struct {
	mu sync.Mutex
	m  map[string]map[int]Placement
}

func (c *placeCache) get(key string, version int) (Placement, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.m[key][version]
	return p, ok
}

// fill records the placements of vs, versions of k read together with k.
func (c *placeCache) fill(k Key, vs []KeyVersion) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]map[int]Placement)
	}
	byVersion := c.m[k.Name]
	if byVersion == nil {
		byVersion = make(map[int]Placement, len(vs))
		c.m[k.Name] = byVersion
	}
	for _, v := range vs {
		if _, ok := byVersion[v.Version]; !ok {
			byVersion[v.Version] = PlacementOf(k, v)
		}
	}
}

// placement returns the backend and placement of version of key k: where
// a wrap under it or an unwrap of it goes. It returns ErrVersionNotFound
// for a version the store does not have and ErrInvalidArgument for a
// backend the configuration lacks.
func (kr *Keyring) placement(ctx context.Context, k Key, version int) (KMS, Placement, error) {
	p, ok := kr.places.get(k.Name, version)
	if !ok {
		vs, err := kr.store.ListVersions(ctx, k.Name)
		if err != nil {
			return nil, Placement{}, fmt.Errorf("key %s: %w", k.Name, err)
		}
		kr.places.fill(k, vs)
		if p, ok = kr.places.get(k.Name, version); !ok {
			return nil, Placement{}, fmt.Errorf("key %s version %d: %w: the key never had that version; check the DEK's row (rekey dek show ID) and restore it from a backup", k.Name, version, ErrVersionNotFound)
		}
	}
	b, err := kr.backend(p.Backend)
	if err != nil {
		return nil, Placement{}, fmt.Errorf("key %s version %d: %w", k.Name, version, err)
	}
	return b, p, nil
}

package rotation

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/rekeyhq/rekey"
)

// A key can move to another backend (rekey key move): a rotation whose new
// version is created on the target backend (Rotation.ToBackend). Each
// version records where it lives (rekey.PlacementOf), so the re-wrap
// unwraps a DEK on its own version's backend and wraps it on the target's;
// the commit makes the key follow its active version (the store does it in
// the commit's transaction); old versions are retired on the backend that
// holds them.

// place is where one version of a key lives: a backend (with its reference
// for the key) and the version's number there.
type place struct {
	b       *backend
	version int
	err     error // the backend is not configured
}

// router resolves each version of one key to its place, reading the
// store once per version it has not seen (a version's place never changes
// once its row exists). It is safe for concurrent use.
type router struct {
	e   *Engine
	key string

	mu     sync.Mutex
	places map[int]place
	sites  map[[2]string]*backend // by backend name and reference
}

func (e *Engine) newRouter(key string, home *backend) *router {
	rt := &router{e: e, key: key, places: make(map[int]place), sites: make(map[[2]string]*backend)}
	rt.sites[[2]string{home.name, home.ref}] = home
	return rt
}

// at returns where version lives. It returns ErrVersionNotFound for a
// version the key does not have, and an error naming the backend when the
// version's backend is not configured.
func (rt *router) at(ctx context.Context, version int) (place, error) {
	rt.mu.Lock()
	p, ok := rt.places[version]
	rt.mu.Unlock()
	if !ok {
		if err := rt.load(ctx); err != nil {
			return place{}, err
		}
		rt.mu.Lock()
		p, ok = rt.places[version]
		rt.mu.Unlock()
		if !ok {
			return place{}, fmt.Errorf("key %s version %d: %w", rt.key, version, rekey.ErrVersionNotFound)
		}
	}
	return p, p.err
}

// load reads the key and its versions and records every version's place.
// The key is read first: a version that names no backend is on the key's
// backend until a move commits, and that commit names it in the same
// transaction, so reading the key before the versions never misplaces one.
func (rt *router) load(ctx context.Context) error {
	k, err := rt.e.getKey(ctx, rt.key)
	if err != nil {
		return err
	}
	vs, err := rt.e.listVersions(ctx, rt.key)
	if err != nil {
		return err
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, v := range vs {
		if _, ok := rt.places[v.Version]; ok {
			continue
		}
		pl := rekey.PlacementOf(k, v)
		b, err := rt.siteLocked(pl.Backend, pl.Ref)
		rt.places[v.Version] = place{b: b, version: pl.Version, err: err}
	}
	return nil
}

// siteLocked returns the one *backend of a backend name and reference, so
// that two versions on the same backend compare equal. rt.mu is held.
func (rt *router) siteLocked(name, ref string) (*backend, error) {
	id := [2]string{name, ref}
	if b, ok := rt.sites[id]; ok {
		return b, nil
	}
	b, err := rt.e.backendNamed(rt.key, name, ref)
	if err != nil {
		return nil, err
	}
	b.rt = rt
	rt.sites[id] = b
	return b, nil
}

// site is siteLocked for a caller that does not hold rt.mu.
func (rt *router) site(name, ref string) (*backend, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.siteLocked(name, ref)
}

// backendNamed is the configured backend name, with its optional
// capabilities resolved, for key's reference ref there.
func (e *Engine) backendNamed(key, name, ref string) (*backend, error) {
	kms, ok := e.cfg.Backends[name]
	if !ok || kms == nil {
		return nil, fmt.Errorf("key %s: backend %q is not configured: add it under backends", key, name)
	}
	b := &backend{name: name, ref: ref, kms: kms}
	caps := rekey.CapabilitiesOf(kms)
	if caps.Rewrap {
		b.rewrapper, _ = kms.(rekey.Rewrapper)
	}
	if caps.BatchRewrap {
		b.batch, _ = kms.(rekey.BatchRewrapper)
	}
	if caps.RetireVersion {
		b.retirer, _ = kms.(rekey.VersionRetirer)
	}
	if caps.FindKey {
		b.finder, _ = kms.(rekey.KeyFinder)
	}
	if caps.NativeRewrap {
		b.native, _ = kms.(rekey.NativeRewrapper)
	}
	if caps.DeleteKey {
		b.deleter, _ = kms.(rekey.KeyDeleter)
	}
	return b, nil
}

// at returns where version of b's key lives (see router.at).
func (b *backend) at(ctx context.Context, version int) (place, error) {
	return b.rt.at(ctx, version)
}

// batchPlan says whether deks can be re-wrapped under to with the batch
// call of one backend: the target's backend has it and every DEK's version
// lives on that same backend. It returns the target's place and each DEK's
// version number at the backend.
func (b *backend) batchPlan(ctx context.Context, deks []rekey.DEK, to int) (place, []int, bool) {
	dst, err := b.at(ctx, to)
	if err != nil || dst.b.batch == nil {
		return place{}, nil, false
	}
	versions := make([]int, len(deks))
	for i, d := range deks {
		src, err := b.at(ctx, d.Version)
		if err != nil || src.b != dst.b {
			return place{}, nil, false
		}
		versions[i] = src.version
	}
	return dst, versions, true
}

// newVersionSite is where a rotation creates its new version, and what
// rule 2 compares the backend's current version with.
type newVersionSite struct {
	b        *backend // ref "" when the key does not exist there yet
	baseline int      // the highest backend version of the key's versions there (0: none)
	newest   int      // the key's highest version (rekey's numbering)
}

// newVersionSite resolves where rotation r of key k creates its version:
// the key's backend, or r.ToBackend for a move. On a backend that already
// holds versions of the key (the key's own, or a backend it moved away
// from and now back to) the version is the backend's next one; on a new
// backend the key is created there.
func (d *driver) newVersionSite(ctx context.Context) (newVersionSite, error) {
	e := d.e
	k, err := e.getKey(ctx, d.key.Name)
	if err != nil {
		return newVersionSite{}, err
	}
	vs, err := e.listVersions(ctx, d.key.Name)
	if err != nil {
		return newVersionSite{}, err
	}
	name, ref := k.Backend, k.BackendRef
	if d.r.ToBackend != "" {
		name, ref = d.r.ToBackend, ""
	}
	var s newVersionSite
	for _, v := range vs {
		s.newest = max(s.newest, v.Version)
		pl := rekey.PlacementOf(k, v)
		if pl.Backend != name || (ref != "" && pl.Ref != ref) {
			continue
		}
		if pl.Version >= s.baseline {
			s.baseline, ref = pl.Version, pl.Ref
		}
	}
	if d.r.ToBackend == "" || ref != "" {
		s.b, err = d.b.rt.site(name, ref)
	} else {
		s.b, err = e.backendNamed(k.Name, name, "")
	}
	return s, err
}

// createOnTarget creates the key on a move's target backend, which holds
// no version of it yet, and returns the reference and the backend's
// version of it. A key by that name there already (an attempt that
// crashed after creating it) is found and adopted, never created twice:
// created says which.
func (d *driver) createOnTarget(ctx context.Context, b *backend) (ref string, version int, created bool, err error) {
	ref, err = b.kms.CreateKey(ctx, d.key.Name)
	if err == nil {
		return ref, 1, true, nil
	}
	if !errors.Is(err, rekey.ErrKeyExists) {
		return "", 0, false, fmt.Errorf("create key %s on backend %s: %w", d.key.Name, b.name, err)
	}
	if b.finder == nil {
		return "", 0, false, fmt.Errorf("backend %s already holds a key named %s (an interrupted move, or another store uses this backend) and cannot look keys up by name: remove that key from the backend, or move to another backend: %w",
			b.name, d.key.Name, err)
	}
	ref, err = b.finder.FindKey(ctx, d.key.Name)
	if err != nil {
		return "", 0, false, fmt.Errorf("backend %s said key %s exists, but finding it failed: %w", b.name, d.key.Name, err)
	}
	cur, err := b.kms.CurrentVersion(ctx, ref)
	if err != nil {
		return "", 0, false, fmt.Errorf("backend %s: current version of key %s: %w", b.name, d.key.Name, err)
	}
	d.e.log.Warn("move target already holds the key (an interrupted attempt created it); adopting it",
		"key_id", d.key.Name, "rotation_id", d.r.ID, "backend", b.name, "backend_ref", ref, "backend_version", cur)
	return ref, cur, false, nil
}

// Move moves key to the configured backend to: a rotation (reason move,
// with note) whose new version is created on to, whose re-wrap unwraps
// each DEK on its version's backend and wraps it on to, and whose commit
// makes to the key's backend. The old versions stay on their backend in
// pending retirement and are retired there as usual. An open rotation of
// the key is finished first, unless it is a move to the same backend,
// which is resumed. It returns an error matching rekey.ErrInvalidArgument
// for a backend that is not configured or that the key is on already,
// rekey.ErrLeaseHeld while another worker works on the key, and
// rekey.ErrKeyNotFound for an unknown key.
func (e *Engine) Move(ctx context.Context, key, to, note string) (rekey.Rotation, error) {
	if _, ok := e.cfg.Backends[to]; !ok || to == "" {
		return rekey.Rotation{}, fmt.Errorf("%w: backend %q is not configured: add it under backends: in the config, or use one of %s",
			rekey.ErrInvalidArgument, to, e.backendNames())
	}
	var out rekey.Rotation
	err := e.withKey(ctx, key, func(ctx context.Context, kl *keyLease) error {
		err := func() error {
			k, b, err := e.keyAndBackend(ctx, key)
			if err != nil {
				return err
			}
			open, err := e.openRotation(ctx, key)
			if err != nil {
				return err
			}
			if open != nil {
				e.log.Info("finishing the key's open rotation before the move", "key_id", key, "rotation_id", open.ID, "to_backend", open.ToBackend)
				if out, err = e.drive(ctx, kl, k, b, *open); err != nil {
					return err
				}
				if open.ToBackend == to {
					return nil
				}
				if k, b, err = e.keyAndBackend(ctx, key); err != nil {
					return err
				}
			}
			if k.Backend == to {
				return fmt.Errorf("%w: key %s is on backend %s already: nothing to move (rekey rotate %s rotates it there)", rekey.ErrInvalidArgument, key, to, key)
			}
			r, err := e.claimMove(ctx, kl, k, to, note)
			if r.ID != "" {
				out = r
			}
			if err != nil {
				return err
			}
			out, err = e.drive(ctx, kl, k, b, r)
			return err
		}()
		if err != nil && !isFenced(err) && ctx.Err() == nil {
			e.recordFailure(ctx, kl, key, rotationOrNil(out), "move", err)
		}
		return err
	})
	return out, err
}

// backendNames lists the configured backends for an error message.
func (e *Engine) backendNames() string {
	names := slices.Sorted(maps.Keys(e.cfg.Backends))
	if len(names) == 0 {
		return "(none configured)"
	}
	return strings.Join(names, ", ")
}

// claimMove claims a move of k to backend to. The note records both
// backends ("from local to hsm"), so that every audit event of the move
// names them in its reason.
func (e *Engine) claimMove(ctx context.Context, kl *keyLease, k rekey.Key, to, note string) (rekey.Rotation, error) {
	text := fmt.Sprintf("from %s to %s", k.Backend, to)
	if note != "" {
		text += "; " + note
	}
	return e.claimRotation(ctx, kl, k, rekey.Rotation{Reason: rekey.ReasonMove, Note: text, ToBackend: to})
}

// declaredMove returns the backend the configuration declares k on when it
// is another configured backend than k's (Config.DeclaredBackends), else "".
func (e *Engine) declaredMove(k rekey.Key) string {
	to, ok := e.cfg.DeclaredBackends[k.Name]
	if !ok || to == "" || to == k.Backend {
		return ""
	}
	if _, ok := e.cfg.Backends[to]; !ok {
		return ""
	}
	return to
}

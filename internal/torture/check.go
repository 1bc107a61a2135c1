package torture

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// checker checks the invariants of a quiescent home (no worker, no writer
// running) against the model and against what it saw at the previous
// check (states only move forward).
type checker struct {
	home  string
	model *model

	versions  map[string]map[int]rekey.VersionState // key → version → state last seen
	rotations map[string]rekey.Rotation             // id → rotation last seen

	doneRotations int // at the last check
	deks          int // at the last check
}

func newChecker(ctx context.Context, home string, m *model) (*checker, error) {
	c := &checker{home: home, model: m, versions: map[string]map[int]rekey.VersionState{}, rotations: map[string]rekey.Rotation{}}
	sys, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	return c, closeQuietly(sys)
}

// open opens the home afresh for one check: a new store connection and a
// new read of the keyring, so that nothing cached in the harness can hide
// a version the backend lost.
func (c *checker) open(ctx context.Context) (*setup.System, error) {
	sys, err := setup.Open(ctx, setup.Options{Home: c.home, NoCreate: true, Logger: slog.New(slog.DiscardHandler), Actor: "torture-check"})
	if err != nil {
		return nil, fmt.Errorf("open the home to check it: %w", err)
	}
	return sys, nil
}

// closeQuietly closes a System without the audit checkpoint Close makes
// when the trail moved: the checker only reads, and must not write into
// what it checks.
func closeQuietly(sys *setup.System) error {
	sys.Audit = nil
	return sys.Close()
}

// openRotations counts the rotations not done.
func (c *checker) openRotations(ctx context.Context) (int, error) {
	sys, err := c.open(ctx)
	if err != nil {
		return 0, err
	}
	defer closeQuietly(sys)
	rs, err := sys.Store.ListRotations(ctx, rekey.RotationQuery{OpenOnly: true, Limit: 1 << 20})
	return len(rs), err
}

// violations collects what is wrong, so that one check names everything.
type violations []string

func (v *violations) addf(format string, args ...any) { *v = append(*v, fmt.Sprintf(format, args...)) }

func (v violations) err() error {
	if len(v) == 0 {
		return nil
	}
	const max = 30
	shown := v
	more := ""
	if len(v) > max {
		shown, more = v[:max], fmt.Sprintf("\n  … and %d more", len(v)-max)
	}
	return fmt.Errorf("%d invariant violation(s):\n  %s%s", len(v), strings.Join(shown, "\n  "), more)
}

// run checks every invariant, the given files decrypting included.
func (c *checker) run(ctx context.Context, files []sealed) error {
	sys, err := c.open(ctx)
	if err != nil {
		return err
	}
	defer closeQuietly(sys)
	var v violations
	keys, err := sys.Store.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	seen := map[string]bool{}
	done := 0
	deks := 0
	for _, k := range keys {
		n, nd, err := c.checkKey(ctx, sys, k, seen, &v)
		if err != nil {
			return err
		}
		deks += n
		done += nd
	}
	c.checkDEKsKept(seen, &v)
	c.checkFiles(ctx, sys, files, &v)
	c.doneRotations, c.deks = done, deks
	return v.err()
}

// versionRank orders version states; compromised ranks with
// pending_retirement (it may only go on to retired or destroyed).
var versionRank = map[rekey.VersionState]int{
	rekey.VersionCreated: 0, rekey.VersionActive: 1, rekey.VersionPendingRetirement: 2, rekey.VersionCompromised: 2,
	rekey.VersionRetired: 3, rekey.VersionDestroyed: 4,
}

var rotationRank = map[rekey.RotationState]int{
	rekey.RotationClaimed: 0, rekey.RotationVersionCreated: 1, rekey.RotationRewrapping: 2, rekey.RotationCommitted: 3, rekey.RotationDone: 4,
}

// checkKey checks one key: versions, rotations, backend, DEKs. It returns
// the key's DEK count and its rotations done, and adds every DEK id it
// saw to seen.
func (c *checker) checkKey(ctx context.Context, sys *setup.System, k rekey.Key, seen map[string]bool, v *violations) (int, int, error) {
	vs, err := sys.Store.ListVersions(ctx, k.Name)
	if err != nil {
		return 0, 0, fmt.Errorf("list versions of %s: %w", k.Name, err)
	}
	rs, err := sys.Store.ListRotations(ctx, rekey.RotationQuery{Key: k.Name, Limit: 1 << 20})
	if err != nil {
		return 0, 0, fmt.Errorf("list rotations of %s: %w", k.Name, err)
	}
	counts, err := sys.Store.CountDEKs(ctx, k.Name)
	if err != nil {
		return 0, 0, fmt.Errorf("count DEKs of %s: %w", k.Name, err)
	}
	b := sys.Backends[k.Backend]
	if b == nil {
		return 0, 0, fmt.Errorf("key %s is on backend %q, which the configuration does not have", k.Name, k.Backend)
	}
	backendVersion, err := b.CurrentVersion(ctx, k.BackendRef)
	if err != nil {
		v.addf("key %s: backend %s cannot say its current version: %v", k.Name, k.Backend, err)
	}

	// Versions: 1..n, exactly one active (the key's), the rest on their side of it.
	slices.SortFunc(vs, func(a, b rekey.KeyVersion) int { return a.Version - b.Version })
	state := map[int]rekey.VersionState{}
	active := 0
	for i, kv := range vs {
		if kv.Version != i+1 {
			v.addf("key %s: versions are not 1..%d in order: position %d holds v%d", k.Name, len(vs), i+1, kv.Version)
		}
		state[kv.Version] = kv.State
		if !kv.State.Valid() {
			v.addf("key %s v%d: unknown state %q", k.Name, kv.Version, kv.State)
		}
		if kv.State == rekey.VersionActive {
			active++
		}
	}
	if active != 1 || state[k.ActiveVersion] != rekey.VersionActive {
		v.addf("key %s: %d active version(s), key says v%d active (state %q); want exactly that one", k.Name, active, k.ActiveVersion, state[k.ActiveVersion])
	}
	n := len(vs)

	// Rotations: in start order, each from the version the previous one
	// made, one new version each, at most one open and it is the last.
	slices.SortFunc(rs, func(a, b rekey.Rotation) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	done := 0
	var open *rekey.Rotation
	made := map[int]string{}
	for i, r := range rs {
		if _, ok := rotationRank[r.State]; !ok {
			v.addf("key %s rotation %s: unknown state %q", k.Name, r.ID, r.State)
		}
		if r.State.Open() {
			if i != len(rs)-1 {
				v.addf("key %s: rotation %s (%s) is open but is not the newest (%d rotations)", k.Name, r.ID, r.State, len(rs))
			}
			if open != nil {
				v.addf("key %s: two open rotations, %s and %s", k.Name, open.ID, r.ID)
			}
			open = &rs[i]
		} else {
			done++
		}
		want := 1
		if i > 0 {
			want = rs[i-1].ToVersion
		}
		if r.FromVersion != want {
			v.addf("key %s: rotation %s starts from v%d, want v%d (the version the rotation before it made)", k.Name, r.ID, r.FromVersion, want)
		}
		switch {
		case r.ToVersion == 0 && r.State != rekey.RotationClaimed:
			v.addf("key %s: rotation %s is %s without a recorded new version", k.Name, r.ID, r.State)
		case r.ToVersion != 0 && r.ToVersion != r.FromVersion+1:
			v.addf("key %s: rotation %s made v%d from v%d: want exactly one new version (v%d)", k.Name, r.ID, r.ToVersion, r.FromVersion, r.FromVersion+1)
		}
		if r.ToVersion != 0 {
			if other, dup := made[r.ToVersion]; dup {
				v.addf("key %s: v%d made by two rotations, %s and %s", k.Name, r.ToVersion, other, r.ID)
			}
			made[r.ToVersion] = r.ID
		}
		if prev, ok := c.rotations[r.ID]; ok {
			if rotationRank[r.State] < rotationRank[prev.State] {
				v.addf("key %s: rotation %s went back from %s to %s", k.Name, r.ID, prev.State, r.State)
			}
			if prev.ToVersion != 0 && r.ToVersion != prev.ToVersion || r.FromVersion != prev.FromVersion {
				v.addf("key %s: rotation %s changed its versions: v%d→v%d was v%d→v%d", k.Name, r.ID, r.FromVersion, r.ToVersion, prev.FromVersion, prev.ToVersion)
			}
		}
	}
	for id, prev := range c.rotations {
		if prev.Key == k.Name && !slices.ContainsFunc(rs, func(r rekey.Rotation) bool { return r.ID == id }) {
			v.addf("key %s: rotation %s (%s, v%d→v%d) disappeared", k.Name, id, prev.State, prev.FromVersion, prev.ToVersion)
		}
	}
	for ver := 2; ver <= n; ver++ {
		if made[ver] == "" {
			v.addf("key %s: v%d exists but no rotation made it", k.Name, ver)
		}
	}
	for ver := range made {
		if ver > n {
			v.addf("key %s: rotation %s recorded v%d but the store has only v1..v%d", k.Name, made[ver], ver, n)
		}
	}
	wantActive := 1
	if len(rs) > 0 {
		last := rs[len(rs)-1]
		switch {
		case last.State == rekey.RotationCommitted || last.State == rekey.RotationDone:
			wantActive = last.ToVersion
		default:
			wantActive = last.FromVersion
		}
	}
	if k.ActiveVersion != wantActive {
		v.addf("key %s: v%d active, but the rotations say v%d should be", k.Name, k.ActiveVersion, wantActive)
	}
	for ver, st := range state {
		switch {
		case ver > k.ActiveVersion && st != rekey.VersionCreated:
			v.addf("key %s: v%d is newer than the active v%d but %s", k.Name, ver, k.ActiveVersion, st)
		case ver > k.ActiveVersion && (open == nil || open.ToVersion != ver):
			v.addf("key %s: v%d is created but no open rotation is making it", k.Name, ver)
		case ver < k.ActiveVersion && versionRank[st] < versionRank[rekey.VersionPendingRetirement]:
			v.addf("key %s: v%d is older than the active v%d but %s", k.Name, ver, k.ActiveVersion, st)
		}
	}

	// The backend made exactly the versions the store knows (one more
	// only between the backend call and the recording of to_version).
	if err == nil {
		pending := open != nil && open.State == rekey.RotationClaimed && open.ToVersion == 0
		if backendVersion != n && !(pending && backendVersion == n+1) {
			v.addf("key %s: backend %s is at v%d, the store has v1..v%d (open rotation: %s): want one backend version per rotation", k.Name, k.Backend, backendVersion, n, describe(open))
		}
	}

	// Forward only.
	prevStates := c.versions[k.Name]
	for ver, prev := range prevStates {
		cur, ok := state[ver]
		switch {
		case !ok:
			v.addf("key %s: v%d (%s) disappeared", k.Name, ver, prev)
		case versionRank[cur] < versionRank[prev] || prev == rekey.VersionCompromised && cur == rekey.VersionPendingRetirement:
			v.addf("key %s: v%d went back from %s to %s", k.Name, ver, prev, cur)
		}
	}

	// Every DEK unwraps to the plaintext it had; rows counts them per
	// version, from the rows themselves.
	rows, err := c.checkDEKs(ctx, sys.Store, b, k, seen, v)
	if err != nil {
		return 0, 0, err
	}

	// No DEK on a version that cannot be unwrapped: the rows, not the
	// store's counters, which a store may keep beside them (CountDEKs).
	total := 0
	for _, ver := range slices.Sorted(maps.Keys(rows)) {
		cnt := rows[ver]
		total += int(cnt)
		if st, ok := state[ver]; !ok {
			v.addf("key %s: %d DEK(s) on v%d, which the store does not have", k.Name, cnt, ver)
		} else if !st.Usable() {
			v.addf("key %s: %d DEK(s) on v%d, which is %s: retired while a DEK references it", k.Name, cnt, ver, st)
		}
	}
	versions := maps.Clone(rows)
	maps.Copy(versions, counts)
	for _, ver := range slices.Sorted(maps.Keys(versions)) {
		if counts[ver] != rows[ver] {
			v.addf("key %s: CountDEKs says %d DEK(s) on v%d, ListDEKs lists %d", k.Name, counts[ver], ver, rows[ver])
		}
	}

	c.versions[k.Name] = state
	for _, r := range rs {
		c.rotations[r.ID] = r
	}
	return total, done, nil
}

func describe(r *rekey.Rotation) string {
	if r == nil {
		return "none"
	}
	return fmt.Sprintf("%s %s v%d→v%d", r.ID, r.State, r.FromVersion, r.ToVersion)
}

// checkDEKs unwraps every DEK of k, compares it with its fingerprint
// (taking the fingerprint of a DEK seen for the first time), and checks
// that the key gained exactly the DEKs the writers made. It returns the
// number of DEKs listed per version.
func (c *checker) checkDEKs(ctx context.Context, st rekey.Store, b rekey.KMS, k rekey.Key, seen map[string]bool, v *violations) (map[int]int64, error) {
	c.model.mu.Lock()
	defer c.model.mu.Unlock()
	fresh := map[string][sha256.Size]byte{}
	rows := map[int]int64{}
	q := rekey.DEKQuery{Key: k.Name, Limit: 1000}
	for {
		page, err := st.ListDEKs(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("list DEKs of %s: %w", k.Name, err)
		}
		for _, d := range page {
			rows[d.Version]++
			seen[d.ID] = true
			plain, err := b.Unwrap(ctx, k.BackendRef, d.Version, d.Wrapped)
			if err != nil {
				v.addf("key %s: DEK %s (v%d) does not unwrap: %v", k.Name, d.ID, d.Version, err)
				continue
			}
			sum := sha256.Sum256(plain)
			clear(plain)
			want, known := c.model.prints[d.ID]
			switch {
			case !known:
				fresh[d.ID] = sum
			case sum != want:
				v.addf("key %s: DEK %s (v%d) unwraps to another plaintext than it had", k.Name, d.ID, d.Version)
			}
		}
		if len(page) < q.Limit {
			break
		}
		q.After = page[len(page)-1].ID
	}
	if got, want := len(fresh), c.model.unseen[k.Name]; got != want {
		v.addf("key %s: %d new DEK(s) in the store, the writers made %d", k.Name, got, want)
	}
	for id, sum := range fresh {
		c.model.prints[id] = sum
		c.model.keyOf[id] = k.Name
	}
	c.model.unseen[k.Name] = 0
	return rows, nil
}

// checkDEKsKept checks that every DEK the harness has a fingerprint of is
// still in the store.
func (c *checker) checkDEKsKept(seen map[string]bool, v *violations) {
	c.model.mu.Lock()
	defer c.model.mu.Unlock()
	lost := 0
	for id := range c.model.prints {
		if !seen[id] {
			if lost < 10 {
				v.addf("DEK %s (key %s) is gone from the store", id, c.model.keyOf[id])
			}
			lost++
		}
	}
	if lost >= 10 {
		v.addf("%d DEKs in all are gone from the store", lost)
	}
}

// checkFiles opens each file through the library and compares what comes
// out with the original's fingerprint.
func (c *checker) checkFiles(ctx context.Context, sys *setup.System, files []sealed, v *violations) {
	for _, f := range files {
		in, err := os.Open(f.path)
		if err != nil {
			v.addf("sealed file %s: %v", f.path, err)
			continue
		}
		h := sha256.New()
		cw := &countWriter{w: h}
		id, err := sys.Keyring.OpenStream(ctx, cw, in, nil)
		in.Close()
		switch {
		case err != nil:
			v.addf("sealed file %s (key %s, DEK %s) does not decrypt: %v", f.path, f.key, id, err)
		case cw.n != f.size || !bytes.Equal(h.Sum(nil), f.sum[:]):
			v.addf("sealed file %s (key %s, DEK %s) decrypts to %d bytes that differ from the %d-byte original", f.path, f.key, id, cw.n, f.size)
		}
	}
}

// countWriter counts what it passes on.
type countWriter struct {
	w io.Writer
	n int
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += len(p)
	return c.w.Write(p)
}

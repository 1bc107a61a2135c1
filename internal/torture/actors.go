package torture

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// Actors run beside the worker during a life and stop between two
// operations when their context ends. Each has a generator seeded from
// the run's seed, the life and its own number, so a seed replays what each
// does (not how it interleaves with the others).
//
//   - the CLI writer: `dek create --count`, `encrypt` of a new file
//     (decrypted at once), `decrypt` of an older one;
//   - the library writer: NewDEK and OpenDEK on a System opened once for
//     the whole run, as a long-running application would;
//   - the operator: `rotate KEY`, `retire KEY VERSION`.
//
// A writer's command that fails is an error of the run: applications must
// not see the worker's crashes. The operator's refusals (a busy key, a
// version still referenced) are counted, not errors.
func (h *harness) startActors(ctx context.Context, wg *sync.WaitGroup, errs chan<- error, life int) {
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	rngFor := func(actor uint64) *rand.Rand {
		return rand.New(rand.NewPCG(uint64(h.cfg.Seed), uint64(life)<<8|actor))
	}
	wg.Go(func() { h.cliWriter(ctx, rngFor(1), life, report) })
	if h.app != nil {
		wg.Go(func() { h.libWriter(ctx, rngFor(2), report) })
	}
	wg.Go(func() { h.operator(ctx, rngFor(3)) })
}

// pause waits d or until ctx ends; it reports whether to go on.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func randomKey(rng *rand.Rand) string { return tortureKeys[rng.IntN(len(tortureKeys))].name }

// fileSize draws a file size: mostly small, sometimes at the envelope's
// 64 KiB segment boundary.
func fileSize(rng *rand.Rand) int {
	switch rng.IntN(10) {
	case 0:
		return 65535 + rng.IntN(3)
	case 1:
		return 0
	default:
		return 1 + rng.IntN(3000)
	}
}

func (h *harness) cliWriter(ctx context.Context, rng *rand.Rand, life int, report func(error)) {
	for i := 0; pause(ctx, time.Duration(30+rng.IntN(220))*time.Millisecond); i++ {
		key := randomKey(rng)
		op := rng.IntN(10)
		switch {
		case op < 4:
			n := 1 + rng.IntN(5)
			if !h.model.countCreated(n, h.cfg.MaxDEKs) {
				h.decryptOld(rng, report)
				continue
			}
			r := h.cli(nil, "dek", "create", "--key", key, "--count", strconv.Itoa(n), "--label", "torture")
			if r.code != 0 {
				report(fmt.Errorf("writer: %v", r))
				return
			}
			h.model.addUnknown(key, n)
			h.countOp("dek-create")
		case op < 8:
			if !h.model.countCreated(1, h.cfg.MaxDEKs) {
				h.decryptOld(rng, report)
				continue
			}
			if err := h.sealFile(rng, key, fmt.Sprintf("f-%05d-%03d", life, i)); err != nil {
				report(err)
				return
			}
		default:
			if !h.decryptOld(rng, report) {
				return
			}
		}
	}
}

// sealFile writes a file of seeded random bytes, seals it with `rekey
// encrypt`, opens it again with `rekey decrypt`, and keeps only the
// envelope and the plaintext's fingerprint.
func (h *harness) sealFile(rng *rand.Rand, key, name string) error {
	data := make([]byte, fileSize(rng))
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rng.Uint32())
	}
	rand.NewChaCha8(seed).Read(data)
	plain := filepath.Join(h.cfg.Dir, name+".bin")
	f := sealed{path: plain + ".rekey", key: key, sum: sha256.Sum256(data), size: len(data)}
	if err := os.WriteFile(plain, data, 0o600); err != nil {
		return err
	}
	defer os.Remove(plain)
	r := h.cli(nil, "encrypt", "--key", key, "--in", plain, "--out", f.path)
	if r.code != 0 {
		return fmt.Errorf("writer: %v", r)
	}
	h.model.addUnknown(key, 1)
	h.model.addFile(f)
	h.countOp("encrypt")
	return h.decryptCLI(f)
}

// decryptOld opens a random earlier file with `rekey decrypt`; false
// after an error.
func (h *harness) decryptOld(rng *rand.Rand, report func(error)) bool {
	f, ok := h.model.randomFile(rng)
	if !ok {
		return true
	}
	if err := h.decryptCLI(f); err != nil {
		report(err)
		return false
	}
	return true
}

func (h *harness) decryptCLI(f sealed) error {
	back, err := os.CreateTemp(h.cfg.Dir, "back-*")
	if err != nil {
		return err
	}
	back.Close()
	defer os.Remove(back.Name())
	r := h.cli(nil, "decrypt", "--in", f.path, "--out", back.Name())
	if r.code != 0 {
		return fmt.Errorf("writer: %v", r)
	}
	got, err := os.ReadFile(back.Name())
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(got); sum != f.sum || len(got) != f.size {
		return fmt.Errorf("writer: rekey decrypt %s gave %d bytes that differ from the %d-byte original", f.path, len(got), f.size)
	}
	h.countOp("decrypt")
	return nil
}

// libWriter makes DEKs through the library (their plaintext is seen only
// here, as a fingerprint) and opens known ones again.
func (h *harness) libWriter(ctx context.Context, rng *rand.Rand, report func(error)) {
	for pause(ctx, time.Duration(30+rng.IntN(220))*time.Millisecond) {
		key := randomKey(rng)
		if rng.IntN(2) == 0 && h.model.countCreated(1, h.cfg.MaxDEKs) {
			// Not cancelled with the life: a call cut short could store a
			// DEK the model never hears of.
			id, plain, err := h.app.Keyring.NewDEK(context.WithoutCancel(ctx), key, "torture-lib")
			if err != nil {
				report(fmt.Errorf("library writer: NewDEK under %s: %w", key, err))
				return
			}
			h.model.addKnown(key, id, plain)
			clear(plain)
			h.countOp("lib-newdek")
			continue
		}
		id, ok := h.model.randomKnownDEK(rng)
		if !ok {
			continue
		}
		plain, err := h.app.Keyring.OpenDEK(context.WithoutCancel(ctx), id)
		if err != nil {
			report(fmt.Errorf("library writer: OpenDEK %s: %w", id, err))
			return
		}
		sum := sha256.Sum256(plain)
		clear(plain)
		h.model.mu.Lock()
		want := h.model.prints[id]
		h.model.mu.Unlock()
		if sum != want {
			report(fmt.Errorf("library writer: DEK %s opens to another plaintext than it had", id))
			return
		}
		h.countOp("lib-opendek")
	}
}

// operator rotates a key now and then and retires old versions early,
// the way a person at the CLI would.
func (h *harness) operator(ctx context.Context, rng *rand.Rand) {
	for pause(ctx, time.Duration(300+rng.IntN(1200))*time.Millisecond) {
		key := randomKey(rng)
		if rng.IntN(2) == 0 {
			r := h.cli(nil, "rotate", key, "--reason", "torture")
			h.countOutcome("rotate", r)
			continue
		}
		var show struct {
			Versions []struct {
				Version int                `json:"version"`
				State   rekey.VersionState `json:"state"`
			} `json:"versions"`
		}
		r := h.cli(nil, "key", "show", key, "--json")
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &show) != nil || len(show.Versions) == 0 {
			h.countOutcome("show", r)
			continue
		}
		// Mostly a version pending retirement; sometimes any version, to
		// be refused.
		var pick []int
		for _, v := range show.Versions {
			if v.State == rekey.VersionPendingRetirement || rng.IntN(10) == 0 {
				pick = append(pick, v.Version)
			}
		}
		if len(pick) == 0 {
			continue
		}
		v := pick[rng.IntN(len(pick))]
		r = h.cli(nil, "retire", key, strconv.Itoa(v))
		h.countOutcome("retire", r)
	}
}

// outcome classifies an operator command's result for the report.
func outcome(r result) string {
	switch {
	case r.code == 0:
		return "ok"
	case strings.Contains(r.stderr, "busy"):
		return "busy"
	case r.code == 1:
		return "refused"
	}
	return "exit" + strconv.Itoa(r.code)
}

// openApp opens the library writer's System (closed by closeApp).
func (h *harness) openApp(ctx context.Context) error {
	sys, err := setup.Open(ctx, setup.Options{Home: h.cfg.Home, NoCreate: true, Actor: "torture-app"})
	if err != nil {
		return fmt.Errorf("open the home as an application: %w", err)
	}
	h.app = sys
	return nil
}

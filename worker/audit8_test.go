package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/audit"
	"github.com/rekeyhq/rekey/worker"
)

// downMACer is a MAC backend that cannot be used (its keyring unreadable).
type downMACer struct{}

func (downMACer) MAC(context.Context, string, []byte) ([]byte, error) {
	return nil, errors.New("keyring: unexpected end of file")
}

// A worker whose MAC backend is down, or that has none, does not vouch for
// the trail (issue 8, item 1): the gauge goes to 0, the log says at ERROR
// that the chain could not be verified and why, never "verified", and
// RunOnce leaves AuditProblem set and writes no checkpoint (item 3).
func TestWorkerDoesNotVouchWithoutMACs(t *testing.T) {
	t.Parallel()
	for name, m := range map[string]rekey.MACer{"backend_down": downMACer{}, "no_macer": nil} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			if _, err := b.kr.CreateKey(b.ctx, "k", "mem", policy()); err != nil {
				t.Fatal(err)
			}
			anchor := filepath.Join(t.TempDir(), "audit.anchor")
			good := &audit.Keeper{Store: b.store, MACer: b.kms, AnchorPath: anchor, StoreID: "mem"}
			if err := good.Checkpoint(b.ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := b.kr.NewDEKs(b.ctx, "k", "", 2); err != nil {
				t.Fatal(err)
			}
			b.clock.advance(59 * time.Minute) // due: the cycle writes events
			w, err := worker.New(worker.Config{
				Engine: b.engine(t, "w1", 10), Store: b.store, Clock: b.clock, Gauge: b.gauge,
				Audit:  &audit.Keeper{Store: b.store, MACer: m, AnchorPath: anchor, StoreID: "mem"},
				Logger: slog.New(slog.NewJSONHandler(b.logs, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			before, _ := b.store.LastAuditCheckpoint(b.ctx)
			r := w.RunOnce(b.ctx)
			if r.Keys[0].Outcome != "rotated" {
				t.Fatalf("cycle: %+v, want k rotated", r)
			}
			if ok, n := b.gauge.last(); ok || n == 0 {
				t.Errorf("gauge = %v after %d settings, want 0", ok, n)
			}
			if w.AuditProblem() == nil {
				t.Errorf("AuditProblem = nil, want why the chain could not be verified")
			}
			logs := b.logs.String()
			if strings.Contains(logs, `"msg":"audit chain verified"`) || !strings.Contains(logs, `"level":"ERROR","msg":"audit chain could not be verified"`) {
				t.Errorf("log does not say at ERROR that the chain could not be verified (or says verified):\n%s", logs)
			}
			if after, _ := b.store.LastAuditCheckpoint(b.ctx); after.Seq != before.Seq {
				t.Errorf("a checkpoint was written (seq %d, was %d) over a trail that was not verified", after.Seq, before.Seq)
			}
		})
	}
}

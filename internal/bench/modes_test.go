package bench_test

import (
	"context"
	"errors"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/rekeyhq/rekey/internal/bench"
)

// TestRunThrottled: with ThrottleAt the engine's backend refuses requests
// above the rate (the local backend: 2000 DEKs in batches of 250, two
// requests each: 16 requests, the middleware allowing 16 a second, the
// backend 4 with a burst of 4),
// the middleware's adaptive rate lowers itself, the rotation completes,
// and the result counts the throttled requests.
func TestRunThrottled(t *testing.T) {
	t.Parallel()
	res, err := bench.Run(t.Context(), bench.Options{DEKs: 2000, Store: bench.StoreSQLite, Backend: bench.BackendLocal,
		BatchSize: 250, Concurrency: 2, RateLimit: 16, ThrottleAt: 4, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Engine.DEKs != 2000 {
		t.Fatalf("re-wrapped %d DEKs, want 2000", res.Engine.DEKs)
	}
	th := res.Engine.Throttle
	if th == nil {
		t.Fatal("no throttle result")
	}
	t.Logf("throttle: %+v", *th)
	if th.ThrottleAt != 4 || th.Requests < 16 || th.Throttled < 1 || th.Throttled >= th.Requests ||
		th.ThrottledShare != float64(th.Throttled)/float64(th.Requests) || th.SustainedReqPerS <= 0 || th.FinalRate <= 0 || th.FinalRate >= 16 {
		t.Errorf("throttle result %+v: want at least 16 requests, some throttled, a rate sustained, and the rate lowered below 16", *th)
	}
	if res.Settings.ThrottleAt != 4 {
		t.Errorf("settings.throttle_at = %v", res.Settings.ThrottleAt)
	}
}

// fakeCLI stands for the other process of WithWriters: it records the
// commands, takes a millisecond each, and fails a few with "database is
// locked" and one otherwise.
type fakeCLI struct {
	mu             sync.Mutex
	calls          [][]string
	locked, others int
}

func (f *fakeCLI) run(ctx context.Context, configPath string, args ...string) error {
	if _, err := os.Stat(configPath); err != nil {
		return err
	}
	time.Sleep(time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, args)
	switch n := len(f.calls); {
	case n == 9 || n == 12:
		f.locked++
		return errors.New("rekey dek create: exit status 1: open store: database is locked")
	case n == 10:
		f.others++
		return errors.New("rekey decrypt: exit status 1: something else")
	}
	return nil
}

// TestRunWithWriters: the writers' loop seals a file first, then
// alternates dek create and decrypt during the engine phase, and counts
// latencies and errors by kind.
func TestRunWithWriters(t *testing.T) {
	t.Parallel()
	cli := &fakeCLI{}
	res, err := bench.Run(t.Context(), bench.Options{DEKs: 2000, Store: bench.StoreSQLite, Backend: bench.BackendLocal,
		WithWriters: true, RunCLI: cli.run, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	w := res.Writers
	if w == nil {
		t.Fatal("no writers result")
	}
	t.Logf("writers: %+v", *w)
	cli.mu.Lock()
	defer cli.mu.Unlock()
	const baseline = 6
	if len(cli.calls) < 1+baseline || cli.calls[0][0] != "encrypt" {
		t.Fatalf("commands %v: want encrypt first, then %d for the baseline", cli.calls, baseline)
	}
	ops := cli.calls[1:]
	for i, c := range ops {
		want := []string{"dek", "decrypt"}[i%2]
		if c[0] != want {
			t.Errorf("command %d is %v, want %s", i, c, want)
		}
	}
	if w.BaselineP50Ms < 1 || w.BaselineMaxMs < w.BaselineP50Ms {
		t.Errorf("baseline p50 %v, max %v (ms): want ordered, at least the fake's 1 ms", w.BaselineP50Ms, w.BaselineMaxMs)
	}
	ops = ops[baseline:]
	if w.Ops != len(ops) || w.DEKCreates+w.Decrypts != w.Ops || w.DEKCreates != (len(ops)+1)/2 {
		t.Errorf("writers counted %d ops (%d dek create, %d decrypt); the fake ran %d", w.Ops, w.DEKCreates, w.Decrypts, len(ops))
	}
	if w.LockedErrors != cli.locked || w.OtherErrors != cli.others {
		t.Errorf("errors: %d locked, %d other; the fake returned %d and %d", w.LockedErrors, w.OtherErrors, cli.locked, cli.others)
	}
	if cli.locked+cli.others > 0 && w.FirstError == "" {
		t.Error("no first error recorded")
	}
	if w.Ops > 0 && (w.P50Ms < 1 || w.P99Ms < w.P50Ms || w.MaxMs < w.P99Ms || w.DEKCreateP99Ms < 1) {
		t.Errorf("latencies p50 %v, p99 %v, max %v, dek create p99 %v (ms): want ordered, at least the fake's 1 ms", w.P50Ms, w.P99Ms, w.MaxMs, w.DEKCreateP99Ms)
	}

	if _, err := bench.Run(t.Context(), bench.Options{DEKs: 1, Store: bench.StoreSQLite, Backend: bench.BackendLocal, WithWriters: true, Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "RunCLI") {
		t.Errorf("WithWriters without RunCLI: %v, want an error naming RunCLI", err)
	}
}

// awsEndpoint returns local-kms's endpoint: missing, the test fails under
// CI and is skipped otherwise.
func awsEndpoint(t *testing.T) string {
	t.Helper()
	ep := os.Getenv(bench.EnvAWSEndpoint)
	if ep == "" {
		const how = bench.EnvAWSEndpoint + " is not set: start local-kms with `eval \"$(scripts/localkms start)\"`, or run scripts/test"
		if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	if !strings.HasPrefix(ep, "http://127.0.0.1:") {
		t.Fatalf("%s=%q: the tests only talk to an emulator on 127.0.0.1", bench.EnvAWSEndpoint, ep)
	}
	return ep
}

// TestRunAWSKMS runs the bench on local-kms: one ReEncrypt per DEK, the
// endpoint's raw ReEncrypt measured, every KMS key the run made scheduled
// for deletion after; and with throttling, a completed rotation and its
// throttle figures.
func TestRunAWSKMS(t *testing.T) {
	ep := awsEndpoint(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDREKEYBENCHTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "rekey-bench-test-not-a-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	res, err := bench.Run(t.Context(), bench.Options{DEKs: 2000, Store: bench.StoreSQLite, Backend: bench.BackendAWSKMS, Endpoint: ep, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, 2000)
	t.Logf("engine %.0f DEKs/s, raw ReEncrypt %.0f/s, naive %.0f/s, %.4f calls/DEK", res.Engine.DEKsPerS, res.Floor.RawRewrapPerS, res.Naive.DEKsPerS, res.Engine.BackendCallsPerDEK)
	// ReEncrypt per DEK, plus the rotation's few control requests.
	if c := res.Engine.BackendCallsPerDEK; c < 1 || c > 1.02 {
		t.Errorf("backend calls per DEK = %v, want one ReEncrypt each (1 to 1.02)", c)
	}
	if res.Floor.RawRewrapPerS <= 0 || res.Ratios.EngineVsRawRewrap <= 0 {
		t.Errorf("raw ReEncrypt %v/s, engine/raw %v: want positive", res.Floor.RawRewrapPerS, res.Ratios.EngineVsRawRewrap)
	}
	// The baseline brackets the engine: the mean of a measure before it
	// and one after.
	f := res.Floor
	if f.RawRewrapBeforePerS <= 0 || f.RawRewrapAfterPerS <= 0 || math.Abs(f.RawRewrapPerS-(f.RawRewrapBeforePerS+f.RawRewrapAfterPerS)/2) > 1e-6 {
		t.Errorf("raw ReEncrypt %v/s, before %v/s, after %v/s: want the mean of two positive measures", f.RawRewrapPerS, f.RawRewrapBeforePerS, f.RawRewrapAfterPerS)
	}
	if res.Backend != bench.BackendAWSKMS || res.Settings.Endpoint != ep || !strings.HasPrefix(res.Settings.AliasPrefix, "alias/rekey-bench-") {
		t.Errorf("backend %q, settings %+v", res.Backend, res.Settings)
	}

	api := kms.New(kms.Options{Region: "us-east-1", BaseEndpoint: aws.String(ep), Retryer: aws.NopRetryer{},
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIDREKEYBENCHTEST", SecretAccessKey: "rekey-bench-test-not-a-secret"}, nil
		})})
	// Version 1 (seeded), 2 (the engine's), 3 (the naive phase's).
	for v := 1; v <= 3; v++ {
		alias := res.Settings.AliasPrefix + bench.KeyName + "/v" + strconv.Itoa(v)
		out, err := api.DescribeKey(t.Context(), &kms.DescribeKeyInput{KeyId: aws.String(alias)})
		if err != nil {
			t.Fatalf("DescribeKey %s: %v", alias, err)
		}
		if s := out.KeyMetadata.KeyState; s != types.KeyStatePendingDeletion {
			t.Errorf("%s after the bench: %s, want PendingDeletion", alias, s)
		}
	}

	res, err = bench.Run(t.Context(), bench.Options{DEKs: 2000, Store: bench.StoreSQLite, Backend: bench.BackendAWSKMS, Endpoint: ep,
		ThrottleAt: 400, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	th := res.Engine.Throttle
	if res.Engine.DEKs != 2000 || th == nil {
		t.Fatalf("throttled run: re-wrapped %d, throttle %v", res.Engine.DEKs, th)
	}
	t.Logf("throttled above 400/s: %+v", *th)
	if th.Requests < 2000 || th.SustainedReqPerS <= 0 {
		t.Errorf("throttle result %+v: want at least one request per DEK and a rate sustained", *th)
	}
}

package main

// End-to-end test of the awskms backend through the rekey binary, against
// the local-kms emulator (REKEY_TEST_AWSKMS_ENDPOINT, started by
// scripts/test), behind a counting reverse proxy in this test.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/rekeyhq/rekey"
)

const awsEndpointEnv = "REKEY_TEST_AWSKMS_ENDPOINT"

// awsEndpoint returns the emulator's endpoint: missing, the test fails
// under CI (CI or REKEY_REQUIRE_PEERS set) and is skipped otherwise.
func awsEndpoint(t *testing.T) string {
	t.Helper()
	ep := os.Getenv(awsEndpointEnv)
	if ep == "" {
		const how = awsEndpointEnv + " is not set: start local-kms with `eval \"$(scripts/localkms start)\"`, or run scripts/test"
		if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	if !strings.HasPrefix(ep, "http://127.0.0.1:") {
		t.Fatalf("%s=%q: the tests only talk to an emulator on 127.0.0.1", awsEndpointEnv, ep)
	}
	return ep
}

// kmsProxy is a reverse proxy to the emulator that counts requests per
// X-Amz-Target and per wall-clock second, and can refuse every request
// (it closes the connection, as a backend that went away).
type kmsProxy struct {
	url  string
	down atomic.Bool

	mu        sync.Mutex
	byTarget  map[string]int
	perSecond map[int64]int
}

func newKMSProxy(t *testing.T, target string) *kmsProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &kmsProxy{byTarget: map[string]int{}, perSecond: map[int64]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.down.Load() {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
		p.mu.Lock()
		p.byTarget[op]++
		p.perSecond[time.Now().Unix()]++
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p.url = "http://" + ln.Addr().String()
	return p
}

// take returns the counts since the last take and resets them.
func (p *kmsProxy) take() (byTarget map[string]int, maxPerSecond int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	byTarget = p.byTarget
	for _, n := range p.perSecond {
		maxPerSecond = max(maxPerSecond, n)
	}
	p.byTarget, p.perSecond = map[string]int{}, map[int64]int{}
	return byTarget, maxPerSecond
}

// TestE2E_AWSKMS: a key on awskms (mode new-key, rate_limit 200) with a 3 s
// period, 2,000 DEKs and 5 sealed files rotates with `rekey run --once`:
// every DEK on version 2, every file decrypts, re-wrap by ReEncrypt (at most
// one per DEK, no Decrypt), at most 210 requests in any second. Version 1
// is retired (its KMS key Disabled in the emulator) and then destroyed
// (deletion scheduled 7 days out). With the backend refusing connections,
// `rekey status` names the key and the backend, a key on the local backend
// still rotates, and nothing changes for the AWS key.
func TestE2E_AWSKMS(t *testing.T) {
	endpoint := awsEndpoint(t)
	// The SDK's default chain reads credentials from the environment: the
	// emulator checks none. No instance metadata lookups.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDREKEYE2E")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "rekey-e2e-not-a-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	const deks, files, limit = 2000, 5, 200

	proxy := newKMSProxy(t, endpoint)
	prefix := "alias/rekey-e2e-" + strings.ToLower(rekey.NewID()) + "/"
	h := newE2EHome(t, e2eOpts{})
	h.editConfig([2]string{"backends:\n", fmt.Sprintf("backends:\n  aws:\n    type: awskms\n    region: us-east-1\n    endpoint: %s\n    alias_prefix: %s\n    deletion_window_days: 7\n    rate_limit: %d\n",
		proxy.url, prefix, limit)})

	h.must("key", "create", "k", "--backend", "aws", "--period", "3s", "--rotate-within", "200ms", "--grace", "0s", "--destroy-after", "500ms")
	h.must("key", "create", "loc", "--backend", "local")
	h.createDEKs("k", deks)
	sealed := h.sealFiles("k", "f", fileSizes(files))
	h.createDEKs("loc", 10)
	_, peak := proxy.take()
	if peak > limit+10 {
		t.Errorf("creating %d DEKs: %d requests in one second at the backend, want at most %d", deks, peak, limit+10)
	}

	// The plan shows the calls and the time at the rate limit.
	const ahead = 2600 * time.Millisecond // k is due (3s period, rotate within 200ms)
	later := h.environ("REKEY_TEST_CLOCK_OFFSET=" + ahead.String())
	plan := h.runEnv(later, "plan")
	if plan.code != 0 || !strings.Contains(plan.stdout, fmt.Sprintf("rate limit %d/s", limit)) || !strings.Contains(plan.stdout, fmt.Sprintf("rewrap %d", deks+files)) {
		t.Errorf("plan does not show %d re-wraps at the rate limit: %v", deks+files, plan)
	}
	proxy.take()

	run1 := h.runEnv(later, "run", "--once")
	if run1.code != 0 {
		t.Fatalf("run 1: %v", run1)
	}
	calls, peak := proxy.take()
	t.Logf("run 1 (%d DEKs at rate_limit %d): %v, backend requests %v, peak %d/s", deks+files, limit, run1.dur.Round(time.Millisecond), calls, peak)
	if peak > limit+10 {
		t.Errorf("run 1: %d requests in one second at the backend, want at most %d", peak, limit+10)
	}
	if n := calls["ReEncrypt"]; n < deks+files || n > deks+files {
		t.Errorf("run 1: %d ReEncrypt for %d DEKs, want exactly one each (at most 1.0 per DEK)", n, deks+files)
	}
	if calls["Decrypt"] != 0 || calls["Encrypt"] != 0 {
		t.Errorf("run 1: %d Decrypt and %d Encrypt during the re-wrap, want none (ReEncrypt only)", calls["Decrypt"], calls["Encrypt"])
	}
	h.assertAllOn("k", 2, deks+files)
	h.checkFiles(sealed)

	api := kms.New(kms.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), Retryer: aws.NopRetryer{},
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIDREKEYE2E", SecretAccessKey: "rekey-e2e-not-a-secret"}, nil
		})})
	describe := func(alias string) *types.KeyMetadata {
		t.Helper()
		out, err := api.DescribeKey(t.Context(), &kms.DescribeKeyInput{KeyId: aws.String(alias)})
		if err != nil {
			t.Fatalf("DescribeKey %s: %v", alias, err)
		}
		return out.KeyMetadata
	}
	if k := h.keyShow("k"); k.version(t, 1).State == string(rekey.VersionRetired) {
		if md := describe(prefix + "k/v1"); md.KeyState != types.KeyStateDisabled {
			t.Errorf("v1 retired, its KMS key is %s, want Disabled", md.KeyState)
		}
	}

	// Run 2, seconds later on the clock: v1 (retired) is destroyed
	// (destroy_after 500ms). v2's 3 s period is pushed back first, so that
	// a slow machine cannot make run 2 rotate k again.
	if _, err := h.sqlDB().Exec(`UPDATE keys SET expires_at = ? WHERE name = 'k'`, time.Now().Add(time.Hour).UnixMicro()); err != nil {
		t.Fatal(err)
	}
	run2 := h.runEnv(h.environ("REKEY_TEST_CLOCK_OFFSET=10s"), "run", "--once")
	if run2.code != 0 {
		t.Fatalf("run 2: %v", run2)
	}
	k := h.assertAllOn("k", 2, deks+files)
	if s := k.version(t, 1).State; s != string(rekey.VersionDestroyed) {
		t.Fatalf("v1 after run 2 is %s, want destroyed: %v", s, run2)
	}
	md := describe(prefix + "k/v1")
	if md.KeyState != types.KeyStatePendingDeletion || md.DeletionDate == nil || time.Until(*md.DeletionDate) < 7*24*time.Hour-time.Hour {
		t.Errorf("v1's KMS key: state %s, deletion date %v; want PendingDeletion at least 7 days out", md.KeyState, md.DeletionDate)
	}
	if md := describe(prefix + "k/v2"); md.KeyState != types.KeyStateEnabled || *describe(prefix + "k").Arn != *md.Arn {
		t.Errorf("v2's KMS key is %s (or the alias %sk is not on it), want Enabled and aliased", md.KeyState, prefix)
	}
	h.checkFiles(sealed)
	// status shows when AWS deletes v1's key material.
	if st := h.run("status"); !strings.Contains(st.stdout, "v1 deleted by the backend on "+md.DeletionDate.UTC().Format(time.RFC3339)) {
		t.Errorf("status does not show v1's deletion date %s:\n%s", md.DeletionDate.UTC().Format(time.RFC3339), st.stdout)
	}

	// The backend goes away: status names key and backend; the local key
	// still rotates; nothing changes for k.
	proxy.take()
	proxy.down.Store(true)
	before := h.keyShow("k")
	st := h.run("status")
	if st.code == 0 || !strings.Contains(st.stdout+st.stderr, "aws") || !strings.Contains(st.stdout+st.stderr, "k") {
		t.Errorf("status with the backend down: want a failure naming key k and backend aws: %v", st)
	}
	var sj struct {
		Keys []struct {
			Name         string `json:"name"`
			Backend      string `json:"backend"`
			BackendError string `json:"backend_error"`
		} `json:"keys"`
	}
	stj := h.run("status", "--json")
	if err := json.Unmarshal([]byte(stj.stdout), &sj); err != nil {
		t.Fatalf("status --json: %v: %v", err, stj)
	}
	for _, kk := range sj.Keys {
		switch {
		case kk.Name == "k" && (kk.Backend != "aws" || !strings.Contains(kk.BackendError, "aws") || !strings.Contains(kk.BackendError, "unreachable")):
			t.Errorf("status --json for k: backend %q, backend_error %q; want aws named, unreachable", kk.Backend, kk.BackendError)
		case kk.Name == "loc" && kk.BackendError != "":
			t.Errorf("status --json for loc: backend_error %q, want none", kk.BackendError)
		}
	}
	h.makeDue("loc")
	h.makeDue("k")
	down := h.run("run", "--once")
	t.Logf("run with the backend down: exit %d after %v", down.code, down.dur.Round(time.Millisecond))
	if !strings.Contains(down.stderr, "aws") {
		t.Errorf("the run's log does not name backend aws: %v", down)
	}
	h.assertAllOn("loc", 2, 10)
	after := h.keyShow("k")
	if after.ActiveVersion != before.ActiveVersion || len(after.Versions) != len(before.Versions) || after.DEKs != before.DEKs {
		t.Errorf("k changed while its backend was down: before %+v, after %+v", before, after)
	}
	h.assertAllOn("k", 2, deks+files)
	// The engine claims a rotation before it asks the backend (its own
	// record, in the store): it stays claimed, with no new version.
	var sj2 struct {
		Rotations []struct {
			Key       string `json:"key"`
			State     string `json:"state"`
			ToVersion int    `json:"to_version"`
		} `json:"rotations"`
	}
	if err := json.Unmarshal([]byte(h.run("status", "--json").stdout), &sj2); err != nil {
		t.Fatal(err)
	}
	for _, r := range sj2.Rotations {
		if r.Key == "k" && (r.State != string(rekey.RotationClaimed) || r.ToVersion != 0) {
			t.Errorf("open rotation of k while its backend was down: %+v, want at most a claim with no new version", r)
		}
	}
	if calls, _ := proxy.take(); len(calls) != 0 {
		t.Errorf("requests reached the emulator while the proxy was down: %v", calls)
	}
}

package rotation_test

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/awskms"
	"github.com/rekeyhq/rekey/kms/faultkms"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/pkcs11"
	"github.com/rekeyhq/rekey/kms/vault"
	"github.com/rekeyhq/rekey/kms/vault/transitserver"
)

// The fault torture on the remote backends (issue 10 item 6, issue 13
// item 4): the scenarios of TestFaultTorture (injected errors, lost
// replies of each op the backend offers, latency and throttling, all
// inside kmsmw) with the keys on awskms (local-kms), pkcs11 (SoftHSM2)
// and vault (a transitserver per backend). The same invariants are
// checked: exactly one new version per key at the backend, states only
// forward, every DEK and sealed message opens to its plaintext, the audit
// chain verifies. Short by default (one seed, one key per flavour, 100
// DEKs each); -fault.long (or REKEY_LONG=1) runs five seeds, two keys per
// flavour and 300 DEKs each. A missing peer fails under CI and skips
// otherwise. Replay a failure with the seed and command it prints.
//
//	go test -count=1 -run 'TestFaultTorture(AWSKMS|PKCS11|Vault)' -v ./rotation -args -fault.long

// remoteSize is how much one run on a remote backend does.
func remoteSize() tortureSize {
	if *faultLong || os.Getenv("REKEY_LONG") == "1" {
		return tortureSize{keysPerFlavour: 2, deks: 300, sealed: 10, runs: 5}
	}
	return tortureSize{keysPerFlavour: 1, deks: 100, sealed: 3, runs: 1}
}

// peerVars returns the values of the peer's environment variables. One
// missing fails the test under CI (CI or REKEY_REQUIRE_PEERS set) and
// skips it otherwise, saying how to start the peer.
func peerVars(t *testing.T, how string, names ...string) []string {
	t.Helper()
	vals := make([]string, len(names))
	for i, n := range names {
		if vals[i] = os.Getenv(n); vals[i] == "" {
			msg := n + " is not set: " + how + ", or run scripts/test"
			if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return vals
}

// backendScenarios are the fault scenarios for set: every-op errors at
// 20% and 40%, lost replies of each op a flavour of set offers, and
// everything at once with concurrency.
func backendScenarios(set *backendSet) []tortureScenario {
	var caps rekey.Capabilities
	for _, f := range set.flavours {
		caps.Rewrap = caps.Rewrap || f.caps.Rewrap
		caps.BatchRewrap = caps.BatchRewrap || f.caps.BatchRewrap
		caps.RetireVersion = caps.RetireVersion || f.caps.RetireVersion
		caps.Ping = caps.Ping || f.caps.Ping
	}
	offered := map[string]bool{
		kmsmw.OpRewrap: caps.Rewrap, kmsmw.OpRewrapBatch: caps.BatchRewrap,
		kmsmw.OpRetireVersion: caps.RetireVersion, kmsmw.OpDestroyVersion: caps.RetireVersion,
		kmsmw.OpPing: caps.Ping, kmsmw.OpMAC: set.mac != "",
	}
	s := []tortureScenario{
		{name: "errors_20pct", faults: faultkms.Config{ErrorRate: 0.2}, concurrency: 1, backends: set},
		{name: "errors_40pct", faults: faultkms.Config{ErrorRate: 0.4}, concurrency: 2, backends: set},
	}
	for _, op := range kmsmw.Ops() {
		if op == kmsmw.OpFindKey || op == kmsmw.OpDeleteKey {
			continue // only a move calls them: its recovery, the old backend's clean-up (move_test.go)
		}
		if on, listed := offered[op]; listed && !on {
			continue
		}
		s = append(s, tortureScenario{name: "lost_reply/" + op, faults: faultkms.Config{LostReplyRate: lostReplyRate(op), Ops: []string{op}},
			op: op, concurrency: 1, backends: set})
	}
	return append(s, tortureScenario{
		name:        "errors_lost_replies_latency_throttling",
		faults:      faultkms.Config{ErrorRate: 0.2, LostReplyRate: 0.2, Latency: time.Millisecond, ThrottleAbove: 500},
		concurrency: 4, backends: set,
	})
}

// passThrough gives a backend every optional interface (faultkms without
// faults: a method the backend lacks fails with rekey.ErrUnsupported,
// which capsKMS's capabilities keep the engine from calling).
func passThrough(k rekey.KMS) fullKMS { return faultkms.Wrap(k, faultkms.Config{}) }

// TestFaultTortureAWSKMS: the fault scenarios on awskms (mode new-key)
// against local-kms: flavour "native" re-wraps with ReEncrypt and MACs the
// audit checkpoints with GenerateMac, flavour "plain" reports neither
// re-wrap nor MAC, so the engine unwraps and wraps.
func TestFaultTortureAWSKMS(t *testing.T) {
	t.Parallel()
	endpoint := peerVars(t, "start local-kms with `eval \"$(scripts/localkms start)\"`", "REKEY_TEST_AWSKMS_ENDPOINT")[0]
	if !strings.HasPrefix(endpoint, "http://127.0.0.1:") {
		t.Fatalf("REKEY_TEST_AWSKMS_ENDPOINT=%q: the tests only talk to an emulator on 127.0.0.1", endpoint)
	}
	creds := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: "AKIDREKEYFAULT", SecretAccessKey: "rekey-fault-not-a-secret", Source: "test"}, nil
	})
	set := &backendSet{name: "awskms", mac: "native", flavours: []flavour{
		{"native", rekey.Capabilities{Rewrap: true, RetireVersion: true, Ping: true, MAC: true}},
		{"plain", rekey.Capabilities{RetireVersion: true, Ping: true}},
	}, open: func(e *tortureEnv, f flavour) fullKMS {
		// The SDK client as awskms.New makes it (no SDK retries: kmsmw
		// retries), on a transport whose idle connections the run closes
		// (the package's TestMain checks for leaked goroutines).
		tr := &http.Transport{}
		e.t.Cleanup(tr.CloseIdleConnections)
		api := kms.New(kms.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), Credentials: creds,
			Retryer: aws.NopRetryer{}, HTTPClient: &http.Client{Transport: tr}})
		k, err := awskms.New(e.ctx, awskms.Config{
			Name: f.name, Client: api, DeletionWindowDays: 7,
			// Aliases of this run's own: the emulator outlives it.
			AliasPrefix: "alias/rekey-fault-" + strings.ToLower(rekey.NewID()) + "/",
		})
		if err != nil {
			e.t.Fatalf("awskms on %s: %v", endpoint, err)
		}
		return passThrough(k)
	}}
	runFaultScenarios(t, backendScenarios(set), remoteSize())
}

// TestFaultTorturePKCS11: the fault scenarios on pkcs11 against the
// SoftHSM2 token of scripts/softhsm: two flavours (two Clients, each its
// own session pool, on one token), with unique key names per run (the
// token outlives it); a local keyring MACs the audit checkpoints.
func TestFaultTorturePKCS11(t *testing.T) {
	t.Parallel()
	v := peerVars(t, "make a SoftHSM2 token with `eval \"$(scripts/softhsm start)\"`",
		"REKEY_TEST_PKCS11_MODULE", "REKEY_TEST_PKCS11_TOKEN", "REKEY_TEST_PKCS11_PIN")
	caps := rekey.Capabilities{RetireVersion: true, Ping: true}
	set := &backendSet{name: "pkcs11", uniqueNames: true, flavours: []flavour{{"hsm-a", caps}, {"hsm-b", caps}},
		open: func(e *tortureEnv, f flavour) fullKMS {
			k, err := pkcs11.New(e.ctx, pkcs11.Config{Module: v[0], TokenLabel: v[1], PIN: v[2], PINSource: "REKEY_TEST_PKCS11_PIN"})
			if err != nil {
				e.t.Fatalf("pkcs11 token %s: %v", v[1], err)
			}
			return passThrough(k)
		}}
	runFaultScenarios(t, backendScenarios(set), remoteSize())
}

// TestFaultTortureVault: the fault scenarios on vault, each flavour on a
// transitserver of its own (Vault's keysutil behind the Transit
// endpoints, on 127.0.0.1): "batch" re-wraps with batch_input, "single"
// one rewrap per DEK, "plain" unwraps and wraps; a local keyring MACs the
// audit checkpoints (Transit offers no MAC to rekey).
func TestFaultTortureVault(t *testing.T) {
	t.Parallel()
	set := &backendSet{name: "vault", flavours: []flavour{
		{"batch", rekey.Capabilities{Rewrap: true, BatchRewrap: true, RetireVersion: true, Ping: true}},
		{"single", rekey.Capabilities{Rewrap: true, RetireVersion: true, Ping: true}},
		{"plain", rekey.Capabilities{RetireVersion: true, Ping: true}},
	}, open: func(e *tortureEnv, f flavour) fullKMS {
		srv, err := transitserver.Start(transitserver.Options{})
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { srv.Close() })
		k, err := vault.New(e.ctx, vault.Config{Name: f.name, Address: srv.URL, Token: srv.Token()})
		if err != nil {
			e.t.Fatalf("vault on %s: %v", srv.URL, err)
		}
		return passThrough(k)
	}}
	runFaultScenarios(t, backendScenarios(set), remoteSize())
}

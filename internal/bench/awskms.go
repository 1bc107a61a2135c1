package bench

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/awskms"
)

// awsRegion is the region of the bench's awskms backend when AWS_REGION
// is not set (the emulator accepts any).
const awsRegion = "us-east-1"

// validEndpoint reports whether s is http(s)://host[:port] with no path.
func validEndpoint(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" &&
		(u.Path == "" || u.Path == "/") && u.User == nil && u.RawQuery == ""
}

// loopback reports whether the endpoint's host is a loopback address or
// localhost: an emulator on this machine.
func loopback(endpoint string) bool {
	u, err := url.Parse(endpoint)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func region() string {
	if r := os.Getenv("AWS_REGION"); r != "" {
		return r
	}
	return awsRegion
}

// setupAWS adds an awskms backend named "awskms" on o.Endpoint to the
// configuration being written (replace edits it), with aliases under a
// prefix of this run's own, a 7-day deletion window for the cleanup and
// an explicit rate_limit (setRateLimit sets it). For an emulator on a
// loopback address with no AWS credentials in the environment it sets
// dummy ones (the emulator checks none), inherited by the child
// processes.
func (e *runEnv) setupAWS(replace func(old, new string) error) error {
	prefix := "alias/rekey-bench-" + strings.ToLower(rekey.NewID()) + "/"
	block := fmt.Sprintf("backends:\n  %s:\n    type: awskms\n    region: %s\n    endpoint: %s\n    alias_prefix: %s\n    deletion_window_days: %d\n    rate_limit: 0\n",
		BackendAWSKMS, region(), e.o.Endpoint, prefix, awskms.MinDeletionWindowDays)
	if err := replace("backends:\n", block); err != nil {
		return err
	}
	if loopback(e.o.Endpoint) && os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		for k, v := range map[string]string{
			"AWS_ACCESS_KEY_ID":         "AKIDREKEYBENCH",
			"AWS_SECRET_ACCESS_KEY":     "rekey-bench-emulator-not-a-secret",
			"AWS_EC2_METADATA_DISABLED": "true",
		} {
			if err := os.Setenv(k, v); err != nil {
				return fmt.Errorf("bench: %w", err)
			}
		}
	}
	e.settings.Endpoint, e.settings.AliasPrefix = e.o.Endpoint, prefix
	return nil
}

// cleanupAWS schedules the deletion of every KMS key the run made (one
// per version, after the shortest waiting period AWS allows). It does
// nothing for the local backend or before the key exists.
func (e *runEnv) cleanupAWS() error {
	if e.o.Backend != BackendAWSKMS || e.ref == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sys, err := e.open(ctx)
	if err != nil {
		return err
	}
	defer sys.Close()
	k := sys.Backends[BackendAWSKMS]
	how := fmt.Sprintf("schedule the deletion of the KMS keys behind the aliases %s/v* by hand", e.ref)
	cur, err := k.CurrentVersion(ctx, e.ref)
	if err != nil {
		return fmt.Errorf("bench: clean up the AWS keys: %w (%s)", err, how)
	}
	vr, ok := k.(rekey.VersionRetirer)
	if !ok {
		return fmt.Errorf("bench: clean up the AWS keys: the backend cannot destroy versions (%s)", how)
	}
	for v := 1; v <= cur; v++ {
		if err := vr.DestroyVersion(ctx, e.ref, v); err != nil {
			return fmt.Errorf("bench: clean up the AWS keys: version %d: %w (%s)", v, err, how)
		}
	}
	return nil
}

// rawRewrap measures the endpoint's own ReEncrypt: rows re-encrypted
// from their version's KMS key to version to's, straight through the AWS
// SDK (no rekey code, no rate limit, no retries), Settings.Concurrency
// calls at a time; the ciphertexts are discarded.
func (e *runEnv) rawRewrap(ctx context.Context, rows []row, to int) (float64, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region()),
		awsconfig.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }))
	if err != nil {
		return 0, fmt.Errorf("bench: raw ReEncrypt: load the AWS configuration: %w", err)
	}
	api := kms.NewFromConfig(cfg, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(strings.TrimSuffix(e.o.Endpoint, "/"))
	})
	// The version aliases (awskms's new-key mode: REF/vN) name the KMS
	// keys; resolve each once, as the backend does.
	arns := map[int]string{}
	for _, v := range append(versionsOf(rows), to) {
		if _, ok := arns[v]; ok {
			continue
		}
		out, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(fmt.Sprintf("%s/v%d", e.ref, v))})
		if err != nil {
			return 0, fmt.Errorf("bench: raw ReEncrypt: describe version %d: %w", v, err)
		}
		arns[v] = aws.ToString(out.KeyMetadata.Arn)
	}
	ec := map[string]string{awskms.ContextKey: KeyName}
	return e.timedPool("raw rewrap", e.settings.Concurrency, len(rows), 1000, func(i int) error {
		_, err := api.ReEncrypt(ctx, &kms.ReEncryptInput{
			CiphertextBlob: rows[i].wrapped, SourceKeyId: aws.String(arns[rows[i].version]),
			DestinationKeyId: aws.String(arns[to]), SourceEncryptionContext: ec, DestinationEncryptionContext: ec,
		})
		if err != nil {
			return fmt.Errorf("bench: raw ReEncrypt of dek %s: %w", rows[i].id, err)
		}
		return nil
	})
}

// rawRewrapBefore is rawRewrap before the engine phase: every DEK
// re-encrypted under the KMS key of its own version (the rotation has not
// made the next one yet; ReEncrypt to the same key costs the endpoint the
// same).
func (e *runEnv) rawRewrapBefore(ctx context.Context) (float64, error) {
	db, d, err := e.db()
	if err != nil {
		return 0, fmt.Errorf("bench: open the store's database: %w", err)
	}
	defer db.Close()
	rows, err := loadRows(ctx, db, d)
	if err != nil {
		return 0, err
	}
	vs := versionsOf(rows)
	if len(vs) != 1 {
		return 0, fmt.Errorf("bench: raw ReEncrypt before the rotation: the DEKs are under %d versions, want one", len(vs))
	}
	return e.rawRewrap(ctx, rows, vs[0])
}

// versionsOf returns the distinct versions of rows.
func versionsOf(rows []row) []int {
	seen := map[int]bool{}
	var out []int
	for _, r := range rows {
		if !seen[r.version] {
			seen[r.version] = true
			out = append(out, r.version)
		}
	}
	return out
}

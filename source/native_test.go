package source_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/setup"
)

// awsEndpoint returns local-kms's endpoint (REKEY_TEST_AWSKMS_ENDPOINT):
// under CI a missing emulator fails the test, otherwise it skips naming
// the command that starts one.
func awsEndpoint(t *testing.T) string {
	t.Helper()
	ep := os.Getenv("REKEY_TEST_AWSKMS_ENDPOINT")
	if ep == "" {
		const how = "REKEY_TEST_AWSKMS_ENDPOINT is not set: start local-kms with `eval \"$(scripts/localkms start)\"` (stop it with `scripts/localkms stop`), or run scripts/test"
		if os.Getenv("CI") != "" || os.Getenv("REKEY_REQUIRE_PEERS") != "" {
			t.Fatal(how)
		}
		t.Skip(how)
	}
	if !strings.HasPrefix(ep, "http://127.0.0.1:") {
		t.Fatalf("REKEY_TEST_AWSKMS_ENDPOINT=%q: the tests only talk to an emulator on 127.0.0.1", ep)
	}
	return ep
}

// awsEnv gives the SDK's default chain (which rekey's awskms backend
// uses) the emulator's dummy credentials. t.Setenv: the test and its
// subtests cannot be parallel.
func awsEnv(t *testing.T) string {
	ep := awsEndpoint(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDREKEYNATIVE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "rekey-native-not-a-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	return ep
}

// nativeRig is rekey opened (setup.Open) with an awskms backend on
// local-kms and one aws-native DEK source, "orders", over an application
// table whose rows the application makes with the AWS SDK itself.
type nativeRig struct {
	a      *appDB
	sys    *setup.System
	api    *kms.Client // the application's own SDK client
	ref    string      // the key's main alias: what the application names
	ec     map[string]string
	offset atomic.Int64
	plain  map[int][32]byte // SHA-256 of each row's data key, as the application made it
}

func newNativeRig(t *testing.T, endpoint string, a *appDB, batch int, failpoints string) *nativeRig {
	t.Helper()
	ctx := context.Background()
	home := t.TempDir()
	r := &nativeRig{a: a, plain: map[int][32]byte{}, ec: map[string]string{"app": "orders", "purpose": "order-keys"}}
	now := func() time.Time { return time.Now().Add(time.Duration(r.offset.Load())) }
	noFailpoints := func(k string) string {
		if k == setup.EnvFailpoints {
			return ""
		}
		return os.Getenv(k)
	}
	sys, err := setup.Open(ctx, setup.Options{Home: home, Getenv: noFailpoints, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if err := sys.Close(); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(home, "rekey.yaml")
	y, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	prefix := "alias/rekey-native-" + strings.ToLower(rekey.NewID()) + "/"
	if !bytes.Contains(y, []byte("backends:\n")) {
		t.Fatalf("the default configuration has no backends section:\n%s", y)
	}
	y = bytes.Replace(y, []byte("backends:\n"), fmt.Appendf(nil, "backends:\n  aws:\n    type: awskms\n    region: us-east-1\n    endpoint: %s\n    alias_prefix: %s\n    deletion_window_days: 7\n", endpoint, prefix), 1)
	y = fmt.Appendf(y, `
dek_sources:
  - name: orders
    driver: %s
    dsn: %q
    table: %s
    id_column: id
    wrapped_column: wrapped_dek
    version_column: key_version
    key: payments
    where: %q
    format: aws-native
    encryption_context: {app: orders, purpose: order-keys}
`, a.driver, a.dsn, a.table, a.where)
	y = bytes.Replace(y, []byte("batch_size: 1000"), []byte("batch_size: "+strconv.Itoa(batch)), 1)
	if err := os.WriteFile(cfgPath, y, 0o600); err != nil {
		t.Fatal(err)
	}
	r.sys, err = setup.Open(ctx, setup.Options{ConfigPath: cfgPath, Now: now, Getenv: func(k string) string {
		if k == setup.EnvFailpoints {
			return failpoints
		}
		return os.Getenv(k)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.sys.Close() })
	k, err := r.sys.Keyring.CreateKey(ctx, "payments", "aws", rekey.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	r.ref = k.BackendRef
	r.api = kms.New(kms.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), Retryer: aws.NopRetryer{},
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIDREKEYAPP", SecretAccessKey: "app-not-a-secret"}, nil
		})})
	return r
}

// dataKey is the application's GenerateDataKey with the AWS SDK under
// keyID (the main alias, or an old version's alias it cached) and its
// encryption context ec.
func (r *nativeRig) dataKey(t testing.TB, id int, keyID string, ec map[string]string) []byte {
	t.Helper()
	out, err := r.api.GenerateDataKey(context.Background(), &kms.GenerateDataKeyInput{KeyId: aws.String(keyID), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	r.plain[id] = sha256.Sum256(out.Plaintext)
	clear(out.Plaintext)
	return out.CiphertextBlob
}

// insert writes row id as the application does: its blob, and a version
// column it leaves NULL (version nil) or sets to a number of its own.
func (r *nativeRig) insert(t testing.TB, id int, blob []byte, version any, deleted bool) {
	t.Helper()
	a := r.a
	del := 0
	if deleted {
		del = 1
	}
	a.exec(t, fmt.Sprintf("INSERT INTO %s (id, tenant, wrapped_dek, key_version, note, deleted) VALUES (?,?,?,?,?,?)", a.table),
		id, "tenant-"+strconv.Itoa(id%7), blob, version, "note "+strconv.Itoa(id), del)
}

// fill inserts ids 1..n made with the SDK under the main alias: most
// with a NULL version, every fifth with version 1 (an application that
// knows it), every seventh with a stale 9; every tenth is deleted
// (outside the filter).
func (r *nativeRig) fill(t testing.TB, n int) {
	t.Helper()
	for id := 1; id <= n; id++ {
		var v any
		switch {
		case id%7 == 0:
			v = 9
		case id%5 == 0:
			v = 1
		}
		r.insert(t, id, r.dataKey(t, id, r.ref, r.ec), v, id%10 == 0)
	}
}

// versionARN is the ARN of the KMS key of version v (behind its alias).
func (r *nativeRig) versionARN(t testing.TB, v int) string {
	t.Helper()
	out, err := r.api.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(r.ref + "/v" + strconv.Itoa(v))})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.KeyMetadata.Arn)
}

// verify checks every included row but skip with the application's own
// SDK Decrypt: same data key, under version want's KMS key, and the
// version column says want.
func (r *nativeRig) verify(t testing.TB, want int, skip ...int) {
	t.Helper()
	arn := r.versionARN(t, want)
	rows, err := r.a.db.Query("SELECT id, wrapped_dek, key_version FROM " + r.a.table + " WHERE " + r.a.where + " ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n, bad := 0, 0
	for rows.Next() {
		var (
			id      int
			blob    []byte
			version sql.NullInt64
		)
		if err := rows.Scan(&id, &blob, &version); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(skip, id) {
			continue
		}
		n++
		out, err := r.api.Decrypt(context.Background(), &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: r.ec})
		switch {
		case err != nil:
			bad++
			if bad < 5 {
				t.Errorf("row %d: the application's SDK Decrypt fails: %v", id, err)
			}
		case aws.ToString(out.KeyId) != arn || version.Int64 != int64(want):
			bad++
			if bad < 5 {
				t.Errorf("row %d: under %s with version column %v; want version %d's key %s", id, aws.ToString(out.KeyId), version, want, arn)
			}
		case sha256.Sum256(out.Plaintext) != r.plain[id]:
			bad++
			if bad < 5 {
				t.Errorf("row %d: decrypts to another data key than the application made", id)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if bad > 0 || n == 0 {
		t.Fatalf("%d of %d included rows wrong", bad, n)
	}
}

func (r *nativeRig) row(t testing.TB, id int) ([]byte, sql.NullInt64) {
	t.Helper()
	var (
		w []byte
		v sql.NullInt64
	)
	if err := r.a.db.QueryRow("SELECT wrapped_dek, key_version FROM "+r.a.table+" WHERE id = ?", id).Scan(&w, &v); err != nil {
		t.Fatal(err)
	}
	return w, v
}

func (r *nativeRig) versionState(t testing.TB, v int) rekey.VersionState {
	t.Helper()
	vs, err := r.sys.Store.ListVersions(context.Background(), "payments")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range vs {
		if kv.Version == v {
			return kv.State
		}
	}
	t.Fatalf("no version %d", v)
	return ""
}

// TestRotateAWSNative is issue 11's must-hold for awskms: rows made by the
// AWS SDK's GenerateDataKey directly (the key's main alias, the
// application's encryption context, a version column the application
// leaves NULL or fills with its own stale numbers) are rotated by
// ReEncrypt and still decrypt with the AWS SDK afterwards, under the new
// version's KMS key. A row under a KMS key that is no version of the key,
// and a corrupt row, are named by source and id and never written; while
// a row's version is unknown, no old version retires. Late rows under the
// old version (an application that cached its alias) are re-wrapped by
// the retirement sweep.
func TestRotateAWSNative(t *testing.T) {
	endpoint := awsEnv(t)
	ctx := context.Background()
	const n = 600
	a := newSQLite(t)
	r := newNativeRig(t, endpoint, a, 100, "")
	r.fill(t, n)

	// A row under a KMS key rekey does not manage, and a corrupt one.
	other, err := r.api.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("the application's own, not rekey's")})
	if err != nil {
		t.Fatal(err)
	}
	const foreign, corrupt = n + 1, n + 2
	foreignBlob := r.dataKey(t, foreign, aws.ToString(other.KeyMetadata.Arn), r.ec)
	r.insert(t, foreign, foreignBlob, nil, false)
	corruptBlob := r.dataKey(t, corrupt, r.ref, r.ec)
	corruptBlob[len(corruptBlob)-2] ^= 0x11
	r.insert(t, corrupt, corruptBlob, nil, false)
	before := a.snapshot(t)

	counts := r.sys.Engine.SourceCounts(ctx, "payments")
	if len(counts) != 1 || counts[0].Error != "" || counts[0].Versions[0] == 0 {
		t.Fatalf("source counts before the rotation = %+v; want the NULL rows under version 0", counts)
	}

	rot, err := r.sys.Engine.Rotate(ctx, "payments", rekey.ReasonManual, "test")
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if rot.State != rekey.RotationDone || rot.ToVersion != 2 {
		t.Fatalf("rotation ended %s on version %d", rot.State, rot.ToVersion)
	}
	for _, id := range []int{foreign, corrupt} {
		if !slices.Contains(rot.FailedDEKs, "orders/"+strconv.Itoa(id)) {
			t.Errorf("rotation's failed DEKs %v do not name orders/%d", rot.FailedDEKs, id)
		}
	}
	if rot.Failed != 2 {
		t.Errorf("rotation failed %d rows, want 2 (the foreign and the corrupt one)", rot.Failed)
	}
	r.verify(t, 2, foreign, corrupt)
	if after := a.snapshot(t); after != before {
		t.Fatal("excluded rows or other columns changed")
	}
	for id, want := range map[int][]byte{foreign: foreignBlob, corrupt: corruptBlob} {
		if w, v := r.row(t, id); !bytes.Equal(w, want) || v.Valid {
			t.Errorf("row %d was written (version %v)", id, v)
		}
	}
	if c, err := r.sys.Store.CountDEKs(ctx, "payments"); err != nil || len(c) != 0 {
		t.Errorf("rekey's store holds DEKs of the source: %v, %v", c, err)
	}
	// One KMS call per row and pass: a ReEncrypt for each row re-wrapped,
	// and for each of the two refused rows in the re-wrap pass and again
	// in the final sweep after commit (kmsmw counts them under op rewrap).
	rec := httptest.NewRecorder()
	r.sys.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for result, want := range map[string]int64{"success": rot.Done, "failure": 4} {
		line := fmt.Sprintf(`rekey_kms_requests_total{backend="aws",op="rewrap",result=%q} %d`, result, want)
		if !strings.Contains(rec.Body.String(), line+"\n") {
			t.Errorf("/metrics lacks %s:\n%s", line, grepLines(rec.Body.String(), "rekey_kms_requests_total"))
		}
	}

	// Late writes of an application that cached version 1's alias: a new
	// row, and an update of a row rekey re-wrapped, version set to NULL
	// with the new bytes (as the README asks).
	const late = n + 3
	r.insert(t, late, r.dataKey(t, late, r.ref+"/v1", r.ec), nil, false)
	a.exec(t, "UPDATE "+a.table+" SET wrapped_dek = ?, key_version = NULL WHERE id = 3", r.dataKey(t, 3, r.ref+"/v1", r.ec))

	// Unknown rows keep version 1 from retiring, by hand too.
	var inUse *rekey.VersionInUseError
	if err := r.sys.Engine.Retire(ctx, "payments", 1); !errors.As(err, &inUse) || inUse.DEKs < 4 {
		t.Fatalf("retire version 1 with 4 rows of unknown version: %v; want VersionInUseError counting them", err)
	}
	a.exec(t, "DELETE FROM "+a.table+" WHERE id = ?", corrupt)
	r.offset.Store(int64(8 * 24 * time.Hour))
	rep := r.sys.Engine.RunCycle(ctx)
	if st := r.versionState(t, 1); st != rekey.VersionPendingRetirement {
		t.Fatalf("version 1 is %s while the foreign row's version is unknown; report %+v", st, rep)
	}
	r.verify(t, 2, foreign) // the sweep re-wrapped the late rows

	// The application deletes the foreign row: version 1 retires (its KMS
	// key disabled) and every row still decrypts with the SDK.
	a.exec(t, "DELETE FROM "+a.table+" WHERE id = ?", foreign)
	rep = r.sys.Engine.RunCycle(ctx)
	if st := r.versionState(t, 1); st != rekey.VersionRetired {
		t.Fatalf("version 1 is %s once every row is known; report %+v", st, rep)
	}
	md, err := r.api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(r.versionARN(t, 1))})
	if err != nil || md.KeyMetadata.Enabled {
		t.Fatalf("version 1's KMS key is still enabled (%v)", err)
	}
	r.verify(t, 2)
}

// TestAWSNativeFailpoints: the failpoints of a source re-wrap (as errors
// in process: every step is persisted before its point, so a crash leaves
// the same state) on an aws-native source: the next cycle resumes the
// same rotation, every row ends under version 2's KMS key with its own
// data key (the SDK decrypts it), and the backend has exactly one new
// version.
func TestAWSNativeFailpoints(t *testing.T) {
	endpoint := awsEnv(t)
	for _, fp := range []string{
		"rewrap.after_backend=error@3",
		"rewrap.after_batch_commit=error@2",
		"rotation.before_commit=error",
		"rotation.after_commit=error",
	} {
		t.Run(fp, func(t *testing.T) {
			ctx := context.Background()
			r := newNativeRig(t, endpoint, newSQLite(t), 50, fp)
			r.fill(t, 300)
			first, err := r.sys.Engine.Rotate(ctx, "payments", rekey.ReasonManual, "test")
			if err == nil || first.ID == "" {
				t.Fatalf("rotate with %s: %v (rotation %q); want the injected failure in a recorded rotation", fp, err, first.ID)
			}
			// The application keeps writing meanwhile, with the main alias.
			for id := 301; id <= 320; id++ {
				r.insert(t, id, r.dataKey(t, id, r.ref, r.ec), nil, false)
			}
			rep := r.sys.Engine.RunCycle(ctx)
			rot, err := r.sys.Store.GetRotation(ctx, first.ID)
			if err != nil {
				t.Fatal(err)
			}
			if rot.ToVersion != 2 || rot.State != rekey.RotationDone {
				t.Fatalf("rotation %s ended %s on version %d; cycle %+v", rot.ID, rot.State, rot.ToVersion, rep)
			}
			if v, err := r.sys.Backends["aws"].CurrentVersion(ctx, r.ref); err != nil || v != 2 {
				t.Errorf("backend is at version %d (%v): want exactly one new version", v, err)
			}
			r.verify(t, 2)
		})
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

package rekeysecrets_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"

	"github.com/rekeyhq/rekey"
	_ "github.com/rekeyhq/rekey/rekeysecrets"
	"github.com/rekeyhq/rekey/setup"
)

// clearEnv empties every REKEY_* variable setup.Open reads: the default
// URL opener reads the real environment, which must not leak into tests.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, v := range []string{setup.EnvConfig, setup.EnvHome, setup.EnvMasterKey, setup.EnvWorkerID, setup.EnvFailpoints} {
		t.Setenv(v, "")
	}
}

// TestOpenKeeperURL goes through go-cloud's default URL mux, as an
// application does after the blank import.
func TestOpenKeeperURL(t *testing.T) {
	clearEnv(t)
	ctx := context.Background()
	home := t.TempDir()
	sys, err := setup.Open(ctx, setup.Options{Home: home})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"payments", "billing"} {
		if _, err := sys.Keyring.CreateKey(ctx, n, "local", rekey.DefaultPolicy()); err != nil {
			t.Fatal(err)
		}
	}
	if err := sys.Close(); err != nil {
		t.Fatal(err)
	}
	q := "?home=" + url.QueryEscape(home)

	payments, err := secrets.OpenKeeper(ctx, "rekey://payments"+q)
	if err != nil {
		t.Fatalf("OpenKeeper: %v", err)
	}
	defer payments.Close()
	ct, err := payments.Encrypt(ctx, []byte("the secret"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(ct), "the secret") {
		t.Fatalf("the ciphertext holds the plaintext: %q", ct)
	}
	if pt, err := payments.Decrypt(ctx, ct); err != nil || string(pt) != "the secret" {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}

	billing, err := secrets.OpenKeeper(ctx, "rekey://billing"+q)
	if err != nil {
		t.Fatalf("OpenKeeper: %v", err)
	}
	defer billing.Close()
	_, err = billing.Decrypt(ctx, ct)
	if gcerrors.Code(err) != gcerrors.InvalidArgument || !errors.Is(err, rekey.ErrWrongKey) {
		t.Errorf("billing's keeper on payments' ciphertext: code %v, err %v; want InvalidArgument, ErrWrongKey", gcerrors.Code(err), err)
	}

	for _, tc := range []struct{ url, want string }{
		{"rekey://nosuch" + q, `"nosuch": key not found`},
		{"rekey://payments" + q + "&timeout=5s", `unknown query parameter(s) ["timeout"]`},
	} {
		k, err := secrets.OpenKeeper(ctx, tc.url)
		if err == nil {
			k.Close()
			t.Errorf("OpenKeeper(%s): no error", tc.url)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OpenKeeper(%s) = %q, want it to contain %q", tc.url, err, tc.want)
		}
	}
}

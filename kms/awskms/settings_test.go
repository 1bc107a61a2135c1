package awskms_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey/kms/awskms"
)

func TestSettingsValidate(t *testing.T) {
	t.Parallel()
	neg, two := -1.0, 200.0
	cases := []struct {
		s     awskms.Settings
		field string // "" = valid
		msg   string
	}{
		{awskms.Settings{}, "", ""},
		{awskms.Settings{Region: "eu-west-1", Mode: awskms.ModeOnDemand, DeletionWindowDays: 7, RateLimitRPS: &two, Endpoint: "http://127.0.0.1:4566"}, "", ""},
		{awskms.Settings{DeletionWindowDays: 3}, "deletion_window_days", "shorter than AWS allows"},
		{awskms.Settings{DeletionWindowDays: 31}, "deletion_window_days", "outside 7..30"},
		{awskms.Settings{Mode: "sometimes"}, "mode", "unknown mode"},
		{awskms.Settings{AliasPrefix: "alias/aws/x/"}, "alias_prefix", "reserved for AWS"},
		{awskms.Settings{AliasPrefix: "rekey/"}, "alias_prefix", "starts with alias/"},
		{awskms.Settings{AliasPrefix: "alias/rekey"}, "alias_prefix", "does not end"},
		{awskms.Settings{Region: "Mars"}, "region", "not an AWS region"},
		{awskms.Settings{Endpoint: "127.0.0.1:4566"}, "endpoint", "not an endpoint URL"},
		{awskms.Settings{RateLimitRPS: &neg}, "rate_limit", "negative"},
		{awskms.Settings{RoleARN: "rekey"}, "role_arn", "not an IAM role ARN"},
	}
	for _, c := range cases {
		err := c.s.Validate()
		if c.field == "" {
			if err != nil {
				t.Errorf("%+v: %v, want valid", c.s, err)
			}
			continue
		}
		var se *awskms.SettingsError
		if !errors.As(err, &se) || se.FieldName() != c.field || !strings.Contains(se.Reason(), c.msg) {
			t.Errorf("%+v: %v, want a problem with %s saying %q", c.s, err, c.field, c.msg)
		}
	}
}

func TestSettingsRateLimit(t *testing.T) {
	t.Parallel()
	if rps, explicit := (&awskms.Settings{}).RateLimit(); rps != awskms.DefaultRateLimit || explicit || rps > 10000/5 {
		t.Errorf("default rate limit = %v (explicit %v), want %v, well under AWS's 10,000/s", rps, explicit, awskms.DefaultRateLimit)
	}
	r := 200.0
	if rps, explicit := (&awskms.Settings{RateLimitRPS: &r}).RateLimit(); rps != 200 || !explicit {
		t.Errorf("rate_limit 200 = %v (explicit %v), want 200, explicit", rps, explicit)
	}
}

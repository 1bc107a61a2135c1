package awskms

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Modes: how a rekey key maps to AWS KMS keys.
const (
	// ModeNewKey (the default) makes one KMS key per rekey version, found
	// through the aliases ALIAS_PREFIX+NAME+"/vN"; the alias
	// ALIAS_PREFIX+NAME points at the newest. Versions can be retired
	// (DisableKey) and destroyed (ScheduleKeyDeletion) one by one.
	ModeNewKey = "new-key"
	// ModeOnDemand keeps one KMS key per rekey key and rotates it with
	// RotateKeyOnDemand (at most MaxOnDemandRotations times per key).
	// Versions cannot be retired one by one.
	ModeOnDemand = "on-demand"
)

// Defaults of Settings.
const (
	DefaultAliasPrefix        = "alias/rekey/"
	DefaultDeletionWindowDays = 30
	// DefaultRateLimit is the request rate (per second) a backend gets when
	// neither rate_limit nor worker.kms_rate_limit is set: a tenth of AWS's
	// 10,000 symmetric cryptographic requests per second per account and
	// region, a quota the applications share with rekey.
	DefaultRateLimit = 1000.0
	// MinDeletionWindowDays and MaxDeletionWindowDays bound the waiting
	// period of ScheduleKeyDeletion (AWS refuses others).
	MinDeletionWindowDays = 7
	MaxDeletionWindowDays = 30
)

// Settings are the awskms backend's settings in a configuration file
// (backends.NAME with type: awskms). Credentials are never settings: they
// come from the AWS SDK's default chain (environment, shared files, IMDS,
// web identity), and RoleARN names a role to assume with them.
type Settings struct {
	// Region is the AWS region (YAML: region). Empty: the SDK's default
	// (AWS_REGION, the shared config file).
	Region string `yaml:"region,omitempty" json:"region,omitempty"`
	// Endpoint overrides the KMS endpoint (YAML: endpoint), e.g. a VPC
	// endpoint or the local-kms emulator: http(s)://host[:port].
	Endpoint string `yaml:"endpoint,omitempty" json:"endpoint,omitempty"`
	// Mode is ModeNewKey (default) or ModeOnDemand (YAML: mode).
	Mode string `yaml:"mode,omitempty" json:"mode,omitempty"`
	// AliasPrefix starts every alias rekey makes (YAML: alias_prefix),
	// default "alias/rekey/".
	AliasPrefix string `yaml:"alias_prefix,omitempty" json:"alias_prefix,omitempty"`
	// DeletionWindowDays is the waiting period of ScheduleKeyDeletion when
	// a version is destroyed (YAML: deletion_window_days), 7 to 30 days,
	// default 30. 0 means the default.
	DeletionWindowDays int `yaml:"deletion_window_days,omitempty" json:"deletion_window_days,omitempty"`
	// RateLimitRPS is the backend's own request rate (YAML: rate_limit),
	// requests per second; nil: worker.kms_rate_limit, else
	// DefaultRateLimit.
	RateLimitRPS *float64 `yaml:"rate_limit,omitempty" json:"rate_limit,omitempty"`
	// RoleARN is an IAM role to assume with the default chain's
	// credentials (YAML: role_arn), through STS. Empty: none.
	RoleARN string `yaml:"role_arn,omitempty" json:"role_arn,omitempty"`
}

// SettingsError is a problem with one field of Settings. Field is the
// field's YAML name; Message says what is wrong and how to fix it.
type SettingsError struct {
	Field   string
	Message string
}

// Error returns "FIELD: MESSAGE".
func (e *SettingsError) Error() string { return e.Field + ": " + e.Message }

// FieldName returns the YAML name of the field with the problem.
func (e *SettingsError) FieldName() string { return e.Field }

// Reason returns what is wrong with the field.
func (e *SettingsError) Reason() string { return e.Message }

var (
	aliasPrefixRE = regexp.MustCompile(`^alias/[a-zA-Z0-9/_-]*$`)
	regionRE      = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	roleARNRE     = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$`)
)

// Validate returns nil, or every problem with s joined (errors.Join), each
// a *SettingsError naming its field.
func (s *Settings) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &SettingsError{field, fmt.Sprintf(format, args...)})
	}
	if s.Region != "" && !regionRE.MatchString(s.Region) {
		add("region", "%q is not an AWS region: use a region code such as eu-west-1, or leave it empty for AWS_REGION", s.Region)
	}
	if s.Endpoint != "" {
		u, err := url.Parse(s.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil {
			add("endpoint", "%q is not an endpoint URL: use http(s)://host[:port] with no path, or leave it empty for AWS's own", s.Endpoint)
		}
	}
	switch s.Mode {
	case "", ModeNewKey, ModeOnDemand:
	default:
		add("mode", "unknown mode %q: use %s (one KMS key per version, retirable) or %s (RotateKeyOnDemand, at most %d rotations per key)",
			s.Mode, ModeNewKey, ModeOnDemand, MaxOnDemandRotations)
	}
	if p := s.AliasPrefix; p != "" {
		switch {
		case !aliasPrefixRE.MatchString(p):
			add("alias_prefix", "%q is not an alias prefix: it starts with alias/ and has only a-z, A-Z, 0-9, '/', '_', '-', e.g. %s", p, DefaultAliasPrefix)
		case strings.HasPrefix(p, "alias/aws/") || p == "alias/aws":
			add("alias_prefix", "%q: aliases under alias/aws/ are reserved for AWS: use e.g. %s", p, DefaultAliasPrefix)
		case !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") && !strings.HasSuffix(p, "_"):
			add("alias_prefix", "%q does not end in '/', '-' or '_': key names would run into it; use e.g. %s", p, DefaultAliasPrefix)
		}
	}
	if d := s.DeletionWindowDays; d != 0 && (d < MinDeletionWindowDays || d > MaxDeletionWindowDays) {
		if d < MinDeletionWindowDays && d > 0 {
			add("deletion_window_days", "%d days is shorter than AWS allows: a destroyed version's KMS key waits %d to %d days before deletion (a safety net to cancel it); use at least %d",
				d, MinDeletionWindowDays, MaxDeletionWindowDays, MinDeletionWindowDays)
		} else {
			add("deletion_window_days", "%d is outside %d..%d days (AWS's waiting period before a KMS key is deleted)", d, MinDeletionWindowDays, MaxDeletionWindowDays)
		}
	}
	if s.RateLimitRPS != nil && *s.RateLimitRPS < 0 {
		add("rate_limit", "%v is negative: use requests per second, e.g. %v, or 0 for no limit", *s.RateLimitRPS, DefaultRateLimit)
	}
	if s.RoleARN != "" && !roleARNRE.MatchString(s.RoleARN) {
		add("role_arn", "%q is not an IAM role ARN: use arn:aws:iam::ACCOUNT:role/NAME", s.RoleARN)
	}
	return errors.Join(errs...)
}

// RateLimit implements config.RateLimitSettings: rate_limit when set
// (explicit), else DefaultRateLimit.
func (s *Settings) RateLimit() (rps float64, explicit bool) {
	if s.RateLimitRPS != nil {
		return *s.RateLimitRPS, true
	}
	return DefaultRateLimit, false
}

// Config returns the backend Config these settings describe, with the
// defaults filled in.
func (s *Settings) Config() Config {
	c := Config{
		Region: s.Region, Endpoint: s.Endpoint, Mode: s.Mode, AliasPrefix: s.AliasPrefix,
		DeletionWindowDays: s.DeletionWindowDays, RoleARN: s.RoleARN,
	}
	return c
}

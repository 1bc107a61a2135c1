package keyprotect

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
)

// DefaultRateLimit is the request rate (per second) applied to a
// keyprotect backend when neither its rate_limit nor
// worker.kms_rate_limit is set. IBM does not publish a per-instance
// request quota for Key Protect in the references this build follows; the
// default is kept low so that a rotation of millions of DEKs never
// crowds out the applications that share the instance (429 answers are
// retried, but slowly). Raise it with rate_limit once you know your
// instance's headroom.
const DefaultRateLimit = 50

// DefaultIAMEndpoint is IBM Cloud's IAM service, where the API key is
// exchanged for a bearer token.
const DefaultIAMEndpoint = "https://iam.cloud.ibm.com"

// DefaultAPIKeyEnv is the environment variable that holds the IBM Cloud
// API key when neither api_key_env nor api_key_file is set.
const DefaultAPIKeyEnv = "IBMCLOUD_API_KEY"

// Settings are the keyprotect backend's settings in a configuration file
// (backends.NAME with type: keyprotect). The API key itself is never a
// setting: it comes from the environment variable api_key_env names
// (default IBMCLOUD_API_KEY) or from the file api_key_file (mode 0600).
//
//	backends:
//	  kp: {type: keyprotect, instance_id: 0d5a…, region: us-south}
type Settings struct {
	// InstanceID is the Key Protect service instance (GUID), sent as the
	// bluemix-instance header (YAML: instance_id). Required.
	InstanceID string `yaml:"instance_id" json:"instance_id"`
	// Region is the instance's region, e.g. us-south (YAML: region): the
	// endpoint is then https://REGION.kms.cloud.ibm.com. Set region or
	// endpoint.
	Region string `yaml:"region,omitempty" json:"region,omitempty"`
	// Endpoint is the service's base URL (YAML: endpoint), e.g. a private
	// endpoint https://private.us-south.kms.cloud.ibm.com. It wins over
	// region.
	Endpoint string `yaml:"endpoint,omitempty" json:"endpoint,omitempty"`
	// IAMEndpoint is the IAM service's base URL (YAML: iam_endpoint);
	// default DefaultIAMEndpoint.
	IAMEndpoint string `yaml:"iam_endpoint,omitempty" json:"iam_endpoint,omitempty"`
	// APIKeyEnv names the environment variable holding the API key (YAML:
	// api_key_env); default DefaultAPIKeyEnv. Not the key itself.
	APIKeyEnv string `yaml:"api_key_env,omitempty" json:"api_key_env,omitempty"`
	// APIKeyFile is a file holding the API key (YAML: api_key_file), which
	// must not be readable by group or others. It wins over api_key_env.
	APIKeyFile string `yaml:"api_key_file,omitempty" json:"api_key_file,omitempty"`
	// RateLimitRPS is this backend's request rate per second (YAML:
	// rate_limit); nil means worker.kms_rate_limit, else DefaultRateLimit.
	RateLimitRPS *float64 `yaml:"rate_limit,omitempty" json:"rate_limit,omitempty"`
}

// SettingsError is a problem with one field of Settings. Field is the
// field's YAML name; Message says what is wrong and how to fix it, and
// never repeats a value (an endpoint may carry credentials).
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
	regionRE = regexp.MustCompile(`^[a-z]{2,}(-[a-z0-9]+)+$`)
	envRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Validate returns nil, or every problem with s joined (errors.Join), each
// a *SettingsError naming its field: a missing instance_id, neither region
// nor endpoint, an endpoint or iam_endpoint that is not an http(s) URL
// without credentials, a malformed api_key_env, a negative rate_limit.
func (s *Settings) Validate() error {
	var errs []error
	add := func(field, msg string) { errs = append(errs, &SettingsError{field, msg}) }
	if strings.TrimSpace(s.InstanceID) == "" {
		add("instance_id", "missing: set instance_id to the Key Protect instance's GUID (ibmcloud resource service-instance NAME --id)")
	} else if strings.ContainsAny(s.InstanceID, " \t\r\n/") {
		add("instance_id", "not a service instance GUID: use the GUID only, not the CRN or a path")
	}
	switch {
	case s.Endpoint == "" && s.Region == "":
		add("region", "missing: set region (e.g. us-south) or endpoint")
	case s.Endpoint == "" && !regionRE.MatchString(s.Region):
		add("region", "not a region name: use one like us-south or eu-de")
	}
	if s.Endpoint != "" {
		if msg := urlProblem(s.Endpoint); msg != "" {
			add("endpoint", msg)
		}
	}
	if s.IAMEndpoint != "" {
		if msg := urlProblem(s.IAMEndpoint); msg != "" {
			add("iam_endpoint", msg)
		}
	}
	if s.APIKeyEnv != "" && !envRE.MatchString(s.APIKeyEnv) {
		add("api_key_env", "not an environment variable name: name the variable that holds the API key (e.g. IBMCLOUD_API_KEY), never the key itself")
	}
	if s.RateLimitRPS != nil && (*s.RateLimitRPS < 0 || math.IsNaN(*s.RateLimitRPS) || math.IsInf(*s.RateLimitRPS, 0)) {
		add("rate_limit", "must be a number of requests per second from 0 (no limit)")
	}
	return errors.Join(errs...)
}

// urlProblem says what is wrong with a base URL, without repeating it.
func urlProblem(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Host == "":
		return "not a URL: use https://HOST"
	case u.Scheme != "https" && u.Scheme != "http":
		return "not an http(s) URL: use https://HOST"
	case u.User != nil:
		return "carries credentials: remove them (the API key comes from api_key_env or api_key_file)"
	case u.RawQuery != "" || u.Fragment != "":
		return "has a query or fragment: use the base URL only"
	}
	return ""
}

// ResolvePaths makes a relative api_key_file relative to dir, the
// directory of the configuration file.
func (s *Settings) ResolvePaths(dir string) {
	if s.APIKeyFile != "" && dir != "" && !filepath.IsAbs(s.APIKeyFile) {
		s.APIKeyFile = filepath.Join(dir, s.APIKeyFile)
	}
}

// RateLimit implements config.RateLimitSettings: rate_limit when set,
// else DefaultRateLimit (not explicit).
func (s *Settings) RateLimit() (float64, bool) {
	if s.RateLimitRPS != nil {
		return *s.RateLimitRPS, true
	}
	return DefaultRateLimit, false
}

// BaseURL returns the service's base URL: endpoint, else
// https://REGION.kms.cloud.ibm.com.
func (s *Settings) BaseURL() string {
	if s.Endpoint != "" {
		return strings.TrimRight(s.Endpoint, "/")
	}
	return fmt.Sprintf("https://%s.kms.cloud.ibm.com", s.Region)
}

// IAMURL returns the IAM base URL: iam_endpoint, else DefaultIAMEndpoint.
func (s *Settings) IAMURL() string {
	if s.IAMEndpoint != "" {
		return strings.TrimRight(s.IAMEndpoint, "/")
	}
	return DefaultIAMEndpoint
}

// APIKeyVar returns the environment variable that holds the API key:
// api_key_env, else DefaultAPIKeyEnv.
func (s *Settings) APIKeyVar() string {
	if s.APIKeyEnv != "" {
		return s.APIKeyEnv
	}
	return DefaultAPIKeyEnv
}

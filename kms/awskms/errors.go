package awskms

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/rekeyhq/rekey"
)

// ErrThrottled is matched (errors.Is) by the error of a request AWS KMS
// refused for its rate (ThrottlingException, HTTP 429). Such an error is
// also an *rekey.UnreachableError: transient, retried by kmsmw.
// It also matches rekey.ErrThrottled, which kmsmw's adaptive rate reacts
// to.
var ErrThrottled error = throttledError{"throttled by AWS KMS: request rate above the account's quota (lower the backend's rate_limit)"}

// throttledError is ErrThrottled's type: it matches rekey.ErrThrottled too.
type throttledError struct{ msg string }

func (e throttledError) Error() string        { return e.msg }
func (e throttledError) Is(target error) bool { return target == rekey.ErrThrottled }

// apiCode returns the AWS error code of err ("" when err is no API
// error).
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func errMessage(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorMessage()
	}
	return ""
}

func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// mapErr is the one place an AWS error becomes a rekey error. what says
// what was being done ("wrap under alias/rekey/k version 2"). The codes of
// local-kms that differ from AWS's (AccessDeniedException for a disabled
// key or one pending deletion) are the caller's (decryptErr) where they
// matter; here AccessDeniedException is a permission problem.
func (k *Client) mapErr(err error, what string) error {
	if err == nil {
		return nil
	}
	code, status := apiCode(err), httpStatus(err)
	wrapf := func(target error, hint string) error {
		if hint != "" {
			hint = ": " + hint
		}
		return fmt.Errorf("awskms backend %s: %s: %s%s: %w", k.name, what, describeErr(err), hint, target)
	}
	transient := func(extra error) error {
		e := fmt.Errorf("awskms backend %s: %s: %s", k.name, what, describeErr(err))
		if extra != nil {
			e = fmt.Errorf("%w: %w", e, extra)
		}
		return &rekey.UnreachableError{Service: k.service, Err: fmt.Errorf("%w (%w)", e, err)}
	}
	switch {
	case code == "ThrottlingException" || code == "TooManyRequestsException" || status == http.StatusTooManyRequests:
		return transient(ErrThrottled)
	case code == "NotFoundException":
		return wrapf(rekey.ErrKeyNotFound, "")
	case code == "DisabledException" || code == "KMSInvalidStateException":
		return wrapf(rekey.ErrVersionDisabled, "")
	case code == "InvalidCiphertextException":
		return wrapf(rekey.ErrInvalidCiphertext, "")
	case code == "IncorrectKeyException":
		return wrapf(rekey.ErrWrongVersion, "")
	case code == "LimitExceededException":
		return wrapf(rekey.ErrUsageLimit, "an AWS KMS resource limit (keys, aliases or rotations per account) was reached: ask AWS for more or delete unused keys")
	case code == "AccessDeniedException" || code == "UnrecognizedClientException" || code == "InvalidSignatureException" || code == "ExpiredTokenException":
		return fmt.Errorf("awskms backend %s: %s: %s: check the credentials of the SDK's default chain (environment, shared files, instance role) and the IAM policy (README: AWS KMS permissions)",
			k.name, what, describeErr(err))
	case status == http.StatusNotImplemented:
		return wrapf(rekey.ErrUnsupported, "the endpoint does not implement this operation (local-kms lacks RotateKeyOnDemand and ListKeyRotations): mode "+ModeOnDemand+" needs AWS KMS itself; use mode "+ModeNewKey)
	case code == "KMSInternalException" || code == "DependencyTimeoutException" || code == "InternalFailureException" || code == "ServiceUnavailableException" || status >= 500:
		return transient(nil)
	case code == "ValidationException" || code == "InvalidKeyUsageException" || code == "UnsupportedOperationException":
		return wrapf(rekey.ErrInvalidArgument, "")
	}
	var se *smithyhttp.RequestSendError
	if errors.As(err, &se) {
		return transient(nil)
	}
	return fmt.Errorf("awskms backend %s: %s: %w", k.name, what, err)
}

// describeErr is a short, secret-free description of an AWS error: its
// code and message, or the error itself.
func describeErr(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		if m := ae.ErrorMessage(); m != "" {
			return ae.ErrorCode() + ": " + m
		}
		return ae.ErrorCode()
	}
	if s := httpStatus(err); s != 0 {
		return fmt.Sprintf("HTTP %d", s)
	}
	return err.Error()
}

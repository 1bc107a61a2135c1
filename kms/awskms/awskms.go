// Package awskms is the rekey backend for AWS KMS (aws-sdk-go-v2,
// service/kms).
//
// Two modes (Config.Mode):
//
//   - new-key (default): one symmetric KMS key per rekey version. Version N
//     of the rekey key NAME is the KMS key behind the alias
//     ALIAS_PREFIX+NAME+"/vN"; the alias ALIAS_PREFIX+NAME points at the
//     newest version, for applications that call GenerateDataKey
//     themselves. The aliases are the whole state: nothing is kept outside
//     KMS. Retire = DisableKey; destroy = ScheduleKeyDeletion with a
//     waiting period of 7 to 30 days.
//   - on-demand: one KMS key per rekey key (alias ALIAS_PREFIX+NAME),
//     rotated with RotateKeyOnDemand. Its version is 1 + the number of
//     rotations ListKeyRotations reports; AWS allows at most
//     MaxOnDemandRotations on-demand rotations per key, after which
//     RotateKey fails with rekey.ErrUsageLimit. KMS picks the key material
//     itself (the newest to encrypt, the right one to decrypt), so a
//     version cannot be retired alone: the backend is no
//     rekey.VersionRetirer (Capabilities says so), and Wrap and Unwrap do
//     not check the version number.
//
// The wrapped bytes are KMS's own CiphertextBlob, encrypted with the
// encryption context {"rekey:key": NAME}. Re-wrap is ReEncrypt: the
// plaintext DEK never leaves KMS. Data keys an application made itself
// with the AWS SDK (any encryption context, no version known) are
// re-wrapped by RewrapNative (rekey.NativeRewrapper), which finds their
// version from the KMS key ReEncrypt reports (DEK sources with format
// aws-native).
//
// Credentials come from the SDK's default chain only (environment, shared
// files, web identity, IMDS), optionally exchanged for a role
// (Config.RoleARN). The SDK's own retryer is off (one attempt): retries,
// rate limits and metrics are kmsmw's. Throttling (ThrottlingException,
// HTTP 429) and server-side failures are *rekey.UnreachableError; a
// throttled call's error also matches ErrThrottled.
package awskms

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/rekeyhq/rekey"
)

// MaxOnDemandRotations is AWS's limit of RotateKeyOnDemand calls per KMS
// key.
const MaxOnDemandRotations = 10

// maxPlaintext and maxCiphertext are KMS's limits for Encrypt's plaintext
// and a CiphertextBlob.
const (
	maxPlaintext  = 4096
	maxCiphertext = 6144
)

// ContextKey is the encryption-context key that binds a wrap to its rekey
// key name.
const ContextKey = "rekey:key"

// API is the part of the KMS client the backend uses (*kms.Client
// implements it); tests may put a fault-injecting wrapper around it.
type API interface {
	CreateKey(context.Context, *kms.CreateKeyInput, ...func(*kms.Options)) (*kms.CreateKeyOutput, error)
	CreateAlias(context.Context, *kms.CreateAliasInput, ...func(*kms.Options)) (*kms.CreateAliasOutput, error)
	UpdateAlias(context.Context, *kms.UpdateAliasInput, ...func(*kms.Options)) (*kms.UpdateAliasOutput, error)
	DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
	Encrypt(context.Context, *kms.EncryptInput, ...func(*kms.Options)) (*kms.EncryptOutput, error)
	Decrypt(context.Context, *kms.DecryptInput, ...func(*kms.Options)) (*kms.DecryptOutput, error)
	ReEncrypt(context.Context, *kms.ReEncryptInput, ...func(*kms.Options)) (*kms.ReEncryptOutput, error)
	DisableKey(context.Context, *kms.DisableKeyInput, ...func(*kms.Options)) (*kms.DisableKeyOutput, error)
	ScheduleKeyDeletion(context.Context, *kms.ScheduleKeyDeletionInput, ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error)
	RotateKeyOnDemand(context.Context, *kms.RotateKeyOnDemandInput, ...func(*kms.Options)) (*kms.RotateKeyOnDemandOutput, error)
	ListKeyRotations(context.Context, *kms.ListKeyRotationsInput, ...func(*kms.Options)) (*kms.ListKeyRotationsOutput, error)
	GenerateMac(context.Context, *kms.GenerateMacInput, ...func(*kms.Options)) (*kms.GenerateMacOutput, error)
	ListKeys(context.Context, *kms.ListKeysInput, ...func(*kms.Options)) (*kms.ListKeysOutput, error)
}

var _ API = (*kms.Client)(nil)

// Config configures New. Credentials are not part of it: the SDK's default
// chain provides them (Credentials overrides it for programs and tests
// that hold their own provider).
type Config struct {
	// Name is the backend's name in the configuration (error context and
	// the Service of *rekey.UnreachableError: "kms:"+Name). Default
	// "awskms".
	Name string
	// Region is the AWS region; empty: the SDK's default (AWS_REGION, the
	// shared config file).
	Region string
	// Endpoint overrides the KMS endpoint (local-kms, a VPC endpoint).
	Endpoint string
	// Mode is ModeNewKey (default when empty) or ModeOnDemand.
	Mode string
	// AliasPrefix starts every alias (default DefaultAliasPrefix).
	AliasPrefix string
	// DeletionWindowDays is ScheduleKeyDeletion's waiting period, 7 to 30
	// (default 30).
	DeletionWindowDays int
	// RoleARN, when set, is a role assumed through STS with the default
	// chain's credentials.
	RoleARN string
	// Credentials replaces the SDK's default credential chain; nil: the
	// default chain. Never filled from a configuration file.
	Credentials aws.CredentialsProvider
	// Client replaces the KMS client New would build (tests); the fields
	// above but Mode, AliasPrefix and DeletionWindowDays are then unused.
	Client API
	// Logger receives warnings and the deletion dates of destroyed
	// versions; nil discards.
	Logger *slog.Logger
}

// Client is the AWS KMS backend. It implements rekey.KMS, rekey.Rewrapper,
// rekey.Pinger, rekey.MACer and (in new-key mode) rekey.VersionRetirer;
// Capabilities says which. It is safe for concurrent use.
type Client struct {
	api     API
	name    string
	service string
	mode    string
	prefix  string
	window  int32
	log     *slog.Logger

	mu   sync.Mutex
	arns map[string]string // alias name -> key ARN, for aliases that never move (version aliases, on-demand keys, the MAC key)

	// aliasMu serialises this client's CreateAlias calls. AWS makes an
	// alias name unique atomically; the local-kms emulator checks and
	// then writes, so two creations racing in one process could both
	// succeed there. Across processes the store's key lease (rotation)
	// and the unique key name (CreateKey) keep them apart.
	aliasMu sync.Mutex
}

var (
	_ rekey.KMS                = (*Client)(nil)
	_ rekey.Rewrapper          = (*Client)(nil)
	_ rekey.VersionRetirer     = (*Client)(nil)
	_ rekey.Pinger             = (*Client)(nil)
	_ rekey.MACer              = (*Client)(nil)
	_ rekey.CapabilityReporter = (*Client)(nil)
)

// New returns the backend for c. Unless c.Client is set it loads the AWS
// configuration (region, credentials) from the SDK's default chain with
// one attempt per request (no SDK retries), and assumes c.RoleARN when
// set. It makes no request: a wrong region or missing credentials show at
// the first call (Ping).
func New(ctx context.Context, c Config) (*Client, error) {
	if c.Name == "" {
		c.Name = "awskms"
	}
	s := Settings{Mode: c.Mode, AliasPrefix: c.AliasPrefix, DeletionWindowDays: c.DeletionWindowDays,
		Region: c.Region, Endpoint: c.Endpoint, RoleARN: c.RoleARN}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("awskms backend %s: %w", c.Name, err)
	}
	k := &Client{
		api: c.Client, name: c.Name, service: "kms:" + c.Name, mode: c.Mode, prefix: c.AliasPrefix,
		window: int32(c.DeletionWindowDays), log: c.Logger, arns: map[string]string{},
	}
	if k.mode == "" {
		k.mode = ModeNewKey
	}
	if k.prefix == "" {
		k.prefix = DefaultAliasPrefix
	}
	if k.window == 0 {
		k.window = DefaultDeletionWindowDays
	}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	if k.api != nil {
		return k, nil
	}
	opts := []func(*awsconfig.LoadOptions) error{
		// kmsmw retries; the SDK must not retry as well.
		awsconfig.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if c.Region != "" {
		opts = append(opts, awsconfig.WithRegion(c.Region))
	}
	if c.Credentials != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(c.Credentials))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("awskms backend %s: loading the AWS configuration (environment, shared config files): %w", c.Name, err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("awskms backend %s: no AWS region: set region in the backend's settings or AWS_REGION in the environment", c.Name)
	}
	if c.RoleARN != "" {
		cfg.Credentials = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(sts.NewFromConfig(cfg), c.RoleARN,
			func(o *stscreds.AssumeRoleOptions) { o.RoleSessionName = "rekey-" + c.Name }))
	}
	k.api = kms.NewFromConfig(cfg, func(o *kms.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(strings.TrimSuffix(c.Endpoint, "/"))
		}
	})
	return k, nil
}

// Mode returns the backend's mode (ModeNewKey or ModeOnDemand).
func (k *Client) Mode() string { return k.mode }

// Capabilities implements rekey.CapabilityReporter: server-side re-wrap,
// ping and MAC always; per-version retirement only in new-key mode.
func (k *Client) Capabilities() rekey.Capabilities {
	return rekey.Capabilities{Rewrap: true, RetireVersion: k.mode == ModeNewKey, Ping: true, MAC: true, FindKey: true, NativeRewrap: true}
}

// ref returns the alias of key name (the reference CreateKey returns).
func (k *Client) ref(name string) string { return k.prefix + name }

// keyName returns the rekey key name of ref, or ErrKeyNotFound when ref is
// not an alias under the configured prefix.
func (k *Client) keyName(ref string) (string, error) {
	name, ok := strings.CutPrefix(ref, k.prefix)
	if !ok || rekey.ValidateKeyName(name) != nil {
		return "", fmt.Errorf("awskms backend %s: reference %q is not an alias under alias_prefix %q (was alias_prefix changed?): %w",
			k.name, ref, k.prefix, rekey.ErrKeyNotFound)
	}
	return name, nil
}

func versionAlias(ref string, v int) string { return ref + "/v" + strconv.Itoa(v) }

func (k *Client) encContext(name string) map[string]string {
	return map[string]string{ContextKey: name}
}

// CreateKey implements rekey.KMS: it makes the KMS key of version 1 and
// its aliases, and returns ALIAS_PREFIX+name. The version alias is the
// claim on the name: a second CreateKey of one name gets ErrKeyExists (and
// its own KMS key is scheduled for deletion).
func (k *Client) CreateKey(ctx context.Context, name string) (string, error) {
	if err := rekey.ValidateKeyName(name); err != nil {
		return "", err
	}
	ref := k.ref(name)
	desc := fmt.Sprintf("rekey root key %s version 1", name)
	if k.mode == ModeOnDemand {
		desc = fmt.Sprintf("rekey root key %s (rotated on demand)", name)
	}
	keyID, arn, err := k.createKMSKey(ctx, name, desc, 1, false)
	if err != nil {
		return "", err
	}
	claim := versionAlias(ref, 1)
	if k.mode == ModeOnDemand {
		claim = ref
	}
	if err := k.createAlias(ctx, claim, keyID); err != nil {
		k.discardKey(ctx, keyID, "its alias "+claim+" already exists")
		if errors.Is(err, errAliasExists) {
			return "", fmt.Errorf("awskms backend %s: key %s: alias %s exists: %w", k.name, name, claim, rekey.ErrKeyExists)
		}
		return "", err
	}
	k.remember(claim, arn)
	if k.mode == ModeNewKey {
		if err := k.pointAlias(ctx, ref, keyID); err != nil {
			// The version alias is the truth; the main alias only helps
			// applications. CurrentVersion repairs it.
			k.log.Warn("awskms: could not create the alias of the active version", "backend", k.name, "alias", ref, "error", err.Error())
		}
	}
	return ref, nil
}

// createKMSKey makes a symmetric (or HMAC) KMS key tagged with its rekey
// key name and version.
func (k *Client) createKMSKey(ctx context.Context, name, desc string, version int, hmac bool) (keyID, arn string, err error) {
	in := &kms.CreateKeyInput{
		Description: aws.String(desc),
		Tags: []types.Tag{
			{TagKey: aws.String("rekey:key"), TagValue: aws.String(name)},
			{TagKey: aws.String("rekey:version"), TagValue: aws.String(strconv.Itoa(version))},
		},
	}
	if hmac {
		in.KeySpec, in.KeyUsage = types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac
	} else {
		in.KeySpec, in.KeyUsage = types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt
	}
	out, err := k.api.CreateKey(ctx, in)
	if err != nil {
		return "", "", k.mapErr(err, "create the KMS key of "+name)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.KeyId == nil || out.KeyMetadata.Arn == nil {
		return "", "", fmt.Errorf("awskms backend %s: CreateKey for %s returned no key metadata", k.name, name)
	}
	return *out.KeyMetadata.KeyId, *out.KeyMetadata.Arn, nil
}

var errAliasExists = errors.New("alias exists")

func (k *Client) createAlias(ctx context.Context, alias, keyID string) error {
	k.aliasMu.Lock()
	defer k.aliasMu.Unlock()
	_, err := k.api.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(keyID)})
	if err != nil {
		if apiCode(err) == "AlreadyExistsException" {
			return errAliasExists
		}
		return k.mapErr(err, "create alias "+alias)
	}
	return nil
}

// pointAlias makes alias point at keyID, creating it when missing.
func (k *Client) pointAlias(ctx context.Context, alias, keyID string) error {
	_, err := k.api.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(keyID)})
	if err == nil {
		return nil
	}
	if apiCode(err) != "NotFoundException" {
		return k.mapErr(err, "update alias "+alias)
	}
	if err := k.createAlias(ctx, alias, keyID); err != nil && !errors.Is(err, errAliasExists) {
		return err
	}
	return nil
}

// discardKey schedules the deletion of a KMS key that lost a race (its
// alias was taken), with the shortest waiting period.
func (k *Client) discardKey(ctx context.Context, keyID, why string) {
	_, err := k.api.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID), PendingWindowInDays: aws.Int32(MinDeletionWindowDays)})
	if err != nil {
		k.log.Warn("awskms: could not schedule the deletion of an unused KMS key: delete it by hand", "backend", k.name, "kms_key", keyID, "why", why, "error", err.Error())
	}
}

func (k *Client) remember(alias, arn string) {
	k.mu.Lock()
	k.arns[alias] = arn
	k.mu.Unlock()
}

// describe returns the metadata of the key behind id (an alias or a key
// id/ARN), or nil when it does not exist.
func (k *Client) describe(ctx context.Context, id string) (*types.KeyMetadata, error) {
	out, err := k.api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
	if err != nil {
		if apiCode(err) == "NotFoundException" {
			return nil, nil
		}
		return nil, k.mapErr(err, "describe "+id)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.Arn == nil {
		return nil, fmt.Errorf("awskms backend %s: DescribeKey %s returned no key metadata", k.name, id)
	}
	return out.KeyMetadata, nil
}

// aliasARN returns the ARN of the KMS key behind an alias that never moves
// (cached), or "" when the alias does not exist.
func (k *Client) aliasARN(ctx context.Context, alias string) (string, error) {
	k.mu.Lock()
	arn, ok := k.arns[alias]
	k.mu.Unlock()
	if ok {
		return arn, nil
	}
	md, err := k.describe(ctx, alias)
	if err != nil || md == nil {
		return "", err
	}
	k.remember(alias, *md.Arn)
	return *md.Arn, nil
}

// versionARN returns the ARN of the KMS key of version v of ref: in
// new-key mode the key behind the version alias, in on-demand mode the one
// key. It returns ErrKeyNotFound or ErrVersionNotFound.
func (k *Client) versionARN(ctx context.Context, ref string, v int) (string, error) {
	if _, err := k.keyName(ref); err != nil {
		return "", err
	}
	if v < 1 {
		return "", fmt.Errorf("awskms backend %s: key %s version %d: versions start at 1: %w", k.name, ref, v, rekey.ErrVersionNotFound)
	}
	alias := versionAlias(ref, v)
	if k.mode == ModeOnDemand {
		alias = ref
	}
	arn, err := k.aliasARN(ctx, alias)
	if err != nil {
		return "", err
	}
	if arn == "" {
		return "", k.missing(ctx, ref, v)
	}
	return arn, nil
}

// missing returns the error for a version alias that does not exist:
// ErrVersionNotFound when the key exists, else ErrKeyNotFound.
func (k *Client) missing(ctx context.Context, ref string, v int) error {
	first := versionAlias(ref, 1)
	if k.mode == ModeOnDemand {
		first = ref
	}
	if v != 1 || k.mode == ModeOnDemand {
		arn, err := k.aliasARN(ctx, first)
		if err != nil {
			return err
		}
		if arn != "" {
			return fmt.Errorf("awskms backend %s: key %s has no version %d (no alias %s): %w", k.name, ref, v, versionAlias(ref, v), rekey.ErrVersionNotFound)
		}
	}
	return fmt.Errorf("awskms backend %s: no key %s (no alias %s in this account and region): %w", k.name, ref, first, rekey.ErrKeyNotFound)
}

var descVersionRE = regexp.MustCompile(` version ([0-9]+)$`)

// CurrentVersion implements rekey.KMS. In new-key mode it is the highest N
// with an alias ALIAS_PREFIX+NAME+"/vN", found from the version the main
// alias points at (its key's description says which) and confirmed by
// looking one version further; a main alias that lags behind is moved to
// the newest version. In on-demand mode it is 1 + the key's rotations
// (ListKeyRotations), which local-kms does not implement.
func (k *Client) CurrentVersion(ctx context.Context, ref string) (int, error) {
	if _, err := k.keyName(ref); err != nil {
		return 0, err
	}
	if k.mode == ModeOnDemand {
		n, _, err := k.rotations(ctx, ref)
		if err != nil {
			return 0, err
		}
		return n + 1, nil
	}
	hint := 0
	md, err := k.describe(ctx, ref)
	if err != nil {
		return 0, err
	}
	if md != nil && md.Description != nil {
		if m := descVersionRE.FindStringSubmatch(*md.Description); m != nil {
			hint, _ = strconv.Atoi(m[1])
		}
	}
	if hint > 0 {
		arn, err := k.aliasARN(ctx, versionAlias(ref, hint))
		if err != nil {
			return 0, err
		}
		if arn == "" || arn != *md.Arn { // the description lied: start from the bottom
			hint = 0
		}
	}
	v := hint
	if v == 0 {
		arn, err := k.aliasARN(ctx, versionAlias(ref, 1))
		if err != nil {
			return 0, err
		}
		if arn == "" {
			return 0, fmt.Errorf("awskms backend %s: no key %s (no alias %s in this account and region): %w", k.name, ref, versionAlias(ref, 1), rekey.ErrKeyNotFound)
		}
		v = 1
	}
	var newest string
	for {
		// Not cached: the next version may appear at any time.
		next, err := k.describe(ctx, versionAlias(ref, v+1))
		if err != nil {
			return 0, err
		}
		if next == nil {
			break
		}
		v++
		newest = *next.KeyId
		k.remember(versionAlias(ref, v), *next.Arn)
	}
	if newest != "" || md == nil {
		if newest == "" {
			arn, _ := k.aliasARN(ctx, versionAlias(ref, v))
			newest = arn
		}
		if err := k.pointAlias(ctx, ref, newest); err != nil {
			k.log.Warn("awskms: could not move the alias of the active version", "backend", k.name, "alias", ref, "version", v, "error", err.Error())
		}
	}
	return v, nil
}

// RotateKey implements rekey.KMS. In new-key mode it makes a KMS key and
// claims the next version alias with it (a concurrent rotation that took
// that number first makes this one try the number after), then points the
// main alias at it. In on-demand mode it calls RotateKeyOnDemand, and
// returns ErrUsageLimit once the key has had MaxOnDemandRotations.
func (k *Client) RotateKey(ctx context.Context, ref string) (int, error) {
	name, err := k.keyName(ref)
	if err != nil {
		return 0, err
	}
	if k.mode == ModeOnDemand {
		return k.rotateOnDemand(ctx, ref)
	}
	cur, err := k.CurrentVersion(ctx, ref)
	if err != nil {
		return 0, err
	}
	for range 20 {
		next := cur + 1
		keyID, arn, err := k.createKMSKey(ctx, name, fmt.Sprintf("rekey root key %s version %d", name, next), next, false)
		if err != nil {
			return 0, err
		}
		alias := versionAlias(ref, next)
		err = k.createAlias(ctx, alias, keyID)
		if errors.Is(err, errAliasExists) {
			k.discardKey(ctx, keyID, "a concurrent rotation made version "+strconv.Itoa(next)+" first")
			cur = next
			continue
		}
		if err != nil {
			k.discardKey(ctx, keyID, "its version alias could not be created")
			return 0, err
		}
		k.remember(alias, arn)
		if err := k.pointAlias(ctx, ref, keyID); err != nil {
			k.log.Warn("awskms: could not move the alias of the active version: CurrentVersion will", "backend", k.name, "alias", ref, "version", next, "error", err.Error())
		}
		return next, nil
	}
	return 0, fmt.Errorf("awskms backend %s: key %s: 20 concurrent rotations won the race for the next version: try again", k.name, ref)
}

// rotations returns the number of rotations of ref's KMS key and how many
// of them were on demand (ListKeyRotations).
func (k *Client) rotations(ctx context.Context, ref string) (all, onDemand int, err error) {
	arn, err := k.versionARN(ctx, ref, 1)
	if err != nil {
		return 0, 0, err
	}
	in := &kms.ListKeyRotationsInput{KeyId: aws.String(arn), Limit: aws.Int32(1000)}
	for {
		out, err := k.api.ListKeyRotations(ctx, in)
		if err != nil {
			return 0, 0, k.mapErr(err, "list the rotations of "+ref+" (ListKeyRotations)")
		}
		for _, r := range out.Rotations {
			all++
			if r.RotationType == types.RotationTypeOnDemand {
				onDemand++
			}
		}
		if !out.Truncated || out.NextMarker == nil {
			return all, onDemand, nil
		}
		in.Marker = out.NextMarker
	}
}

func (k *Client) rotateOnDemand(ctx context.Context, ref string) (int, error) {
	all, onDemand, err := k.rotations(ctx, ref)
	if err != nil {
		return 0, err
	}
	if onDemand >= MaxOnDemandRotations {
		return 0, fmt.Errorf("awskms backend %s: key %s had its %d on-demand rotations, AWS's limit per KMS key: use mode %s (one KMS key per version, no such limit) for keys that rotate often: %w",
			k.name, ref, MaxOnDemandRotations, ModeNewKey, rekey.ErrUsageLimit)
	}
	arn, err := k.versionARN(ctx, ref, 1)
	if err != nil {
		return 0, err
	}
	if _, err := k.api.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(arn)}); err != nil {
		if apiCode(err) == "LimitExceededException" {
			return 0, fmt.Errorf("awskms backend %s: key %s: AWS refused another on-demand rotation (limit %d per key): use mode %s: %w",
				k.name, ref, MaxOnDemandRotations, ModeNewKey, rekey.ErrUsageLimit)
		}
		return 0, k.mapErr(err, "rotate "+ref+" on demand (RotateKeyOnDemand)")
	}
	return all + 2, nil
}

// Wrap implements rekey.KMS: Encrypt under version's KMS key with the
// encryption context {"rekey:key": NAME}; the result is the
// CiphertextBlob.
func (k *Client) Wrap(ctx context.Context, ref string, version int, plaintext []byte) ([]byte, error) {
	name, err := k.keyName(ref)
	if err != nil {
		return nil, err
	}
	switch {
	case len(plaintext) == 0:
		return nil, rekey.Invalidf("awskms backend %s: wrap under %s: empty plaintext", k.name, ref)
	case len(plaintext) > maxPlaintext:
		return nil, rekey.Invalidf("awskms backend %s: wrap under %s: %d bytes of plaintext, KMS takes at most %d", k.name, ref, len(plaintext), maxPlaintext)
	case version < 1:
		return nil, fmt.Errorf("awskms backend %s: key %s version %d: versions start at 1: %w", k.name, ref, version, rekey.ErrVersionNotFound)
	}
	keyID := versionAlias(ref, version)
	if k.mode == ModeOnDemand {
		keyID = ref
	}
	out, err := k.api.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(keyID), Plaintext: plaintext, EncryptionContext: k.encContext(name)})
	if err != nil {
		if apiCode(err) == "NotFoundException" {
			return nil, k.missing(ctx, ref, version)
		}
		return nil, k.mapErr(err, fmt.Sprintf("wrap under %s version %d", ref, version))
	}
	if out.KeyId != nil && k.mode == ModeNewKey {
		k.remember(keyID, *out.KeyId)
	}
	return out.CiphertextBlob, nil
}

// Unwrap implements rekey.KMS: Decrypt with the wrap's own key and the
// encryption context, then a check that KMS used version's key (else
// ErrWrongVersion, and the plaintext is zeroed). KeyId is not passed to
// Decrypt: local-kms would then ignore the key the blob names (and accept
// a blob whose key id was tampered with); the check after is as strict.
func (k *Client) Unwrap(ctx context.Context, ref string, version int, wrapped []byte) ([]byte, error) {
	name, err := k.keyName(ref)
	if err != nil {
		return nil, err
	}
	if len(wrapped) == 0 || len(wrapped) > maxCiphertext {
		return nil, fmt.Errorf("awskms backend %s: unwrap under %s version %d: %d bytes is not a KMS ciphertext: %w", k.name, ref, version, len(wrapped), rekey.ErrInvalidCiphertext)
	}
	arn, err := k.versionARN(ctx, ref, version)
	if err != nil {
		return nil, err
	}
	out, err := k.api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: wrapped, EncryptionContext: k.encContext(name)})
	if err != nil {
		return nil, k.decryptErr(ctx, err, ref, version, arn, "unwrap")
	}
	if out.KeyId == nil || *out.KeyId != arn {
		clear(out.Plaintext)
		return nil, fmt.Errorf("awskms backend %s: unwrap under %s version %d: the ciphertext is under another KMS key: %w", k.name, ref, version, rekey.ErrWrongVersion)
	}
	return out.Plaintext, nil
}

// decryptErr maps a failed Decrypt or ReEncrypt of a wrap expected under
// arn (version v of ref).
func (k *Client) decryptErr(ctx context.Context, err error, ref string, v int, arn, what string) error {
	where := fmt.Sprintf("%s under %s version %d", what, ref, v)
	switch apiCode(err) {
	case "InvalidCiphertextException", "ValidationException", "NotFoundException", "InvalidKeyUsageException":
		return fmt.Errorf("awskms backend %s: %s: %w (%s)", k.name, where, rekey.ErrInvalidCiphertext, apiCode(err))
	case "IncorrectKeyException":
		return fmt.Errorf("awskms backend %s: %s: the ciphertext is under another KMS key: %w", k.name, where, rekey.ErrWrongVersion)
	case "DisabledException", "KMSInvalidStateException", "AccessDeniedException":
		// Whose key is unusable: this version's, or the one the blob
		// names? local-kms answers AccessDeniedException for both, and
		// for a key that does not exist.
		md, derr := k.describe(ctx, arn)
		if derr != nil {
			return derr
		}
		if md == nil || !md.Enabled {
			return fmt.Errorf("awskms backend %s: %s: the version's KMS key is %s: %w", k.name, where, keyState(md), rekey.ErrVersionDisabled)
		}
		if apiCode(err) == "AccessDeniedException" && strings.Contains(errMessage(err), "not authorized") {
			return k.mapErr(err, where)
		}
		if apiCode(err) == "AccessDeniedException" {
			return fmt.Errorf("awskms backend %s: %s: the ciphertext names a KMS key that does not exist or cannot be used: %w", k.name, where, rekey.ErrInvalidCiphertext)
		}
		return fmt.Errorf("awskms backend %s: %s: the ciphertext is under another, unusable KMS key: %w", k.name, where, rekey.ErrWrongVersion)
	}
	return k.mapErr(err, where)
}

func keyState(md *types.KeyMetadata) string {
	if md == nil {
		return "deleted"
	}
	return string(md.KeyState)
}

// Rewrap implements rekey.Rewrapper with ReEncrypt (source and destination
// keys named, same encryption context): the plaintext DEK never leaves
// KMS. The keys KMS reports having used are checked (ErrWrongVersion).
func (k *Client) Rewrap(ctx context.Context, ref string, fromVersion int, wrapped []byte, toVersion int) ([]byte, error) {
	name, err := k.keyName(ref)
	if err != nil {
		return nil, err
	}
	if len(wrapped) == 0 || len(wrapped) > maxCiphertext {
		return nil, fmt.Errorf("awskms backend %s: re-wrap under %s version %d: %d bytes is not a KMS ciphertext: %w", k.name, ref, fromVersion, len(wrapped), rekey.ErrInvalidCiphertext)
	}
	fromARN, err := k.versionARN(ctx, ref, fromVersion)
	if err != nil {
		return nil, err
	}
	toARN, err := k.versionARN(ctx, ref, toVersion)
	if err != nil {
		return nil, err
	}
	ec := k.encContext(name)
	out, err := k.api.ReEncrypt(ctx, &kms.ReEncryptInput{
		CiphertextBlob: wrapped, SourceKeyId: aws.String(fromARN), DestinationKeyId: aws.String(toARN),
		SourceEncryptionContext: ec, DestinationEncryptionContext: ec,
	})
	if err != nil {
		if c := apiCode(err); c == "DisabledException" || c == "KMSInvalidStateException" {
			if md, derr := k.describe(ctx, toARN); derr == nil && (md == nil || !md.Enabled) {
				return nil, fmt.Errorf("awskms backend %s: re-wrap to %s version %d: its KMS key is %s: %w", k.name, ref, toVersion, keyState(md), rekey.ErrVersionDisabled)
			}
		}
		return nil, k.decryptErr(ctx, err, ref, fromVersion, fromARN, "re-wrap")
	}
	if out.SourceKeyId == nil || *out.SourceKeyId != fromARN {
		return nil, fmt.Errorf("awskms backend %s: re-wrap under %s version %d: the ciphertext is under another KMS key: %w", k.name, ref, fromVersion, rekey.ErrWrongVersion)
	}
	if out.KeyId == nil || *out.KeyId != toARN {
		return nil, fmt.Errorf("awskms backend %s: re-wrap to %s version %d: KMS used another key than %s", k.name, ref, toVersion, toARN)
	}
	return out.CiphertextBlob, nil
}

// RetireVersion implements rekey.VersionRetirer (new-key mode): DisableKey
// on the version's KMS key. A key already disabled or pending deletion is
// left as it is.
func (k *Client) RetireVersion(ctx context.Context, ref string, version int) error {
	if k.mode != ModeNewKey {
		return fmt.Errorf("awskms backend %s: key %s: mode %s cannot retire one version (KMS keeps every key material of the key): %w", k.name, ref, k.mode, rekey.ErrUnsupported)
	}
	arn, err := k.versionARN(ctx, ref, version)
	if err != nil {
		return err
	}
	if _, err := k.api.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(arn)}); err != nil {
		if apiCode(err) == "KMSInvalidStateException" {
			if md, derr := k.describe(ctx, arn); derr == nil && (md == nil || md.KeyState == types.KeyStatePendingDeletion || !md.Enabled) {
				return nil
			}
		}
		return k.mapErr(err, fmt.Sprintf("retire %s version %d (DisableKey)", ref, version))
	}
	return nil
}

// DestroyVersion implements rekey.VersionRetirer (new-key mode):
// ScheduleKeyDeletion of the version's KMS key with the configured waiting
// period. The deletion date is logged (and DeletionDate reports it); a key
// already pending deletion keeps its date.
func (k *Client) DestroyVersion(ctx context.Context, ref string, version int) error {
	if k.mode != ModeNewKey {
		return fmt.Errorf("awskms backend %s: key %s: mode %s cannot destroy one version: %w", k.name, ref, k.mode, rekey.ErrUnsupported)
	}
	arn, err := k.versionARN(ctx, ref, version)
	if err != nil {
		return err
	}
	md, err := k.describe(ctx, arn)
	if err != nil {
		return err
	}
	if md == nil || md.KeyState == types.KeyStatePendingDeletion {
		return nil
	}
	out, err := k.api.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(arn), PendingWindowInDays: aws.Int32(k.window)})
	if err != nil {
		return k.mapErr(err, fmt.Sprintf("destroy %s version %d (ScheduleKeyDeletion)", ref, version))
	}
	var when time.Time
	if out.DeletionDate != nil {
		when = *out.DeletionDate
	}
	k.log.Info("awskms: version's KMS key scheduled for deletion", "backend", k.name, "key", ref, "version", version,
		"kms_key", arn, "waiting_days", k.window, "deletion_date", when.UTC().Format(time.RFC3339))
	return nil
}

// DeletionDate returns when the KMS key of version of ref will be deleted,
// or the zero time when its deletion is not scheduled (new-key mode). It
// returns ErrKeyNotFound or ErrVersionNotFound.
func (k *Client) DeletionDate(ctx context.Context, ref string, version int) (time.Time, error) {
	arn, err := k.versionARN(ctx, ref, version)
	if err != nil {
		return time.Time{}, err
	}
	md, err := k.describe(ctx, arn)
	if err != nil || md == nil || md.DeletionDate == nil {
		return time.Time{}, err
	}
	return *md.DeletionDate, nil
}

// Ping implements rekey.Pinger with ListKeys (one key).
func (k *Client) Ping(ctx context.Context) error {
	if _, err := k.api.ListKeys(ctx, &kms.ListKeysInput{Limit: aws.Int32(1)}); err != nil {
		err = k.mapErr(err, "ping (ListKeys)")
		if !rekey.IsTransient(err) {
			err = &rekey.UnreachableError{Service: k.service, Err: err}
		}
		return err
	}
	return nil
}

// macAlias is the alias of the HMAC key MAC uses; a rekey key name cannot
// start with '_', so no key's alias can take it.
func (k *Client) macAlias() string { return k.prefix + "_mac" }

// MAC implements rekey.MACer with GenerateMac (HMAC_SHA_256) under an
// HMAC_256 KMS key (alias ALIAS_PREFIX+"_mac", made on first use). The
// message is the purpose, length-prefixed, and the SHA-256 of data, so
// data of any size fits KMS's 4 KiB limit.
func (k *Client) MAC(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	alias := k.macAlias()
	arn, err := k.aliasARN(ctx, alias)
	if err != nil {
		return nil, err
	}
	if arn == "" {
		keyID, newARN, err := k.createKMSKey(ctx, "_mac", "rekey audit checkpoint MAC key", 1, true)
		if err != nil {
			return nil, err
		}
		switch err := k.createAlias(ctx, alias, keyID); {
		case errors.Is(err, errAliasExists):
			k.discardKey(ctx, keyID, "another process made the MAC key first")
			if arn, err = k.aliasARN(ctx, alias); err != nil || arn == "" {
				return nil, fmt.Errorf("awskms backend %s: MAC key alias %s: %v", k.name, alias, err)
			}
		case err != nil:
			k.discardKey(ctx, keyID, "its alias could not be created")
			return nil, err
		default:
			arn = newARN
			k.remember(alias, arn)
		}
	}
	sum := sha256.Sum256(data)
	msg := binary.BigEndian.AppendUint32([]byte("rekey-mac-v1"), uint32(len(purpose)))
	msg = append(append(msg, purpose...), sum[:]...)
	out, err := k.api.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: aws.String(arn), MacAlgorithm: types.MacAlgorithmSpecHmacSha256, Message: msg})
	if err != nil {
		return nil, k.mapErr(err, "MAC for "+purpose+" (GenerateMac)")
	}
	return out.Mac, nil
}

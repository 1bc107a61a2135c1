package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/rekeyhq/rekey/kms/awskms"
	"github.com/rekeyhq/rekey/kms/keyprotect"
	"github.com/rekeyhq/rekey/kms/localkms"
	"github.com/rekeyhq/rekey/kms/pkcs11"
	"github.com/rekeyhq/rekey/kms/vault"
)

// BackendConfig is one backend (YAML: backends.NAME): its type and the
// settings of that type, which the backend's package defines and
// validates. For BackendLocal, Settings is a *localkms.Settings; for
// BackendVault, a *vault.Settings.
type BackendConfig struct {
	// Type is the backend type (YAML: type), one of AvailableBackendTypes.
	Type string
	// Settings are the type's fields (every field of backends.NAME but
	// type). Parse fills them in; nil when the type is not available.
	Settings BackendSettings
}

// BackendSettings is what a backend package's settings struct provides.
// Its exported fields carry yaml tags: Parse decodes them (string, bool,
// integer, float, time.Duration, and pointers to these) after expanding
// ${VAR}, and refuses any other field.
type BackendSettings interface {
	// Validate returns nil or the problems with the settings: one error,
	// or several joined with errors.Join. A problem that implements
	// FieldError is reported at backends.NAME.FIELD, any other at
	// backends.NAME.
	Validate() error
}

// RateLimitSettings is implemented by the settings of a backend that has a
// request rate of its own: a per-backend rate_limit field, or a default
// kept well under the service's published quota. The rate applied to a
// backend is its explicit rate_limit, else worker.kms_rate_limit when set,
// else the backend's default (see EffectiveRateLimit).
type RateLimitSettings interface {
	// RateLimit returns the requests per second for the backend and
	// whether the configuration set it explicitly (false: the backend's
	// default). 0 means no limit.
	RateLimit() (rps float64, explicit bool)
}

// EffectiveRateLimit is the request rate (per second, 0 = none) to apply
// to backend b when worker.kms_rate_limit is workerLimit: b's explicit
// rate_limit, else workerLimit when it is set, else b's default.
func EffectiveRateLimit(b BackendConfig, workerLimit float64) float64 {
	rl, ok := b.Settings.(RateLimitSettings)
	if !ok {
		return workerLimit
	}
	rps, explicit := rl.RateLimit()
	if explicit || workerLimit == 0 {
		return rps
	}
	return workerLimit
}

// FieldError is a problem with one field of a backend's settings (such as
// *localkms.SettingsError).
type FieldError interface {
	error
	// FieldName is the field's YAML name.
	FieldName() string
	// Reason says what is wrong and how to fix it, without the field name.
	Reason() string
}

// pathResolver is implemented by settings that hold file paths, which
// Parse resolves against the configuration file's directory.
type pathResolver interface{ ResolvePaths(dir string) }

// backendTypes are the backend types available in this build, by type:
// each makes the settings with their defaults, for Parse to decode into.
var backendTypes = map[string]func() BackendSettings{
	BackendLocal:      func() BackendSettings { return new(localkms.Settings) },
	BackendKeyProtect: func() BackendSettings { return new(keyprotect.Settings) },
	BackendAWSKMS:     func() BackendSettings { return new(awskms.Settings) },
	BackendPKCS11:     func() BackendSettings { return new(pkcs11.Settings) },
	BackendVault:      func() BackendSettings { return new(vault.Settings) },
}

// AvailableBackendTypes returns the backend types this build implements,
// sorted.
func AvailableBackendTypes() []string { return slices.Sorted(maps.Keys(backendTypes)) }

// backendTypeProblem returns what is wrong with a backend type, or "".
func backendTypeProblem(typ string) string {
	avail := strings.Join(AvailableBackendTypes(), ", ")
	switch {
	case typ == "":
		return "missing: set type to one of " + avail
	case backendTypes[typ] != nil:
		return ""
	}
	return fmt.Sprintf("unknown backend type %q: available types: %s", echo(typ), avail)
}

// settingsFields returns the YAML field names of a settings struct and
// the index of each in the struct.
func settingsFields(v reflect.Value) (names []string, index map[string]int) {
	index = map[string]int{}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		names = append(names, name)
		index[name] = i
	}
	return names, index
}

// backend decodes backends.NAME at path: type first, then the type's
// settings, field by field, so that every problem names its path.
func (d *decoder) backend(n *yaml.Node, path string) BackendConfig {
	var b BackendConfig
	avail := strings.Join(AvailableBackendTypes(), ", ")
	if n.Kind != yaml.MappingNode {
		d.addf(n, path, "expected a backend: a mapping with type (%s) and its fields, got %s", avail, kindName(n))
		return b
	}
	// The type decides which fields are allowed, so read it first.
	var typeNode *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "type" {
			typeNode = n.Content[i+1]
			if typeNode.Kind == yaml.AliasNode {
				typeNode = typeNode.Alias
			}
			break
		}
	}
	tp := path + ".type"
	if _, ok := d.lines[path]; !ok {
		d.lines[path] = n.Line
	}
	if isNull(typeNode) {
		d.addf(n, tp, "%s", backendTypeProblem(""))
		return b
	}
	typ, ok := d.scalar(typeNode, tp)
	if !ok {
		return b
	}
	b.Type = typ
	if msg := backendTypeProblem(typ); msg != "" {
		// Its fields are unknown to this build: only the type is reported.
		d.addf(typeNode, tp, "%s", msg)
		return b
	}
	settings := backendTypes[typ]()
	sv := reflect.ValueOf(settings).Elem()
	names, index := settingsFields(sv)
	allowed := append([]string{"type"}, names...)
	d.fields(n, path, fieldSet{
		allowed: allowed,
		unknown: func(name string) string {
			return fmt.Sprintf("unknown field %q for backend type %s: allowed fields are %s", echo(name), typ, strings.Join(allowed, ", "))
		},
	}, func(name string, v *yaml.Node, p string) {
		if name != "type" {
			d.setting(v, p, sv.Field(index[name]))
		}
	})
	if r, ok := settings.(pathResolver); ok {
		r.ResolvePaths(d.baseDir)
	}
	b.Settings = settings
	return b
}

var durationType = reflect.TypeFor[time.Duration]()

// setting decodes one scalar into a settings field after expanding ${VAR}.
func (d *decoder) setting(n *yaml.Node, p string, dst reflect.Value) {
	s, ok := d.scalar(n, p)
	if !ok {
		return
	}
	if dst.Kind() == reflect.Pointer {
		v := reflect.New(dst.Type().Elem())
		if d.parseSetting(n, p, s, v.Elem()) {
			dst.Set(v)
		}
		return
	}
	d.parseSetting(n, p, s, dst)
}

func (d *decoder) parseSetting(n *yaml.Node, p, s string, dst reflect.Value) bool {
	t := strings.TrimSpace(s)
	var err error
	switch {
	case dst.Type() == durationType:
		v, msg := parseDuration(s, false)
		if msg != "" {
			d.addf(n, p, "%s", msg)
			return false
		}
		dst.SetInt(int64(v))
		return true
	case dst.Kind() == reflect.String:
		dst.SetString(s)
		return true
	case dst.CanInt():
		var v int64
		if v, err = strconv.ParseInt(t, 10, dst.Type().Bits()); err == nil {
			dst.SetInt(v)
			return true
		}
		if errors.Is(err, strconv.ErrRange) {
			d.addf(n, p, "%q is too large: use a whole number within the field's range", echo(s))
		} else {
			d.addf(n, p, "%q is not a whole number: use digits only, e.g. 10", echo(s))
		}
	case dst.CanUint():
		var v uint64
		if v, err = strconv.ParseUint(t, 10, dst.Type().Bits()); err == nil {
			dst.SetUint(v)
			return true
		}
		if errors.Is(err, strconv.ErrRange) {
			d.addf(n, p, "%q is too large: use a whole number within the field's range", echo(s))
		} else {
			d.addf(n, p, "%q is not a whole number from 0: use digits only, e.g. 10", echo(s))
		}
	case dst.CanFloat():
		var v float64
		if v, err = strconv.ParseFloat(t, dst.Type().Bits()); err == nil && !dst.OverflowFloat(v) && !math.IsNaN(v) && !math.IsInf(v, 0) {
			dst.SetFloat(v)
			return true
		}
		d.addf(n, p, "%q is not a number", echo(s))
	case dst.Kind() == reflect.Bool:
		var v bool
		if v, err = strconv.ParseBool(t); err == nil {
			dst.SetBool(v)
			return true
		}
		d.addf(n, p, "%q is not true or false", echo(s))
	default:
		// A backend's settings struct with a field of another kind: a bug
		// in this build, reported rather than ignored.
		d.addf(n, p, "this build cannot read a setting of type %s", dst.Type())
	}
	return false
}

// checkBackendSettings reports the problems of b's type and settings at
// path p (backends.NAME).
func checkBackendSettings(ch *checker, p string, b BackendConfig) {
	if msg := backendTypeProblem(b.Type); msg != "" {
		ch.add(p+".type", "%s", msg)
		return
	}
	want := reflect.TypeOf(backendTypes[b.Type]())
	switch {
	case b.Settings != nil && reflect.TypeOf(b.Settings) != want:
		ch.add(p, "settings of type %T on a backend of type %s: use %s", b.Settings, b.Type, want)
		return
	case b.Settings == nil || reflect.ValueOf(b.Settings).IsNil():
		names, _ := settingsFields(reflect.New(want.Elem()).Elem())
		ch.add(p, "type %s but no %s settings: set the fields %s", b.Type, b.Type, strings.Join(names, ", "))
		return
	}
	for _, err := range flattenErrors(b.Settings.Validate()) {
		if fe, ok := errors.AsType[FieldError](err); ok {
			ch.add(childPath(p, fe.FieldName()), "%s", fe.Reason())
		} else {
			ch.add(p, "%s", err)
		}
	}
}

// flattenErrors returns the errors joined in err (errors.Join), or err
// alone; none for nil.
func flattenErrors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flattenErrors(e)...)
		}
		return out
	}
	return []error{err}
}

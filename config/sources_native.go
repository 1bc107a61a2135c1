package config

import (
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DEK source formats (dek_sources[].format): what the wrapped column
// holds.
const (
	// SourceFormatRekey is what rekey's GenerateDataKey returns (the
	// default).
	SourceFormatRekey = "rekey"
	// SourceFormatAWSNative is a CiphertextBlob the application made
	// itself with the AWS SDK (GenerateDataKey or Encrypt under the key's
	// alias), with no rekey encryption context (or encryption_context);
	// its key must be on an awskms backend.
	SourceFormatAWSNative = "aws-native"
)

var sourceFormats = []string{SourceFormatRekey, SourceFormatAWSNative}

// stringMap reads a mapping of plain string keys to string values (each
// value ${VAR}-expanded); it returns nil when n is null or has a problem
// (reported).
func (d *decoder) stringMap(n *yaml.Node, p string) map[string]string {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.addf(n, p, "expected a mapping of names to values, e.g. {app: orders}, got %s", kindName(n))
		return nil
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.deref(n.Content[i]), d.deref(n.Content[i+1])
		if k == nil || v == nil {
			return nil
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
			d.addf(k, p, "names must be plain words, got %s", kindName(k))
			return nil
		}
		cp := childPath(p, k.Value)
		if _, dup := out[k.Value]; dup {
			d.addf(k, cp, "duplicate name %q", echo(k.Value))
			return nil
		}
		val, ok := d.scalar(v, cp)
		if !ok {
			if isNull(v) {
				d.addf(v, cp, "empty: give %q a value", echo(k.Value))
			}
			return nil
		}
		out[k.Value] = val
	}
	return out
}

// checkSourceFormat checks format and encryption_context of the source s
// at path p: a known format, a context only for aws-native (no empty or
// aws:-reserved names), and an aws-native source's declared key on an
// awskms backend.
func (c *Config) checkSourceFormat(ch *checker, p string, s SourceConfig) {
	switch s.Format {
	case "", SourceFormatRekey:
		if s.EncryptionContext != nil {
			ch.add(p+".encryption_context", "only for format: %s (rekey's own format binds its context itself): remove it, or set format: %s", SourceFormatAWSNative, SourceFormatAWSNative)
		}
		return
	case SourceFormatAWSNative:
	default:
		ch.add(p+".format", "%s", enumMessage("source format", s.Format, sourceFormats))
		return
	}
	for _, name := range slices.Sorted(maps.Keys(s.EncryptionContext)) {
		switch {
		case name == "":
			ch.add(p+".encryption_context", "an empty name: every entry needs a name and a value")
		case strings.HasPrefix(strings.ToLower(name), "aws:"):
			ch.add(childPath(p+".encryption_context", name), "names starting with aws: are reserved by AWS: use the context your application passes to GenerateDataKey")
		case s.EncryptionContext[name] == "":
			ch.add(childPath(p+".encryption_context", name), "empty value: give it the value your application passes to GenerateDataKey")
		}
	}
	if s.Key == "" {
		return // a key column: each key's backend is checked when it rotates
	}
	for _, k := range c.Keys {
		if k.Name != s.Key {
			continue
		}
		if b, ok := c.Backends[k.Backend]; ok && b.Type != BackendAWSKMS {
			ch.add(p+".format", "%s needs key %s on an awskms backend, but it is declared on backend %s (type %s): use format: %s for rows made by rekey's GenerateDataKey",
				SourceFormatAWSNative, s.Key, k.Backend, b.Type, SourceFormatRekey)
		}
	}
}

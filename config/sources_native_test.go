package config

import (
	"maps"
	"strings"
	"testing"
)

func TestSourcesNativeFormat(t *testing.T) {
	t.Parallel()
	y := minimal + `backends:
  aws: {type: awskms, region: us-east-1}
keys:
  - {name: payments, backend: aws}
dek_sources:
  - name: orders
    driver: sqlite
    dsn: app.db
    table: order_keys
    id_column: id
    wrapped_column: blob
    version_column: key_version
    key: payments
    format: aws-native
    encryption_context: {app: orders, tenant: "${TENANT}"}
  - name: plain
    driver: sqlite
    dsn: app.db
    table: deks
    id_column: id
    wrapped_column: w
    version_column: v
    key: payments
`
	c := mustParse(t, y, map[string]string{"TENANT": "acme"})
	o := c.DEKSources[0]
	if o.Format != SourceFormatAWSNative || !maps.Equal(o.EncryptionContext, map[string]string{"app": "orders", "tenant": "acme"}) {
		t.Errorf("orders parsed as format %q, context %v", o.Format, o.EncryptionContext)
	}
	if p := c.DEKSources[1]; p.Format != "" || p.EncryptionContext != nil {
		t.Errorf("a source without format parsed as %q, %v", p.Format, p.EncryptionContext)
	}
}

func TestSourcesNativeProblems(t *testing.T) {
	t.Parallel()
	const head = minimal + `backends:
  aws: {type: awskms, region: us-east-1}
  local: {type: local, keyring: ./kr, master_key_file: ./mk}
keys:
  - {name: payments, backend: aws}
  - {name: onlocal, backend: local}
dek_sources:
  - name: orders
    driver: sqlite
    dsn: app.db
    table: deks
    id_column: id
    wrapped_column: w
    version_column: v
`
	for _, tc := range []struct {
		name, rest, path, want string
	}{
		{"unknown format", "    key: payments\n    format: gcp-native\n", "dek_sources[0].format", `unknown source format "gcp-native"`},
		{"context without native", "    key: payments\n    encryption_context: {a: b}\n", "dek_sources[0].encryption_context", "only for format: aws-native"},
		{"context not a mapping", "    key: payments\n    format: aws-native\n    encryption_context: [a, b]\n", "dek_sources[0].encryption_context", "expected a mapping"},
		{"reserved name", "    key: payments\n    format: aws-native\n    encryption_context: {\"aws:x\": y}\n", `dek_sources[0].encryption_context["aws:x"]`, "reserved by AWS"},
		{"empty value", "    key: payments\n    format: aws-native\n    encryption_context: {a: \"\"}\n", "dek_sources[0].encryption_context.a", "empty value"},
		{"null value", "    key: payments\n    format: aws-native\n    encryption_context: {a: }\n", "dek_sources[0].encryption_context.a", "empty"},
		{"key on a local backend", "    key: onlocal\n    format: aws-native\n", "dek_sources[0].format", "needs key onlocal on an awskms backend"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ps := problemsOf(t, head+tc.rest, nil)
			for _, p := range ps {
				if p.Path == tc.path && strings.Contains(p.Message, tc.want) {
					return
				}
			}
			t.Errorf("no problem at %s containing %q; got %+v", tc.path, tc.want, ps)
		})
	}
	if c := mustParse(t, head+"    key: payments\n    format: aws-native\n", nil); c.DEKSources[0].EncryptionContext != nil {
		t.Errorf("no encryption_context parsed as %v", c.DEKSources[0].EncryptionContext)
	}
}

package redact

import (
	"strings"
	"testing"
)

func TestDSN(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"/x/rekey.db", "/x/rekey.db"},
		{"postgres://rekey:pw@db:5432/rekey?sslmode=disable", "postgres://rekey:xxxxx@db:5432/rekey?sslmode=disable"},
		{"postgresql://rekey:p%40ss@db/rekey", "postgresql://rekey:xxxxx@db/rekey"},
		{"postgres://rekey@db/rekey", "postgres://rekey@db/rekey"},
		{"postgres://db/rekey", "postgres://db/rekey"},
		{"host=db user=rekey password=pw dbname=rekey", "host=db user=rekey password=xxxxx dbname=rekey"},
		{"host=db password = pw dbname=rekey", "host=db password = xxxxx dbname=rekey"},
		{`host=db password='p w\'x' dbname=rekey`, "host=db password=xxxxx dbname=rekey"},
		{"host=db sslpassword=pw", "host=db sslpassword=xxxxx"},
		{"host=db user=rekey", "host=db user=rekey"},
	}
	for _, tt := range tests {
		if got := DSN(tt.in); got != tt.want {
			t.Errorf("DSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestText(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"kms:aws unreachable: timeout", "kms:aws unreachable: timeout"},
		{"dial postgres://rekey:s3cr3t@db:5432/rekey failed", "dial postgres://REDACTED@db:5432/rekey failed"},
		{"GET https://ghp_tok3n@api.example/v1: 401", "GET https://REDACTED@api.example/v1: 401"},
		{"https://u:p@ss@host/x", "https://REDACTED@host/x"},
		{"https://host/path?q=a@b", "https://host/path?q=a@b"},
		{
			"primary postgres://a:one@db1/x failed, then https://b:two@kms.example said no, and vault at http://v:8200 too",
			"primary postgres://REDACTED@db1/x failed, then https://REDACTED@kms.example said no, and vault at http://v:8200 too",
		},
		{"host=db user=rekey password=s3cr3t dbname=x", "host=db user=rekey password=REDACTED dbname=x"},
		{"token='abc def' next", "token=REDACTED next"},
		{`password="a \"b\" c" next`, "password=REDACTED next"},
		{`host=db password='p w\'x' dbname=rekey`, "host=db password=REDACTED dbname=rekey"},
		{"PASSWORD = hunter2;", "PASSWORD = REDACTED;"},
		{"a?api_key=k1&access-key=k2&x=1", "a?api_key=REDACTED&access-key=REDACTED&x=1"},
		{"aws_secret_access_key=abc sslpassword=def", "aws_secret_access_key=REDACTED sslpassword=REDACTED"},
		{"tokens: 3, keyring=main", "tokens: 3, keyring=main"},
	}
	for _, tt := range tests {
		if got := Text(tt.in); got != tt.want {
			t.Errorf("Text(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzText: whatever the text, a password planted in a URL's user
// information or a password= pair does not come out.
func FuzzText(f *testing.F) {
	f.Add("before ", " after")
	f.Add("x@", "@y")
	f.Add("", "/")
	f.Fuzz(func(t *testing.T, before, after string) {
		const secret = "Zq7secretVALUE"
		for _, s := range []string{
			before + "postgres://user:" + secret + "@host/db" + after,
			before + " password=" + secret + " " + after,
		} {
			if got := Text(s); strings.Contains(got, secret) && !strings.Contains(before+after, secret) {
				t.Fatalf("Text(%q) = %q keeps the secret", s, got)
			}
		}
	})
}

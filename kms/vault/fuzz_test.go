package vault

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strconv"
	"testing"

	"github.com/rekeyhq/rekey"
)

// FuzzParseWrapped: parseWrapped never panics, fails only with
// ErrInvalidCiphertext, and accepts only the one canonical spelling of a
// ciphertext (so that no two byte strings unwrap to one DEK).
func FuzzParseWrapped(f *testing.F) {
	f.Add([]byte("vault:v1:" + base64.StdEncoding.EncodeToString(make([]byte, 60))))
	f.Add([]byte("vault:v12:" + base64.StdEncoding.EncodeToString(make([]byte, 29))))
	f.Add([]byte("vault:v0:AAAA"))
	f.Add([]byte("vault:v1:"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, w []byte) {
		v, err := parseWrapped(w)
		if err != nil {
			if !errors.Is(err, rekey.ErrInvalidCiphertext) {
				t.Fatalf("error %v does not match ErrInvalidCiphertext", err)
			}
			return
		}
		if v < 1 {
			t.Fatalf("version %d accepted", v)
		}
		payload := w[len("vault:v"+strconv.Itoa(v)+":"):]
		raw, err := base64.StdEncoding.DecodeString(string(payload))
		if err != nil || len(raw) < minCiphertext {
			t.Fatalf("accepted a payload that does not decode to a ciphertext: %v", err)
		}
		canon := []byte("vault:v" + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(raw))
		if !bytes.Equal(canon, w) {
			t.Fatalf("accepted a non-canonical spelling %q (canonical %q)", w, canon)
		}
	})
}

package config

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
)

// TestReadErrorSaysWhy: a config that cannot be read says so and why
// (permission, missing), never that it is not valid.
func TestReadErrorSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
		is   error
	}{
		{&fs.PathError{Op: "open", Path: "c.yaml", Err: fs.ErrPermission}, "permission denied: make it readable", fs.ErrPermission},
		{&fs.PathError{Op: "open", Path: "c.yaml", Err: fs.ErrNotExist}, "it does not exist: check --config", fs.ErrNotExist},
	} {
		err := readError("c.yaml", tc.err)
		if !strings.Contains(err.Error(), "c.yaml cannot be read: "+tc.want) || !errors.Is(err, tc.is) {
			t.Errorf("readError(%v) = %v", tc.err, err)
		}
		var ve *ValidationError
		if errors.As(err, &ve) {
			t.Errorf("readError(%v) is a ValidationError", tc.err)
		}
	}
}

// TestEchoTruncates: a long value is cut to maxEcho bytes with its size; a
// short one is printed whole.
func TestEchoTruncates(t *testing.T) {
	if got := fmt.Sprintf("%q", echo("5x")); got != `"5x"` {
		t.Errorf("short value: %s", got)
	}
	long := strings.Repeat("é", 1000) // 2000 bytes, cut inside a rune
	got := fmt.Sprintf("bad duration %q", echo(long))
	if len(got) > 250 || !strings.HasSuffix(got, "…(2000 bytes)") || strings.Contains(got, `\x`) {
		t.Errorf("long value: %d bytes: %s", len(got), got)
	}
	_, err := Parse([]byte("version: 1\nworker: {check_interval: "+strings.Repeat("x", 1<<20)+"}\n"), ".")
	if err == nil || len(err.Error()) > 4096 || !strings.Contains(err.Error(), "(1048576 bytes)") {
		t.Errorf("Parse of a 1 MB value: %d bytes of error", len(fmt.Sprint(err)))
	}
}

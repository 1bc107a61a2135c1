package audit

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestCheckpointMessage(t *testing.T) {
	t.Parallel()
	m := checkpointMessage(7, "abc")
	want := binary.BigEndian.AppendUint64(nil, uint64(len(checkpointTag)))
	want = append(want, checkpointTag...)
	want = binary.BigEndian.AppendUint64(want, 7)
	want = binary.BigEndian.AppendUint64(want, 3)
	want = append(want, "abc"...)
	if !bytes.Equal(m, want) {
		t.Errorf("checkpointMessage(7, abc) = %x, want %x", m, want)
	}
	if checkpointTag != "rekey.audit.checkpoint.v1" {
		t.Errorf("the domain tag changed: every stored checkpoint would fail")
	}
	distinct := map[string]bool{}
	for _, c := range []struct {
		seq  int64
		hash string
	}{{7, "abc"}, {8, "abc"}, {7, "abd"}, {7, "ab"}, {0, ""}, {1 << 40, "abc"}} {
		k := string(checkpointMessage(c.seq, c.hash))
		if distinct[k] {
			t.Errorf("checkpointMessage(%d, %q) collides", c.seq, c.hash)
		}
		distinct[k] = true
	}
}

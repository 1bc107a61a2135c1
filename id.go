package rekey

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// crockford is Crockford's base32 alphabet; its byte order equals its
// character order, so ids sort as text in creation order.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// IDLen is the length of every id NewID returns.
const IDLen = 26

var idState struct {
	sync.Mutex
	lastMS uint64
	last   [10]byte
}

// NewID returns a 26-character, time-ordered, unique id (the ULID layout: 48
// bits of milliseconds then 80 random bits, Crockford base32). Within one
// millisecond in one process, ids increase strictly, so DEKs created in a
// batch list in creation order.
func NewID() string {
	var b [16]byte
	ms := uint64(time.Now().UnixMilli())
	idState.Lock()
	if ms <= idState.lastMS {
		ms = idState.lastMS
		// increment the 80-bit random part
		for i := 9; i >= 0; i-- {
			idState.last[i]++
			if idState.last[i] != 0 {
				break
			}
		}
	} else {
		idState.lastMS = ms
		if _, err := rand.Read(idState.last[:]); err != nil {
			panic(fmt.Sprintf("rekey: crypto/rand failed: %v", err))
		}
		idState.last[0] &= 0x7f // leave room to increment without overflow
	}
	copy(b[6:], idState.last[:])
	idState.Unlock()
	var t [8]byte
	binary.BigEndian.PutUint64(t[:], ms)
	copy(b[:6], t[2:])
	return encodeCrockford(b)
}

func encodeCrockford(b [16]byte) string {
	// 128 bits -> 26 chars (130 bits, top 2 zero)
	var out [IDLen]byte
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	for i := IDLen - 1; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// ValidID reports whether s has the shape of an id from NewID.
func ValidID(s string) bool {
	if len(s) != IDLen || s[0] > '7' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' && c != 'I' && c != 'L' && c != 'O' && c != 'U') {
			return false
		}
	}
	return true
}

package rekey

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// AuditType is the type of an audit event.
type AuditType string

// Audit event types (contract: DESIGN.md).
const (
	AuditKeyCreated               AuditType = "key.created"
	AuditPolicyChanged            AuditType = "policy.changed"
	AuditRotationStarted          AuditType = "rotation.started"
	AuditVersionCreated           AuditType = "version.created"
	AuditVersionAdopted           AuditType = "version.adopted"
	AuditRewrapProgress           AuditType = "rewrap.progress"
	AuditRotationCommitted        AuditType = "rotation.committed"
	AuditRotationCompleted        AuditType = "rotation.completed"
	AuditRotationFailed           AuditType = "rotation.failed"
	AuditVersionPendingRetirement AuditType = "version.pending_retirement"
	AuditVersionRetired           AuditType = "version.retired"
	AuditVersionDestroyed         AuditType = "version.destroyed"
	AuditRetirementBlocked        AuditType = "retirement.blocked"
	AuditVersionCompromised       AuditType = "version.compromised"
	// AuditDestroyBlocked: a version due for destruction could not be
	// destroyed for a reason only the operator can fix (the event's error
	// says what to do); rekey tries again every cycle.
	AuditDestroyBlocked AuditType = "destroy.blocked"
)

// AuditEvent is one entry of the append-only, hash-chained audit trail.
// Seq, PrevHash and Hash are set by the store when it appends the event.
type AuditEvent struct {
	Seq              int64     `json:"seq"`
	Time             time.Time `json:"time"`
	Type             AuditType `json:"type"`
	Key              string    `json:"key"`
	FromVersion      int       `json:"from_version"`
	ToVersion        int       `json:"to_version"`
	RotationID       string    `json:"rotation_id"`
	DEKs             int64     `json:"deks"`
	Status           string    `json:"status"`
	Error            string    `json:"error"`
	Actor            string    `json:"actor"`
	Reason           string    `json:"reason"`
	BackendRequestID string    `json:"backend_request_id"`
	PrevHash         string    `json:"prev_hash"`
	Hash             string    `json:"hash"`
}

// GenesisHash is the PrevHash of the first event of a trail.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// ComputeHash returns the hex SHA-256 of the canonical encoding of e (every
// field but Hash, PrevHash included). The encoding is a domain tag then each
// field in a fixed order, integers as 8-byte big-endian and strings
// length-prefixed, so no two different events encode alike. Time counts at
// microsecond precision in UTC (see NormalizeTime).
func (e AuditEvent) ComputeHash() string {
	h := sha256.New()
	var n [8]byte
	putInt := func(v int64) {
		binary.BigEndian.PutUint64(n[:], uint64(v))
		h.Write(n[:])
	}
	putStr := func(s string) {
		putInt(int64(len(s)))
		h.Write([]byte(s))
	}
	putStr("rekey.audit.v1")
	putInt(e.Seq)
	t := NormalizeTime(e.Time)
	if t.IsZero() {
		putInt(0)
	} else {
		putInt(t.UnixMicro())
	}
	putStr(string(e.Type))
	putStr(e.Key)
	putInt(int64(e.FromVersion))
	putInt(int64(e.ToVersion))
	putStr(e.RotationID)
	putInt(e.DEKs)
	putStr(e.Status)
	putStr(e.Error)
	putStr(e.Actor)
	putStr(e.Reason)
	putStr(e.BackendRequestID)
	putStr(e.PrevHash)
	return hex.EncodeToString(h.Sum(nil))
}

// Chain sets e's Seq, PrevHash and Hash so that it follows an event with
// sequence number prevSeq and hash prevHash (0 and GenesisHash for the
// first event). Stores call it inside the appending transaction.
func (e *AuditEvent) Chain(prevSeq int64, prevHash string) {
	e.Seq = prevSeq + 1
	e.PrevHash = prevHash
	e.Time = NormalizeTime(e.Time)
	e.Hash = e.ComputeHash()
}

// AuditCheckpoint is a MAC over the audit chain head at Seq, computed by a
// backend (see MACer) with a key the store does not hold. Because every
// event's hash covers the one before it, a valid checkpoint at Seq vouches
// for events 1..Seq: rewriting any of them, even with every later hash
// recomputed, changes the hash at Seq, and a new matching MAC cannot be
// made without the backend. The audit package makes and checks
// checkpoints; stores only keep them.
type AuditCheckpoint struct {
	Seq  int64  `json:"seq"`  // the event checkpointed (the head when it was made)
	Hash string `json:"hash"` // that event's Hash
	MAC  []byte `json:"mac"`  // the backend's MAC over (Seq, Hash)
	// KeyID says which backend and purpose made the MAC (for example
	// "local/audit.checkpoint"). It is informational: a verifier checks
	// every checkpoint with the key it is given, whatever KeyID says.
	KeyID     string    `json:"key_id"`
	CreatedAt time.Time `json:"created_at"`
}

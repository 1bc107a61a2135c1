package rekey

import (
	"testing"
	"time"
)

func TestAuditHashCoversEveryField(t *testing.T) {
	t.Parallel()
	base := AuditEvent{Seq: 3, Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), Type: AuditRotationCommitted,
		Key: "payments", FromVersion: 1, ToVersion: 2, RotationID: "r", DEKs: 10, Status: "success",
		Error: "", Actor: "w", Reason: "scheduled", BackendRequestID: "req", PrevHash: GenesisHash}
	h := base.ComputeHash()
	mutations := map[string]func(e *AuditEvent){
		"seq":        func(e *AuditEvent) { e.Seq++ },
		"time":       func(e *AuditEvent) { e.Time = e.Time.Add(time.Microsecond) },
		"type":       func(e *AuditEvent) { e.Type = AuditRotationFailed },
		"key":        func(e *AuditEvent) { e.Key = "payment" },
		"from":       func(e *AuditEvent) { e.FromVersion = 2 },
		"to":         func(e *AuditEvent) { e.ToVersion = 3 },
		"rotation":   func(e *AuditEvent) { e.RotationID = "s" },
		"deks":       func(e *AuditEvent) { e.DEKs = 11 },
		"status":     func(e *AuditEvent) { e.Status = "failure" },
		"error":      func(e *AuditEvent) { e.Error = "x" },
		"actor":      func(e *AuditEvent) { e.Actor = "v" },
		"reason":     func(e *AuditEvent) { e.Reason = "manual" },
		"request":    func(e *AuditEvent) { e.BackendRequestID = "" },
		"prev_hash":  func(e *AuditEvent) { e.PrevHash = "00" },
		"field move": func(e *AuditEvent) { e.Key, e.RotationID = "paymentsr", "" },
	}
	for name, m := range mutations {
		e := base
		m(&e)
		if e.ComputeHash() == h {
			t.Errorf("changing %s does not change the hash", name)
		}
	}
	// Sub-microsecond differences and time zones do not matter: the stores
	// keep microseconds in UTC.
	e := base
	e.Time = e.Time.Add(100 * time.Nanosecond).In(time.FixedZone("x", 3600))
	if e.ComputeHash() != h {
		t.Error("hash depends on sub-microsecond time or zone")
	}
}

func TestAuditChain(t *testing.T) {
	t.Parallel()
	a := AuditEvent{Type: AuditKeyCreated, Key: "k", Time: time.Now()}
	a.Chain(0, GenesisHash)
	b := AuditEvent{Type: AuditRotationStarted, Key: "k", Time: time.Now()}
	b.Chain(a.Seq, a.Hash)
	if a.Seq != 1 || b.Seq != 2 || b.PrevHash != a.Hash || a.Hash != a.ComputeHash() || b.Hash != b.ComputeHash() {
		t.Fatalf("chain broken: %+v %+v", a, b)
	}
}

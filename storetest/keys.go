package storetest

import (
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

func testKeysRoundTrip(t *testing.T, f *fixture) {
	names := []string{"zeta", "alpha", "mid.key_1-x"}
	want := map[string]rekey.Key{}
	wantVersions := map[string]rekey.KeyVersion{}
	for i, name := range names {
		k, v := f.newKey(name)
		k.Policy = rekey.Policy{
			RotationPeriod: time.Duration(i+1) * rekey.Day,
			RotateWithin:   time.Hour,
			NotifyWithin:   2 * time.Hour,
			Grace:          3 * time.Second,
			DestroyAfter:   time.Duration(i) * time.Minute,
			MaxEncryptions: int64(i) * 1000, // 0: the default
			RotateAt:       float64(i) * 0.25,
		}
		k.ExpiresAt = f.at(time.Duration(i) * time.Hour)
		if err := f.s.CreateKey(f.ctx, k, v); err != nil {
			t.Fatalf("CreateKey(%s): %v", name, err)
		}
		want[name] = normKey(k)
		// A first version given no expiry runs until the key's.
		v.ExpiresAt = k.ExpiresAt
		wantVersions[name] = normVersion(v)
	}
	for _, name := range names {
		equal(t, "GetKey("+name+")", normKey(f.getKey(t, name)), want[name])
		vs, err := f.s.ListVersions(f.ctx, name)
		if err != nil {
			t.Fatalf("ListVersions(%s): %v", name, err)
		}
		if len(vs) != 1 {
			t.Fatalf("ListVersions(%s) = %d versions, want 1", name, len(vs))
		}
		equal(t, "ListVersions("+name+")[0]", normVersion(vs[0]), wantVersions[name])
	}
	got, err := f.s.ListKeys(f.ctx)
	if err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	wantOrder := []string{"alpha", "mid.key_1-x", "zeta"}
	if len(got) != len(wantOrder) {
		t.Fatalf("ListKeys returned %d keys, want %d", len(got), len(wantOrder))
	}
	for i, k := range got {
		if k.Name != wantOrder[i] {
			t.Errorf("ListKeys[%d] = %s, want %s (ordered by name)", i, k.Name, wantOrder[i])
		}
		equal(t, "ListKeys["+k.Name+"]", normKey(k), want[k.Name])
	}
	// The time read back is the time written, normalised.
	if k := f.getKey(t, "alpha"); !sameTime(k.CreatedAt, rekey.NormalizeTime(f.t0)) || k.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want %v in UTC", k.CreatedAt, rekey.NormalizeTime(f.t0))
	}
}

func testKeysErrors(t *testing.T, f *fixture) {
	f.createKey(t, "exists")
	k, v := f.newKey("exists")
	bad, badV := f.newKey("Bad Name!")
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"duplicate", func() error { return f.s.CreateKey(f.ctx, k, v) }, rekey.ErrKeyExists},
		{"invalid name", func() error { return f.s.CreateKey(f.ctx, bad, badV) }, rekey.ErrInvalidArgument},
		{"GetKey unknown", func() error { _, err := f.s.GetKey(f.ctx, "nope"); return err }, rekey.ErrKeyNotFound},
		{"ListVersions unknown", func() error { _, err := f.s.ListVersions(f.ctx, "nope"); return err }, rekey.ErrKeyNotFound},
		{"UpdateKeyPolicy unknown", func() error {
			return f.s.UpdateKeyPolicy(f.ctx, "nope", rekey.DefaultPolicy(), f.t0, event(rekey.AuditPolicyChanged, "nope", f.t0))
		}, rekey.ErrKeyNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.auditLen(t)
			wantErr(t, tc.name, tc.call(), tc.want)
			if n := f.auditLen(t); n != before {
				t.Errorf("a failed write appended %d audit events", n-before)
			}
		})
	}
	if keys, err := f.s.ListKeys(f.ctx); err != nil || len(keys) != 1 {
		t.Errorf("ListKeys = %d keys, %v; want only the first key", len(keys), err)
	}
}

func testKeysUpdatePolicy(t *testing.T, f *fixture) {
	k := f.createKey(t, "payments")
	p := rekey.Policy{RotationPeriod: 30 * rekey.Day, RotateWithin: 2 * rekey.Day, NotifyWithin: 5 * rekey.Day, Grace: time.Hour, DestroyAfter: 60 * rekey.Day,
		MaxEncryptions: 1 << 20, RotateAt: 0.75}
	exp := f.at(30 * rekey.Day)
	if err := f.s.UpdateKeyPolicy(f.ctx, k.Name, p, exp, event(rekey.AuditPolicyChanged, k.Name, f.at(time.Second))); err != nil {
		t.Fatalf("UpdateKeyPolicy: %v", err)
	}
	got := f.getKey(t, k.Name)
	equal(t, "policy", got.Policy, p)
	if !sameTime(got.ExpiresAt, exp) {
		t.Errorf("ExpiresAt = %v, want %v", got.ExpiresAt, rekey.NormalizeTime(exp))
	}
	if got.ActiveVersion != 1 || got.Backend != k.Backend || got.BackendRef != k.BackendRef || !sameTime(got.CreatedAt, k.CreatedAt) {
		t.Errorf("UpdateKeyPolicy changed other fields: %+v", got)
	}
	evs := f.allAudit(t)
	if len(evs) != 1 || evs[0].Type != rekey.AuditPolicyChanged || evs[0].Key != k.Name {
		t.Errorf("audit after UpdateKeyPolicy = %+v, want one policy.changed event", evs)
	}
}

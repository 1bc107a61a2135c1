package rekey_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	def := rekey.DefaultPolicy()
	with := func(change func(p *rekey.Policy)) rekey.Policy {
		p := def
		change(&p)
		return p
	}
	tests := []struct {
		name string
		p    rekey.Policy
		want string // "" = valid
	}{
		{"default", def, ""},
		{"short windows", rekey.Policy{RotationPeriod: 3 * time.Second, RotateWithin: time.Second, NotifyWithin: 14 * rekey.Day}, ""},
		{"notify equal to rotate", with(func(p *rekey.Policy) { p.NotifyWithin = p.RotateWithin }), ""},
		{"zero period", with(func(p *rekey.Policy) { p.RotationPeriod = 0 }), "rotation_period must be positive"},
		{"rotate_within as long as the period", rekey.Policy{RotationPeriod: time.Hour, RotateWithin: time.Hour, NotifyWithin: 2 * time.Hour},
			"rotate_within 1h0m0s is not shorter than rotation_period 1h0m0s"},
		{"rotate_within longer than the period (key create --period 1h --rotate-within 2h)", with(func(p *rekey.Policy) {
			p.RotationPeriod, p.RotateWithin = time.Hour, 2*time.Hour
		}), "rotate_within 2h0m0s is not shorter than rotation_period 1h0m0s"},
		{"notify_within shorter than rotate_within", with(func(p *rekey.Policy) { p.RotateWithin = 20 * rekey.Day }),
			"notify_within 14d is shorter than rotate_within 20d: the key would be due before it is reported due soon; set notify_within to 20d or more"},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: Validate() = %v, want nil", tt.name, err)
		case tt.want != "" && (!errors.Is(err, rekey.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: Validate() = %v, want ErrInvalidArgument with %q", tt.name, err, tt.want)
		}
	}
}

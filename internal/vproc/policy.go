package vproc

import "fmt"

// Policy is the seed's inherited launch policy: where a process's children go
// when it does not name an OSlet. A process and its descendants share it.
type Policy string

// The launch policies.
const (
	// PolicyLocal keeps children on the caller's OSlet (the default, "to
	// prevent too many surprises").
	PolicyLocal Policy = "local"
	// PolicyRoundRobin places successive children on successive OSlets.
	PolicyRoundRobin Policy = "round-robin"
	// PolicyLeastLoaded places a child on the OSlet with the fewest runnable processes
	// per CPU.
	PolicyLeastLoaded Policy = "least-loaded"
)

// ParsePolicy checks a policy name; the empty string means "inherit".
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case "", PolicyLocal, PolicyRoundRobin, PolicyLeastLoaded:
		return p, nil
	}
	return "", fmt.Errorf("unknown launch policy %q: want local, round-robin or least-loaded", s)
}

// Spreads reports whether the policy places new programs on other OSlets.
func (p Policy) Spreads() bool { return p == PolicyRoundRobin || p == PolicyLeastLoaded }

package plan

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Set is a set of CPU or memory-node numbers, written as the kernel writes
// cpuset lists ("0-3,8"). It is kept sorted and free of duplicates.
type Set []int

// ParseSet parses a kernel list such as "0-3,8". The empty string is the
// empty set.
func ParseSet(s string) (Set, error) {
	var out Set
	s = strings.TrimSpace(s)
	if s == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("bad list %q: %q is not a number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("bad list %q: bad range %q", s, part)
			}
		}
		if b-a > 1<<16 {
			return nil, fmt.Errorf("bad list %q: range %q is too large", s, part)
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// String writes the set as a kernel list.
func (s Set) String() string {
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j == i {
			fmt.Fprintf(&b, "%d", s[i])
		} else {
			fmt.Fprintf(&b, "%d-%d", s[i], s[j])
		}
		i = j + 1
	}
	return b.String()
}

// Contains reports whether n is in the set.
func (s Set) Contains(n int) bool {
	_, ok := slices.BinarySearch(s, n)
	return ok
}

// MarshalJSON writes the set as a kernel list string, so plans stay easy to
// edit by hand.
func (s Set) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a kernel list string.
func (s *Set) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("want a list such as \"0-3,8\": %w", err)
	}
	set, err := ParseSet(str)
	if err != nil {
		return err
	}
	*s = set
	return nil
}

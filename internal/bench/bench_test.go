package bench

import (
	"fmt"
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	tests := []struct {
		name       string
		s, n       Measure
		limit      float64
		ratio      float64
		target     string
		met, judge bool
	}{
		{"cost met", Measure{Value: 30, Unit: "ns/op"}, Measure{Value: 20, Unit: "ns/op"}, 1.5, 1.5, "<= 1.5", true, true},
		{"cost missed", Measure{Value: 40, Unit: "ns/op"}, Measure{Value: 20, Unit: "ns/op"}, 1.5, 2, "<= 1.5", false, true},
		{"rate met", Measure{Value: 99, Unit: "MB/s"}, Measure{Value: 100, Unit: "MB/s"}, 0.95, 0.99, ">= 0.95", true, true},
		{"rate missed", Measure{Value: 50, Unit: "MB/s"}, Measure{Value: 100, Unit: "MB/s"}, 0.95, 0.5, ">= 0.95", false, true},
		{"no target", Measure{Value: 50, Unit: "ns/op"}, Measure{Value: 100, Unit: "ns/op"}, 0, 0.5, "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := compare(tt.name, tt.s, tt.n, tt.limit)
			if r.Ratio != tt.ratio || r.Target != tt.target {
				t.Fatalf("ratio %v target %q, want %v %q", r.Ratio, r.Target, tt.ratio, tt.target)
			}
			if (r.Met != nil) != tt.judge || (r.Met != nil && *r.Met != tt.met) {
				t.Fatalf("met = %v, want %v (judged %v)", r.Met, tt.met, tt.judge)
			}
		})
	}
}

func TestParseReport(t *testing.T) {
	if c, ns, err := parseReport("12 3400\n"); err != nil || c != 12 || ns != 3400 {
		t.Fatalf("got %v %v %v", c, ns, err)
	}
	for _, bad := range []string{"", "12", "a b", "12 0", "1 2 3"} {
		if _, _, err := parseReport(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestDefaultSizes(t *testing.T) {
	tests := []struct {
		ncpu, per int
		sizes     string
	}{
		{1, 1, "[1]"}, {2, 1, "[1 2]"}, {6, 1, "[1 2 4]"}, {16, 2, "[1 2 4 8]"}, {64, 8, "[1 2 4 8]"},
	}
	for _, tt := range tests {
		sizes, per := DefaultSizes(tt.ncpu)
		if per != tt.per || fmt.Sprint(sizes) != tt.sizes {
			t.Errorf("DefaultSizes(%d) = %v, %d; want %s, %d", tt.ncpu, sizes, per, tt.sizes, tt.per)
		}
	}
}

func TestPrint(t *testing.T) {
	var b strings.Builder
	Print(&b, []Result{compare("null-call", Measure{"smpc side", 45000, "ns/op"}, Measure{"native side", 50000, "ns/op"}, 1.5)})
	for _, want := range []string{"null-call", "45µs/op", "50µs/op", "0.90", "<= 1.5", "ok", "smpc side / native side"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

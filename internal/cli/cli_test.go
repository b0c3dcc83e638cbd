package cli

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func TestParseKillArgs(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		sig     unix.Signal
		targets []string
		list    bool
		err     string
	}{
		{args: []string{"12"}, sig: unix.SIGTERM, targets: []string{"12"}},
		{args: []string{"-9", "12", "13"}, sig: unix.SIGKILL, targets: []string{"12", "13"}},
		{args: []string{"-KILL", "-38"}, sig: unix.SIGKILL, targets: []string{"-38"}},
		{args: []string{"-s", "HUP", "-38"}, sig: unix.SIGHUP, targets: []string{"-38"}},
		{args: []string{"--", "-38"}, sig: unix.SIGTERM, targets: []string{"-38"}},
		{args: []string{"-SIGUSR1", "7"}, sig: unix.SIGUSR1, targets: []string{"7"}},
		{args: []string{"-l"}, list: true},
		{args: []string{"-9"}, err: "no process named"},
		{args: []string{"-NOSUCH", "1"}, err: "NOSUCH"},
		{args: []string{"-s"}, err: "-s needs a signal"},
	} {
		sig, targets, list, err := parseKillArgs(tt.args)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("kill %v: error %v, want one with %q", tt.args, err, tt.err)
			}
			continue
		}
		if err != nil || list != tt.list || (!list && (sig != tt.sig || !slices.Equal(targets, tt.targets))) {
			t.Errorf("kill %v = %v %v %v %v; want %v %v %v", tt.args, sig, targets, list, err, tt.sig, tt.targets, tt.list)
		}
	}
}

func TestPrintable(t *testing.T) {
	if got := printable("python3 -c\nimport os\tx\x7f"); got != "python3 -c?import os?x?" {
		t.Errorf("printable = %q", got)
	}
	if got := printable("make -j4 ünïcode"); got != "make -j4 ünïcode" {
		t.Errorf("printable changed a printable line: %q", got)
	}
}

// An OSlet flag given as 0 or less is refused; left out, it is not.
func TestCheckOSlet(t *testing.T) {
	for _, tt := range []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"--on", "2"}, true},
		{[]string{"--on", "0"}, false},
		{[]string{"--on", "-3"}, false},
	} {
		var on int
		cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
		cmd.Flags().IntVar(&on, "on", 0, "")
		if err := cmd.ParseFlags(tt.args); err != nil {
			t.Fatal(err)
		}
		if err := checkOSlet(cmd, "on", on); (err == nil) != tt.ok {
			t.Errorf("%v: %v", tt.args, err)
		}
	}
}

// Plan flags given as 0 ask for nothing and are refused before any probe
// of the machine.
func TestPlanFlagsRefuseZero(t *testing.T) {
	for _, args := range [][]string{{"--oslets", "0"}, {"--cpus-per-oslet", "0"}, {"--oslets", "-1"}} {
		var f PlanFlags
		cmd := &cobra.Command{Use: "plan"}
		f.Add(cmd, true)
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Make(); err == nil || !strings.Contains(err.Error(), "give at least 1") {
			t.Errorf("%v: %v", args, err)
		}
	}
}

// smpc finds smpcd beside itself first.
func TestFindFirmware(t *testing.T) {
	dir := t.TempDir()
	self := dir + "/smpc"
	if err := writeExec(dir + "/smpcd"); err != nil {
		t.Fatal(err)
	}
	if got := mustFind(t, self); got != dir+"/smpcd" {
		t.Errorf("findFirmware = %s, want the one beside smpc", got)
	}
}

func mustFind(t *testing.T, self string) string {
	t.Helper()
	p, err := findFirmware(self)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writeExec(path string) error {
	return os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755)
}

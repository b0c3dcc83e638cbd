package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// The one-line descriptions of the firmware's commands, which smpc lists
// too.
const (
	BootShort     = "Partition this machine into OSlets and start them (root)"
	ShutdownShort = "Stop the cluster and remove everything it made"
)

// FirmwareBinary is the name of the boot firmware's binary.
const FirmwareBinary = "smpcd"

// EnvClientBinary passes smpc's own path to the smpcd it executes, so that
// the boot puts this, the small binary, on the OSlets' PATH.
const EnvClientBinary = "SMPC_CLIENT_BINARY"

// forwardCmd is a command of the firmware's as smpc lists it: running it
// executes smpcd with smpc's whole command line, so that smpcd parses it
// (its help too) exactly as smpc would have.
func forwardCmd(name, short string) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		Short:              short,
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("%s: find smpc's own binary: %w", name, err)
			}
			if self, err = filepath.EvalSymlinks(self); err != nil {
				return fmt.Errorf("%s: find smpc's own binary: %w", name, err)
			}
			firmware, err := findFirmware(self)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			env := append(os.Environ(), EnvClientBinary+"="+self)
			// argv[0] stays "smpc": smpcd's help and errors then name the
			// command the user typed.
			err = unix.Exec(firmware, append([]string{"smpc"}, os.Args[1:]...), env)
			return fmt.Errorf("%s: execute %s: %w", name, firmware, err)
		},
	}
}

// findFirmware finds smpcd beside smpc's binary, else on PATH.
func findFirmware(self string) (string, error) {
	beside := filepath.Join(filepath.Dir(self), FirmwareBinary)
	if unix.Access(beside, unix.X_OK) == nil {
		return beside, nil
	}
	if p, err := exec.LookPath(FirmwareBinary); err == nil {
		return p, nil
	} else if !errors.Is(err, exec.ErrNotFound) {
		return "", err
	}
	return "", fmt.Errorf("the boot firmware's binary, %s, is neither beside %s nor on PATH (build both with 'go build -o DIR ./cmd/...')", FirmwareBinary, self)
}

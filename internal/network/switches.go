package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The host's switches that a cluster's network needs on: IPv4 and IPv6
// forwarding, and accept_ra raised to 2 where it was 1. IPv6 forwarding is
// one switch for the whole host, and a host that forwards ignores router
// advertisements on every interface whose accept_ra is 1, and drops the
// default routes they gave it: a host that took its IPv6 route from its
// router would lose it at boot. accept_ra=2 accepts them while forwarding,
// so every accept_ra of 1 goes to 2 first (the "default" entry too, for
// interfaces made later), and back after forwarding goes off.
//
// The switches belong to the host, not to one cluster: two clusters may run at
// once, and the first to boot is not always the last to shut down. Putting
// the switches back when the first one goes would cut the other off from
// the world. So the values from before the first cluster changed them are
// kept in one host-wide file, with the clusters that need them now, and
// the last cluster to go puts them back. A cluster that crashed is dropped
// from the file by the next one that claims or releases the switches.
var (
	switchesPath = "/run/smpc-network-switches.json"
	switchesLock = "/run/smpc-network-switches.lock"
)

// hostSwitches is that file.
type hostSwitches struct {
	// Was holds each switch's value before a cluster changed it, in the
	// order of the changes: they are undone in reverse, so that IPv6
	// forwarding goes off before accept_ra goes back to 1.
	Was []switchValue `json:"was"`
	// Users are the clusters that need the switches now: their bridge, to
	// their boot process.
	Users map[string]int `json:"users"`
}

// switchValue is a sysctl (relative to /proc/sys) and a value of it.
type switchValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

const (
	ipv4Forwarding = "net/ipv4/ip_forward"
	ipv6Forwarding = "net/ipv6/conf/all/forwarding"
)

// claimSwitches turns on what the cluster of r needs, for as long as it
// runs, and records it as a user.
func claimSwitches(r *Record) error {
	return withSwitches(func(s *hostSwitches) error {
		s.prune(r.Bridge)
		s.Users[r.Bridge] = os.Getpid()
		if err := s.set(ipv4Forwarding, "1"); err != nil {
			return fmt.Errorf("enable IPv4 forwarding: %w", err)
		}
		if !r.HasIPv6() {
			return nil
		}
		if v, err := readSysctl(ipv6Forwarding); err != nil || v != "1" {
			confs, err := os.ReadDir("/proc/sys/net/ipv6/conf")
			if err != nil {
				return fmt.Errorf("list IPv6 interfaces: %w", err)
			}
			for _, c := range confs {
				name := "net/ipv6/conf/" + c.Name() + "/accept_ra"
				if c.Name() == "all" || c.Name() == r.Bridge {
					continue
				}
				if v, err := readSysctl(name); err != nil || v != "1" {
					continue
				}
				if err := s.set(name, "2"); err != nil {
					return fmt.Errorf("keep accepting router advertisements on %s while forwarding: %w", c.Name(), err)
				}
			}
		}
		if err := s.set(ipv6Forwarding, "1"); err != nil {
			return fmt.Errorf("enable IPv6 forwarding: %w", err)
		}
		return nil
	})
}

// releaseSwitches drops the cluster of r from the users, and puts the
// switches back if no cluster needs them any more.
func releaseSwitches(r *Record) error {
	return withSwitches(func(s *hostSwitches) error {
		s.prune(r.Bridge)
		if len(s.Users) > 0 {
			return nil
		}
		var errs []error
		for _, w := range slices.Backward(s.Was) {
			// An interface gone since has nothing to put back.
			if err := writeSysctl(w.Name, w.Value); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		s.Was = nil
		return errors.Join(errs...)
	})
}

// set turns switch name to value, recording the value it had unless a
// cluster changed it already.
func (s *hostSwitches) set(name, value string) error {
	was, err := readSysctl(name)
	if err != nil {
		return err
	}
	if was == value {
		return nil
	}
	if !slices.ContainsFunc(s.Was, func(w switchValue) bool { return w.Name == name }) {
		s.Was = append(s.Was, switchValue{name, was})
	}
	return writeSysctl(name, value)
}

// prune drops the user self, and the users that are gone: whose boot
// process has ended or whose bridge is no more (a crash, then the next
// boot's clean-up).
func (s *hostSwitches) prune(self string) {
	for bridge, pid := range s.Users {
		_, err := netlink.LinkByName(bridge)
		if bridge == self || unix.Kill(pid, 0) == unix.ESRCH || err != nil {
			delete(s.Users, bridge)
		}
	}
}

// withSwitches runs f on the host's switches file under its lock, and
// saves what f leaves, whether f fails or not (a switch it turned is
// turned).
func withSwitches(f func(*hostSwitches) error) error {
	lock, err := os.OpenFile(switchesLock, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("host switches: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("host switches: lock %s: %w", switchesLock, err)
	}
	s := &hostSwitches{}
	b, err := os.ReadFile(switchesPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("host switches: %w", err)
	default:
		if err := json.Unmarshal(b, s); err != nil {
			return fmt.Errorf("host switches: %s: %w", switchesPath, err)
		}
	}
	if s.Users == nil {
		s.Users = map[string]int{}
	}
	ferr := f(s)
	if len(s.Users) == 0 && len(s.Was) == 0 {
		if err := os.Remove(switchesPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return errors.Join(ferr, fmt.Errorf("host switches: %w", err))
		}
		return ferr
	}
	b, _ = json.Marshal(s)
	tmp := switchesPath + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return errors.Join(ferr, fmt.Errorf("host switches: %w", err))
	}
	if err := os.Rename(tmp, switchesPath); err != nil {
		return errors.Join(ferr, fmt.Errorf("host switches: %w", err))
	}
	return ferr
}

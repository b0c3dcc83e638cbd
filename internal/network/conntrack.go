package network

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// forgetUDPFlows removes the host's connection-tracking entries of UDP
// flows to the ports whose forward changed (appeared, moved to another
// OSlet, or went). NAT is decided at a flow's first packet: a client that
// was already sending when the forward appeared (started just before its
// server) keeps its first, unforwarded entry for as long as it keeps
// sending, and never reaches the server. TCP needs nothing of the kind: a
// connection attempt to a port with no forward is refused, not tracked on.
// It takes the flows of every family in fams.
func forgetUDPFlows(fams []ipFamily, old, new []forward) error {
	was := map[uint16]forward{}
	for _, f := range old {
		if f.proto == "udp" {
			was[f.port] = f
		}
	}
	var changed []uint16
	for _, f := range new {
		if f.proto != "udp" {
			continue
		}
		if w, ok := was[f.port]; !ok || w.to != f.to || w.to6 != f.to6 {
			changed = append(changed, f.port)
		}
		delete(was, f.port)
	}
	for port := range was {
		changed = append(changed, port) // the forward went
	}
	if len(changed) == 0 {
		return nil
	}
	var filters []netlink.CustomConntrackFilter
	for _, port := range changed {
		f := &netlink.ConntrackFilter{}
		if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
			return err
		}
		if err := f.AddPort(netlink.ConntrackOrigDstPort, port); err != nil {
			return err
		}
		filters = append(filters, f)
	}
	// A dump of a busy table may be interrupted by a change; the entries it
	// read are deleted all the same, and another pass takes the rest.
	var errs []error
	for _, fam := range fams {
		family := netlink.InetFamily(unix.AF_INET)
		if fam == familyIPv6 {
			family = unix.AF_INET6
		}
		var err error
		for try := 0; try < 5; try++ {
			if _, err = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...); !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("conntrack: forget the %s UDP flows of ports %v: %w", fam.name, changed, err))
		}
	}
	return errors.Join(errs...)
}

package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/statedir"
)

func portsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports",
		Short: "List the cluster's port map: which OSlet's process holds each TCP and UDP port",
		Long: `List every TCP and UDP port a process of an OSlet listens on: protocol, port,
the IP families it takes (4, 6 or 4+6), OSlet, PID, command, and what the
cluster does with it.

Ports are one namespace across the cluster. The first process to listen on a
port holds it: connections to that port on any of the host's addresses
(127.0.0.1 and ::1 included) and on the cluster's face (smpc-cluster inside
the OSlets) are forwarded to it, in the kernel, over IPv4 and IPv6 alike. A
process that listens on a port someone else holds has the port in its own
OSlet's stack only; it is listed as a conflict, with the holder (the host
itself shows as "host").

A TCP server bound to its OSlet's loopback alone (127.0.0.1:P or [::1]:P, as
databases and caches listen unless told otherwise) is the cluster's
localhost's: the host's and every OSlet's processes reach it at their own
127.0.0.1:P, [::1]:P and localhost:P (in the families it is bound in), and
nothing outside the machine does (scope "loopback" in --json).

An OSlet's processes reach any OSlet's server at their own localhost:P too,
unless their own OSlet listens on P: then they reach their own, as on one
machine.

The host and an OSlet on one port: whoever listened first holds it for
everyone, but the host's own clients (its processes connecting to any of its
addresses) always reach the host's own server, as they did before the
cluster. So a server the host starts on a port an OSlet holds serves the
host itself, and the OSlet's keeps serving the OSlets and the outside.
Forwards follow listeners within a second: they appear when a process starts
listening and go away when it stops.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				ports, err := c.Ports()
				if err != nil {
					return err
				}
				return printList(cmd.OutOrStdout(), asJSON, ports, "PROTO\tPORT\tIP\tOSLET\tPID\tCOMMAND\tSTATE",
					func(p smpc.Port) string {
						return fmt.Sprintf("%s\t%d\t%s\t%s\t%d\t%s\t%s", p.Proto, p.Port, ipFamilies(p.Families), osletName(p.OSlet), p.PID, orDash(p.Command), portState(p))
					})
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// ipFamilies shows a listener's families as the IP column does: 4, 6 or
// 4+6.
func ipFamilies(fams []string) string {
	var short []string
	for _, f := range fams {
		short = append(short, strings.TrimPrefix(f, "ipv"))
	}
	return orDash(strings.Join(short, "+"))
}

func osletName(k int) string {
	if k == statedir.HostListener {
		return "host"
	}
	return fmt.Sprint(k)
}

func portState(p smpc.Port) string {
	switch {
	case p.Forwarded && p.Scope == statedir.ScopeLoopback && p.NotFromHost:
		return "localhost of the OSlets (bound to loopback), but not of the host itself"
	case p.Forwarded && p.Scope == statedir.ScopeLoopback:
		return "localhost of the cluster (bound to loopback; not from outside)"
	case p.Forwarded && p.NotFromHost:
		return "forwarded, but not from the host itself"
	case p.Forwarded:
		return "forwarded"
	case p.HostClients:
		return fmt.Sprintf("the host's own clients (oslet %d holds the port)", p.Holder)
	case p.Conflict() && p.Holder == statedir.HostListener:
		return "conflict: held by the host"
	case p.Conflict():
		return fmt.Sprintf("conflict: held by oslet %d", p.Holder)
	default:
		return "host's own"
	}
}

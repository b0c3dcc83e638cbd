package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc/internal/plan"
	"github.com/smpc-cluster/smpc/internal/topology"
)

// PlanFlags are the flags that make a partition plan: plan's, and boot's.
type PlanFlags struct {
	cmd             *cobra.Command
	oslets, cpusPer int
	file            string
	subnet          string
	subnet6         string
	devices         []string // K=NAME
}

// Add adds the flags to cmd; withFile adds --plan FILE.
func (f *PlanFlags) Add(cmd *cobra.Command, withFile bool) {
	f.cmd = cmd
	cmd.Flags().IntVar(&f.oslets, "oslets", 0, "number of OSlets")
	cmd.Flags().IntVar(&f.cpusPer, "cpus-per-oslet", 0, "CPUs per OSlet")
	if withFile {
		cmd.Flags().StringVar(&f.file, "plan", "", "boot this plan (JSON from 'smpc plan --json')")
	}
	cmd.Flags().StringVar(&f.subnet, "subnet", "", "the cluster's IPv4 subnet: the bridge and one address per OSlet (default "+plan.DefaultSubnet+")")
	cmd.Flags().StringVar(&f.subnet6, "subnet6", "", "the cluster's IPv6 subnet, a unique local prefix such as fd12:3456:789a::/64 (default: a /64 in fd00::/8 derived from the state dir), or \"none\" for a cluster without IPv6")
	cmd.Flags().StringArrayVar(&f.devices, "device", nil, "give a device to an OSlet, as K=NAME (a network interface, or a block or character device in /dev); repeatable")
}

// Make returns the plan the flags ask for, checked against this machine.
func (f *PlanFlags) Make() (*plan.Plan, error) {
	// 0 is the flags' "unset"; given, it asks for nothing.
	for _, name := range []string{"oslets", "cpus-per-oslet"} {
		if v, _ := f.cmd.Flags().GetInt(name); f.cmd.Flags().Changed(name) && v < 1 {
			return nil, fmt.Errorf("--%s %d: give at least 1, or leave it out for the plan's choice", name, v)
		}
	}
	m, err := topology.Detect()
	if err != nil {
		return nil, err
	}
	var p *plan.Plan
	if f.file != "" {
		if f.oslets != 0 || f.cpusPer != 0 {
			return nil, fmt.Errorf("--plan cannot be combined with --oslets or --cpus-per-oslet")
		}
		r, err := os.Open(f.file)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		if p, err = plan.Read(r); err != nil {
			return nil, fmt.Errorf("%s: %w", f.file, err)
		}
	} else if p, err = plan.Make(m, plan.Options{OSlets: f.oslets, CPUsPerOSlet: f.cpusPer}); err != nil {
		return nil, err
	}
	if f.subnet != "" {
		p.Subnet = f.subnet
	}
	if f.subnet6 != "" {
		p.Subnet6 = f.subnet6
	}
	for _, d := range f.devices {
		k, name, ok := strings.Cut(d, "=")
		n, err := strconv.Atoi(k)
		if !ok || err != nil || name == "" {
			return nil, fmt.Errorf("--device %q: want K=NAME, such as 2=loop7", d)
		}
		i := slices.IndexFunc(p.OSlets, func(o plan.OSlet) bool { return o.Index == n })
		if i < 0 {
			return nil, fmt.Errorf("--device %q: the plan has no oslet %d", d, n)
		}
		p.OSlets[i].Devices = append(p.OSlets[i].Devices, name)
	}
	if err := p.Validate(m); err != nil {
		return nil, err
	}
	return p, nil
}

func planCmd() *cobra.Command {
	var f PlanFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Print how this machine would be partitioned into OSlets, without booting",
		Long: `Print a partition plan: for each OSlet its CPUs, memory nodes, memory share,
process limit and devices. By default OSlets get 4 to 8 CPUs, aligned to NUMA
nodes and L3 caches, never splitting a core's SMT siblings; a machine of fewer
than 8 CPUs gets two OSlets. --oslets N splits the machine into N OSlets,
--cpus-per-oslet K into OSlets of K CPUs; both together make N OSlets of K CPUs
and leave the other CPUs outside the cluster. --device K=NAME gives OSlet K a
device: a network interface moves into its network stack, a block or
character device is its alone, reached from the other OSlets as /rdev/K/NAME.
Devices not named belong to OSlet 1; the host's network interfaces stay the
cluster's one face to the network unless a plan gives one away.

Save a plan with --json, edit it, and boot it with 'smpc boot --plan FILE'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := f.Make()
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			}
			PrintPlan(cmd.OutOrStdout(), p)
			return nil
		},
	}
	f.Add(cmd, false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the plan as JSON")
	return cmd
}

// PrintPlan prints p as a table of its OSlets.
func PrintPlan(w io.Writer, p *plan.Plan) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OSLET\tCPUS\tMEMS\tMEMORY\tPIDS\tDEVICES")
	for _, o := range p.OSlets {
		dev := strings.Join(o.Devices, ",")
		if dev == "" {
			dev = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", o.Index, o.CPUs, o.Mems, plan.FormatBytes(o.Memory), o.Pids, dev)
	}
	tw.Flush()
}

package smpc

import (
	"errors"

	"github.com/smpc-cluster/smpc/internal/statedir"
)

// Port is one listener in the cluster's port map: a TCP or UDP port some
// process listens on, the OSlet it runs on, and whether the cluster's port
// leads to it.
type Port = statedir.Port

// Ports returns the cluster's port map as its forwarder last saw it (it
// looks several times a second): every port an OSlet's process listens on,
// in port order, and the host's own listeners on the same ports. A port
// with more than one listener is a conflict: the first holds the cluster's
// port, the others have it in their own OSlet's stack only.
func (c *Client) Ports() ([]Port, error) {
	c.learn()
	if c.stateDir == "" {
		return nil, errors.New("ports: this OSlet's init did not say where the cluster keeps its state (an older smpc)")
	}
	return statedir.ReadPorts(c.stateDir)
}

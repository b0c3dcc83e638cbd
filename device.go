package smpc

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/smpc-cluster/smpc/internal/fabric"
)

// Device is a device of an OSlet: its name in the owner's /dev, type,
// numbers, owner and mode.
type Device = fabric.Device

// Devices lists every OSlet's devices, by owner; an OSlet that is down is
// named in down and left out.
func (c *Client) Devices(ctx context.Context) (devs []Device, down []int, err error) {
	down, err = c.eachOSlet(func(k int) (func(), error) {
		var reply fabric.DeviceReply
		_, err := c.call(ctx, k, fabric.OpDevice, fabric.DeviceRequest{Cmd: fabric.DeviceList, On: k}, nil, &reply)
		return func() { devs = append(devs, reply.Devices...) }, err
	})
	slices.SortFunc(devs, func(a, b Device) int {
		if a.OSlet != b.OSlet {
			return a.OSlet - b.OSlet
		}
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	if err != nil {
		return nil, down, fmt.Errorf("devices: %w", err)
	}
	return devs, down, nil
}

// OpenDevice has OSlet k open its device name, for reading and also
// writing if write, and hand the descriptor over: k checks the caller's
// credentials against the device's owner and mode, as open(2) would.
// Programs that do not link this package open /rdev/K/NAME instead.
func (c *Client) OpenDevice(ctx context.Context, k int, name string, write bool) (*os.File, error) {
	var reply fabric.DeviceReply
	files, err := c.call(ctx, k, fabric.OpDevice, fabric.DeviceRequest{Cmd: fabric.DeviceOpen, On: k, Name: name, Write: write}, nil, &reply)
	if err != nil {
		fabric.CloseAll(files)
		return nil, fmt.Errorf("open device %d/%s: %w", k, name, err)
	}
	if len(files) != 1 {
		fabric.CloseAll(files)
		return nil, fmt.Errorf("open device %d/%s: got %d descriptors, want 1", k, name, len(files))
	}
	return files[0], nil
}

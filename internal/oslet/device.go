package oslet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/smpc-cluster/smpc/internal/device"
	"github.com/smpc-cluster/smpc/internal/fabric"
)

// deviceServe answers for devices: an open goes to the owner, which
// decides with the caller's credentials; a list describes the owner's
// devices.
func (i *Init) deviceServe(who *caller, req *fabric.DeviceRequest) (any, []*os.File, error) {
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return nil, nil, err
	}
	on := req.On
	if on == 0 {
		on = i.cfg.Index
	}
	p, err := i.forwardTo(who, on)
	if err != nil {
		return nil, nil, err
	}
	if p != nil {
		return forwardAs[fabric.DeviceReply](who.ctx, p, fabric.OpDevice, req, cred, nil)
	}
	c := cred
	switch req.Cmd {
	case fabric.DeviceList:
		return fabric.DeviceReply{Devices: device.Owned(i.cfg.Devices, on)}, nil, nil
	case fabric.DeviceOpen:
		flags := req.Flags
		if req.Write && flags&syscall.O_ACCMODE == syscall.O_RDONLY {
			flags |= syscall.O_RDWR // from a 1.2 OSlet
		}
		f, err := device.Open(i.cfg.Devices, on, req.Name, c, flags)
		if err != nil {
			return nil, nil, i.deviceError(err)
		}
		return fabric.DeviceReply{}, []*os.File{f}, nil
	}
	return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: unknown device command %q", i.cfg.Index, req.Cmd)
}

func (i *Init) deviceError(err error) error {
	if err == nil {
		return nil
	}
	return fabric.AsError(fmt.Errorf("oslet %d: %w", i.cfg.Index, err))
}

// openDevice serves an open of /rdev/K/NAME by a process of this OSlet: it
// asks K, with the process's credentials, to open its device and hand the
// descriptor over. The reply's errno becomes the open's (EACCES from the
// owner's check, say), and an owner that is down gives ENXIO.
func (i *Init) openDevice(ctx context.Context, k int, name string, flags int, c device.Cred) (*os.File, error) {
	cred := c
	req := fabric.DeviceRequest{Cmd: fabric.DeviceOpen, On: k, Name: name, OnBehalf: fabric.OnBehalf{Cred: &cred},
		Write: flags&syscall.O_ACCMODE != syscall.O_RDONLY, Flags: flags & (syscall.O_ACCMODE | device.OpenFlags)}
	who := &caller{role: fabric.RoleClient, cred: cred, ctx: ctx, origin: i.cfg.Index}
	_, files, err := i.deviceServe(who, &req)
	if err == nil && len(files) == 1 {
		return files[0], nil
	}
	fabric.CloseAll(files)
	if errors.Is(err, fabric.ErrDown) {
		return nil, syscall.ENXIO
	}
	if errno, ok := fabric.Errno(err); ok {
		return nil, errno
	}
	i.log.Info("rdev open failed", "device", fmt.Sprintf("%d/%s", k, name), "err", err)
	return nil, syscall.EIO
}

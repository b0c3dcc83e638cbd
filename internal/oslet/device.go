package oslet

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/smpc-cluster/smpc/internal/device"
	"github.com/smpc-cluster/smpc/internal/fabric"
)

// deviceServe answers for devices: a check or an open goes to the owner,
// which decides with the caller's credentials; a list describes this
// OSlet's own devices.
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
		fwd := *req
		fwd.Cred = &cred
		var reply fabric.DeviceReply
		files, err := p.call(who.ctx, fabric.OpDevice, fwd, nil, &reply)
		return reply, files, err
	}
	c := device.Cred{UID: cred.UID, GID: cred.GID, Groups: cred.Groups}
	switch req.Cmd {
	case fabric.DeviceList:
		var own []device.Device
		for _, d := range i.cfg.Devices {
			if d.OSlet == i.cfg.Index {
				if live, err := device.Lookup(d.Name); err == nil { // its mode as it is now
					live.OSlet = d.OSlet
					d = live
				}
				own = append(own, d)
			}
		}
		return fabric.DeviceReply{Devices: own}, nil, nil
	case fabric.DeviceCheck:
		_, err := device.Check(i.cfg.Devices, on, req.Name, c, device.ReadOrWrite)
		return fabric.DeviceReply{}, nil, i.deviceError(err)
	case fabric.DeviceOpen:
		f, err := device.Open(i.cfg.Devices, on, req.Name, c, req.Write)
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

// askDevice is the /rdev gate's question for an open by local process pid
// of OSlet k's device name: it asks k with the process's credentials, as
// the kernel has them now. A k that is down, or slow past the deadline,
// means no.
func (i *Init) askDevice(k int, name string, pid int) error {
	cred, err := credOfPID(pid)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := fabric.DeviceRequest{Cmd: fabric.DeviceCheck, On: k, Name: name, Cred: &cred}
	if k == i.cfg.Index {
		_, _, err := i.deviceServe(&caller{role: fabric.RolePeer, from: k, ctx: ctx}, &req)
		return err
	}
	p, ok := i.peers[k]
	if !ok {
		return fabric.Errorf(fabric.CodeInvalid, "oslet %d does not exist", k)
	}
	_, err = p.call(ctx, fabric.OpDevice, req, nil, &fabric.DeviceReply{})
	if err != nil {
		i.log.Info("rdev open refused", "device", fmt.Sprintf("%d/%s", k, name), "pid", pid, "err", err)
	}
	return err
}

// credOfPID reads a local process's effective uid and gid and its groups.
func credOfPID(pid int) (fabric.Cred, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fabric.Cred{}, err
	}
	defer f.Close()
	var c fabric.Cred
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(val)
		switch {
		case key == "Uid" && len(fields) > 1:
			n, _ := strconv.ParseUint(fields[1], 10, 32)
			c.UID = uint32(n)
		case key == "Gid" && len(fields) > 1:
			n, _ := strconv.ParseUint(fields[1], 10, 32)
			c.GID = uint32(n)
		case key == "Groups":
			for _, g := range fields {
				n, _ := strconv.ParseUint(g, 10, 32)
				c.Groups = append(c.Groups, uint32(n))
			}
		}
	}
	c.PID = int32(pid)
	return c, sc.Err()
}

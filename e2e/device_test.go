package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// loopDevice makes a loop device over a file of size bytes of random data,
// removed when the test ends, and returns its name (loopN) and the data.
func loopDevice(t testing.TB, size int) (string, []byte) {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup is missing (.ci/run installs util-linux)")
	}
	data := make([]byte, size)
	rand.Read(data)
	img := t.TempDir() + "/disk.img"
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("cannot make a loop device here: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return strings.TrimPrefix(dev, "/dev/"), data
}

// TestRdev gives a loop device to OSlet 2 and uses it from OSlet 1 through
// /rdev/2 with unmodified programs: data read and written is the device's;
// opens the owner refuses, of devices that do not exist, and of devices of
// a dead owner fail with their errno; and no OSlet can reach another's
// device any other way.
func TestRdev(t *testing.T) {
	needRoot(t)
	name, data := loopDevice(t, 4<<20)
	// Everyone may open the device at first; its owner tightens it after
	// boot, and only the owner's word counts.
	os.Chmod("/dev/"+name, 0o666)
	c := boot(t, "--device", "2="+name)

	var devs []struct {
		Name  string `json:"name"`
		OSlet int    `json:"oslet"`
		Type  string `json:"type"`
		Size  int64  `json:"size"`
	}
	if err := json.Unmarshal([]byte(c.must("devices", "--json")), &devs); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range devs {
		found = found || d.Name == name && d.OSlet == 2 && d.Type == "block" && d.Size == int64(len(data))
	}
	if !found {
		t.Fatalf("smpc devices does not list %s on oslet 2: %+v", name, devs)
	}
	rdev := "/rdev/2/" + name

	// Each path of /rdev does the same: the init's FUSE files, and the
	// owner's own descriptor for a process with direct device opens.
	paths := []struct {
		name string
		run  []string
	}{
		{"fuse", []string{"run", "--on", "1", "--"}},
		{"direct", []string{"run", "--on", "1", "--direct-devices", "--"}},
	}
	on1 := func(run []string, args ...string) []string { return append(append([]string{}, run...), args...) }
	for _, p := range paths {
		t.Run(p.name+"/read from oslet 1", func(t *testing.T) {
			// What the device holds now: the first path's write and mkfs
			// came before the second path's read.
			want, err := os.ReadFile("/dev/" + name)
			if err != nil || len(want) != len(data) {
				t.Fatalf("read /dev/%s on the host: %d bytes, %v", name, len(want), err)
			}
			if p.name == "fuse" && !bytes.Equal(want, data) {
				t.Fatalf("/dev/%s does not hold what the test wrote", name)
			}
			out := c.must(on1(p.run, "dd", "if="+rdev, "bs=64k", "status=none")...)
			if !bytes.Equal([]byte(out), want) {
				t.Fatalf("read %d bytes through %s, not the device's data", len(out), rdev)
			}
		})
		t.Run(p.name+"/write from oslet 1", func(t *testing.T) {
			text := "smpc-was-here-" + p.name
			c.must(on1(p.run, "sh", "-c", "printf "+text+" | dd of="+rdev+" bs=1 seek=4096 conv=notrunc status=none")...)
			got := make([]byte, len(text))
			f, err := os.Open("/dev/" + name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.ReadAt(got, 4096)
			if string(got) != text {
				t.Fatalf("the device holds %q after the write", got)
			}
		})
		t.Run(p.name+"/mkfs from oslet 1", func(t *testing.T) {
			if _, err := exec.LookPath("mkfs.ext4"); err != nil {
				t.Skip("mkfs.ext4 is missing")
			}
			exec.Command("wipefs", "-a", "/dev/"+name).Run()
			c.must(on1(p.run, "mkfs.ext4", "-q", "-F", rdev)...)
			out, err := exec.Command("blkid", "-o", "value", "-s", "TYPE", "/dev/"+name).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "ext4" {
				t.Errorf("blkid after mkfs through /rdev: %s %v", out, err)
			}
		})
	}
	t.Run("direct/descriptor is the owner's", func(t *testing.T) {
		// The process holds the device itself, opened by OSlet 2 in its
		// /dev; a relative path reaches it too, and opens elsewhere, and
		// of /rdev's directories, go on as ever.
		out := c.must(on1(paths[1].run, "sh", "-c", "cd /rdev/2 && exec 3<"+name+" && readlink /proc/self/fd/3 && ls /rdev/2 && head -c 5 /etc/hostname >/dev/null && echo fine")...)
		want := "/dev/" + name + "\n" + name + "\nfine\n"
		if out != want {
			t.Errorf("direct open: got %q, want %q", out, want)
		}
		// A path the init cannot read fails as the kernel fails it.
		badOpen := "import ctypes; c = ctypes.CDLL(None, use_errno=True); print(c.open(ctypes.c_void_p(8), 0), ctypes.get_errno())"
		if out := c.must(on1(paths[1].run, "python3", "-c", badOpen)...); strings.TrimSpace(out) != "-1 14" {
			t.Errorf("open of an unmapped path: got %q, want -1 and EFAULT (14)", out)
		}
		if out := c.must(on1(paths[0].run, "sh", "-c", "exec 3<"+rdev+" && readlink /proc/self/fd/3")...); strings.TrimSpace(out) != rdev {
			t.Errorf("a plain process holds %q, not /rdev's file", out)
		}
	})
	t.Run("no other way in", func(t *testing.T) {
		if out, code := c.smpc("run", "--on", "1", "--", "ls", "/dev/"+name); code == 0 {
			t.Errorf("oslet 1 has oslet 2's device in its /dev: %s", out)
		}
		out, code := c.smpc("run", "--on", "1", "--", "mknod", "/tmp/stolen", "b", "7", "0")
		if code == 0 || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("oslet 1 made a node for a device it does not own: %d %s", code, out)
		}
		if out := c.must("run", "--on", "2", "--", "ls", "/dev/"+name); !strings.Contains(out, name) {
			t.Errorf("oslet 2 lacks its own device: %s", out)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		// The owner tightens its device: /rdev/2 still says 0666, as at
		// boot, but the owner decides each open.
		c.must("run", "--on", "2", "--", "chmod", "0600", "/dev/"+name)
		nobody := []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"}
		for _, p := range paths {
			out, code := c.smpc(on1(p.run, "cat", "/rdev/2/nosuch")...)
			if code == 0 || !strings.Contains(out, "No such file") {
				t.Errorf("%s: a device that does not exist: %d %s", p.name, code, out)
			}
			out, code = c.smpc(on1(p.run, append(nobody, "dd", "if="+rdev, "count=1", "status=none")...)...)
			if code == 0 || !strings.Contains(out, "Permission denied") {
				t.Errorf("%s: nobody opened a device its owner does not allow: %d %s", p.name, code, out)
			}
			// root still may.
			c.must(on1(p.run, "dd", "if="+rdev, "of=/dev/null", "count=1", "status=none")...)
		}
		// A process that is not root asks for direct device opens itself:
		// it gets the filter with no_new_privs, and the owner's refusal.
		out, code := c.smpc(on1(paths[0].run, append(nobody, smpcBin, "run", "--direct-devices", "--",
			"sh", "-c", "grep NoNewPrivs /proc/self/status; dd if="+rdev+" count=1 status=none")...)...)
		if code == 0 || !strings.Contains(out, "NoNewPrivs:\t1") || !strings.Contains(out, "Permission denied") {
			t.Errorf("nobody with direct device opens: %d %s", code, out)
		}
	})
	t.Run("size follows the device", func(t *testing.T) {
		back, err := os.ReadFile("/sys/block/" + name + "/loop/backing_file")
		if err != nil {
			t.Skip(err)
		}
		img := strings.TrimSpace(string(back))
		if err := os.Truncate(img, 2*int64(len(data))); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("losetup", "-c", "/dev/"+name).CombinedOutput(); err != nil {
			t.Fatalf("losetup -c: %v: %s", err, out)
		}
		got := strings.TrimSpace(c.must("run", "--on", "1", "--", "stat", "-c", "%s", rdev))
		if got != strconv.Itoa(2*len(data)) {
			t.Errorf("%s has size %s after the device grew to %d", rdev, got, 2*len(data))
		}
		if out := c.must("devices"); !strings.Contains(out, name) || !strings.Contains(c.must("devices", "--json"), fmt.Sprintf(`"size":%d`, 2*len(data))) {
			t.Errorf("smpc devices after the device grew: %s", out)
		}
	})
	t.Run("owner down", func(t *testing.T) {
		pid := c.state().Inits["2"]
		syscall.Kill(pid, syscall.SIGKILL)
		waitFor(t, "oslet 2 down", func() bool {
			out, _ := c.smpc("status")
			return strings.Contains(out, "2      down")
		})
		for _, p := range paths {
			out, code := c.smpc(on1(p.run, "dd", "if="+rdev, "count=1", "status=none")...)
			if code == 0 || !strings.Contains(out, "No such device or address") {
				t.Errorf("%s: opened a device of a dead OSlet: %d %s", p.name, code, out)
			}
		}
		if out := c.must("run", "--on", "1", "--", "echo", "alive"); !strings.Contains(out, "alive") {
			t.Errorf("oslet 1 after oslet 2 died: %s", out)
		}
	})
}

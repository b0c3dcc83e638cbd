package e2e

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
)

// benchCluster boots a cluster for a benchmark and connects to it.
func benchCluster(b *testing.B) *smpc.Client {
	if os.Geteuid() != 0 {
		b.Skip("benchmarks boot a real cluster: run them as root")
	}
	dir := "/run/smpc-e2e-bench"
	exec.Command(smpcBin, "shutdown", "--state-dir", dir).Run()
	if out, err := exec.Command(smpcBin, "boot", "--detach", "--state-dir", dir).CombinedOutput(); err != nil {
		b.Fatalf("boot: %v: %s", err, out)
	}
	b.Cleanup(func() { exec.Command(smpcBin, "shutdown", "--state-dir", dir).Run() })
	c, err := smpc.Connect(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkNullCall sets a null call between two OSlets (OSlet 1's init
// calling OSlet 2's over their proxy channel) beside a raw Unix-socket
// ping-pong between two processes.
func BenchmarkNullCall(b *testing.B) {
	c := benchCluster(b)
	b.Run("oslet1-to-oslet2", func(b *testing.B) {
		ns, err := c.PingPeer(context.Background(), 1, 2, b.N)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ns/float64(b.N), "ns/call")
	})
	b.Run("native-unix-pingpong", func(b *testing.B) {
		fds, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		peer := os.NewFile(uintptr(fds[1]), "peer")
		cmd := exec.Command(os.Args[0], "-test.run=^TestEchoHelper$")
		cmd.Env = append(os.Environ(), "SMPC_ECHO_HELPER=1")
		cmd.ExtraFiles = []*os.File{peer}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		peer.Close()
		buf := make([]byte, 64)
		unix.Write(fds[0], buf[:24]) // wait until the helper runs
		unix.Read(fds[0], buf)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			unix.Write(fds[0], buf[:24])
			unix.Read(fds[0], buf)
		}
		b.StopTimer()
		unix.Close(fds[0])
		cmd.Wait()
	})
}

// TestEchoHelper is the echoing process of the native ping-pong.
func TestEchoHelper(t *testing.T) {
	if os.Getenv("SMPC_ECHO_HELPER") != "1" {
		t.Skip("helper process for BenchmarkNullCall")
	}
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(3, buf)
		if err != nil || n == 0 {
			os.Exit(0)
		}
		unix.Write(3, buf[:n])
	}
}

// BenchmarkSpawnTrue sets creating /bin/true on another OSlet and waiting for
// it through the Go package beside fork/exec/wait on the host.
func BenchmarkSpawnTrue(b *testing.B) {
	c := benchCluster(b)
	b.Run("oslet2", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			cmd := c.Command("/bin/true")
			cmd.OSlet = 2
			if st, err := cmd.Run(context.Background()); err != nil || st.Code != 0 {
				b.Fatal(err, st)
			}
		}
	})
	b.Run("native", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/ipc"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

const keyHelp = `KEY is a System V key in decimal or 0x hex; the same key names the same
object from every OSlet and from the host. Its home OSlet is chosen by hashing
the key; 'smpc ipcs' shows it.`

// withQueue gets the queue with key (msgget with flags), runs f, and lets
// the queue go.
func withQueue(key int32, flags int, f func(q *smpc.MsgQueue) error) error {
	return withClient(func(c *smpc.Client) error {
		q, err := c.MsgGet(context.Background(), key, flags)
		if err != nil {
			return err
		}
		defer q.Close()
		return f(q)
	})
}

// withSemSet gets the set with key (semget with nsems and flags), runs f,
// and lets the set go.
func withSemSet(key int32, nsems, flags int, f func(s *smpc.SemSet) error) error {
	return withClient(func(c *smpc.Client) error {
		s, err := c.SemGet(context.Background(), key, nsems, flags)
		if err != nil {
			return err
		}
		defer s.Close()
		return f(s)
	})
}

// parseMode reads permission bits in octal ("0644", "644").
func parseMode(s string) (int, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("bad mode %q (octal permission bits, such as 0644)", s)
	}
	return int(v), nil
}

func msgCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "msg",
		Short: "Send and receive on System V message queues shared by every OSlet",
		Long: `Send and receive on System V message queues. ` + keyHelp + `

Programs use the same queues through the smpc Go package (MsgGet, Send,
Receive); sending and receiving run in the calling process on the queue's
shared memory, with no message to any OSlet.`,
	}
	cmd.AddCommand(msgSendCmd(), msgRecvCmd())
	return cmd
}

func msgSendCmd() *cobra.Command {
	var mode string
	var noWait bool
	cmd := &cobra.Command{
		Use:   "send KEY TYPE TEXT",
		Short: "Queue TEXT with message type TYPE (1 or more), creating the queue if needed",
		Long: `Queue TEXT with message type TYPE (a positive integer) on the queue with
KEY, creating the queue with --mode if it does not exist. A full queue blocks
the sender until a receiver makes room, unless --nowait. ` + keyHelp,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := ipc.ParseKey(args[0])
			if err != nil {
				return err
			}
			mtype, err := strconv.ParseInt(args[1], 10, 64)
			if err != nil || mtype < 1 {
				return fmt.Errorf("bad message type %q (a positive integer)", args[1])
			}
			perm, err := parseMode(mode)
			if err != nil {
				return err
			}
			return withQueue(key, smpc.IPCCreate|perm, func(q *smpc.MsgQueue) error {
				flags := 0
				if noWait {
					flags |= smpc.IPCNoWait
				}
				return q.Send(mtype, []byte(args[2]), flags)
			})
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "0644", "permission bits of a queue this creates (octal)")
	cmd.Flags().BoolVar(&noWait, "nowait", false, "fail with 'resource temporarily unavailable' instead of waiting when the queue is full")
	return cmd
}

func msgRecvCmd() *cobra.Command {
	var mtype int64
	var noWait, except, noError, showType bool
	var max int
	cmd := &cobra.Command{
		Use:   "recv KEY",
		Short: "Take a message from the queue with KEY and print its text",
		Long: `Take a message from the queue with KEY and print its text. --type picks
which, as msgrcv(2) does: 0 (the default) the first message, a positive type
the first of that type (with --except the first of any other), a negative type
the first of the lowest type up to its absolute value. Without --nowait it
waits for one; with --nowait an empty queue is an error ("no message of
desired type") and exit status 1. ` + keyHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := ipc.ParseKey(args[0])
			if err != nil {
				return err
			}
			return withQueue(key, 0, func(q *smpc.MsgQueue) error {
				flags := 0
				if noWait {
					flags |= smpc.IPCNoWait
				}
				if except {
					flags |= smpc.MsgExcept
				}
				if noError {
					flags |= smpc.MsgNoError
				}
				got, text, err := q.Receive(mtype, max, flags)
				if err != nil {
					return err
				}
				if showType {
					fmt.Fprintf(cmd.OutOrStdout(), "%d ", got)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\n", text)
				return nil
			})
		},
	}
	cmd.Flags().Int64Var(&mtype, "type", 0, "message type to take (msgrcv's msgtyp)")
	cmd.Flags().BoolVar(&noWait, "nowait", false, "fail instead of waiting when no message matches")
	cmd.Flags().BoolVar(&except, "except", false, "take the first message not of --type (MSG_EXCEPT)")
	cmd.Flags().BoolVar(&noError, "truncate", false, "cut a message longer than --max instead of failing (MSG_NOERROR)")
	cmd.Flags().IntVar(&max, "max", ipc.MsgMax, "largest text to take, in bytes")
	cmd.Flags().BoolVar(&showType, "show-type", false, "print the message's type before its text")
	return cmd
}

func semCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sem",
		Short: "Create, operate on and read System V semaphore sets shared by every OSlet",
		Long: `Create, operate on and read System V semaphore sets. ` + keyHelp + `

Programs use the same sets through the smpc Go package (SemGet, Op); operations
run in the calling process on the set's shared memory, sleeping on a futex
when they must wait.`,
	}
	cmd.AddCommand(semCreateCmd(), semOpCmd(), semGetCmd())
	return cmd
}

func semCreateCmd() *cobra.Command {
	var mode, values string
	cmd := &cobra.Command{
		Use:   "create KEY NSEMS",
		Short: "Create a set of NSEMS semaphores with KEY (an error if the key is in use)",
		Long: `Create a set of NSEMS semaphores, all 0 unless --values sets them, and print
its ID. A key already in use is an error ("file exists"). ` + keyHelp,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := ipc.ParseKey(args[0])
			if err != nil {
				return err
			}
			nsems, err := strconv.Atoi(args[1])
			if err != nil || nsems < 1 || nsems > ipc.SemMax {
				return fmt.Errorf("bad semaphore count %q (1 to %d)", args[1], ipc.SemMax)
			}
			perm, err := parseMode(mode)
			if err != nil {
				return err
			}
			var vals []int
			if values != "" {
				for _, v := range strings.Split(values, ",") {
					n, err := strconv.Atoi(strings.TrimSpace(v))
					if err != nil || n < 0 || n > ipc.SemValueMax {
						return fmt.Errorf("bad semaphore value %q (0 to %d)", v, ipc.SemValueMax)
					}
					vals = append(vals, n)
				}
				if len(vals) != nsems {
					return fmt.Errorf("--values gives %d values for %d semaphores", len(vals), nsems)
				}
			}
			return withSemSet(key, nsems, smpc.IPCCreate|smpc.IPCExcl|perm, func(s *smpc.SemSet) error {
				if vals != nil {
					if err := s.SetAll(vals); err != nil {
						return err
					}
				}
				fmt.Fprintln(cmd.OutOrStdout(), s.ID())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "0644", "permission bits (octal)")
	cmd.Flags().StringVar(&values, "values", "", "initial values, comma-separated (default all 0)")
	return cmd
}

func semOpCmd() *cobra.Command {
	var noWait, undo, hold bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "op KEY NUM:DELTA...",
		Short: "Apply semaphore operations atomically: NUM:-1 takes, NUM:1 gives, NUM:0 waits for zero",
		Long: `Apply the operations to the set with KEY, all at once or none: each adds
DELTA to semaphore NUM, waiting while that would take it below zero; a DELTA
of 0 waits until the semaphore is zero. --nowait fails instead of waiting
("resource temporarily unavailable"); --timeout gives up after a while.

--undo (SEM_UNDO) undoes the operations when this process ends, on whatever
OSlet it runs, even if it is killed. With --hold the command then waits
until it gets SIGTERM or SIGINT (or is killed), holding what it took: a lock
for a script, released by the undo. ` + keyHelp,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := ipc.ParseKey(args[0])
			if err != nil {
				return err
			}
			var ops []smpc.SemOp
			for _, a := range args[1:] {
				num, delta, err := ipc.ParseSemOp(a)
				if err != nil {
					return err
				}
				op := smpc.SemOp{Num: num, Delta: delta}
				if noWait {
					op.Flags |= smpc.IPCNoWait
				}
				if undo {
					op.Flags |= smpc.SemUndo
				}
				ops = append(ops, op)
			}
			// Take the signals before the operation, so that a --hold
			// that is signalled at once still ends through the undo.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
			return withSemSet(key, 0, 0, func(s *smpc.SemSet) error {
				if timeout > 0 {
					err = s.TimedOp(timeout, ops...)
				} else {
					err = s.Op(ops...)
				}
				if err != nil || !hold {
					return err
				}
				<-sigs
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&noWait, "nowait", false, "fail instead of waiting (IPC_NOWAIT)")
	cmd.Flags().BoolVar(&undo, "undo", false, "undo the operations when this process ends (SEM_UNDO)")
	cmd.Flags().BoolVar(&hold, "hold", false, "after the operations, wait for SIGTERM or SIGINT before exiting")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (semtimedop)")
	return cmd
}

func semGetCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print each semaphore of the set with KEY: value, waiters and last PID",
		Long: `Print each semaphore of the set with KEY: its value, the processes waiting
for it to grow (GETNCNT) and to be zero (GETZCNT), and the PID of the
last process that operated on it (GETPID). ` + keyHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := ipc.ParseKey(args[0])
			if err != nil {
				return err
			}
			return withSemSet(key, 0, 0, func(s *smpc.SemSet) error {
				type semaphore struct {
					Num   int      `json:"num"`
					Value int      `json:"value"`
					NCnt  int      `json:"ncnt"`
					ZCnt  int      `json:"zcnt"`
					PID   smpc.PID `json:"pid"`
				}
				var out []semaphore
				for n := range s.NSems() {
					v, err := s.GetVal(n)
					if err != nil {
						return err
					}
					ncnt, _ := s.GetNCnt(n)
					zcnt, _ := s.GetZCnt(n)
					pid, _ := s.GetPID(n)
					out = append(out, semaphore{n, v, ncnt, zcnt, pid})
				}
				return printList(cmd.OutOrStdout(), asJSON, out, "SEMNUM\tVALUE\tNCOUNT\tZCOUNT\tPID", func(x semaphore) string {
					return fmt.Sprintf("%d\t%d\t%d\t%d\t%d", x.Num, x.Value, x.NCnt, x.ZCnt, x.PID)
				})
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// ipcsSection is how ipcs(1) shows one kind of object.
type ipcsSection struct {
	kind   smpc.IPCKind
	title  string
	header string
	row    func(o smpc.IPCInfo) string // the columns after key, id, owner and perms
}

var ipcsSections = []ipcsSection{
	{smpc.KindMsg, "Message Queues", "msqid\towner\tperms\tused-bytes\tmessages", func(o smpc.IPCInfo) string {
		return fmt.Sprintf("%d\t%d", o.CBytes, o.QNum)
	}},
	{smpc.KindShm, "Shared Memory Segments", "shmid\towner\tperms\tbytes\tnattch", func(o smpc.IPCInfo) string {
		return fmt.Sprintf("%d\t%d", o.Size, o.Attached)
	}},
	{smpc.KindSem, "Semaphore Arrays", "semid\towner\tperms\tnsems", func(o smpc.IPCInfo) string {
		return strconv.Itoa(o.NSems)
	}},
}

func ipcsCmd() *cobra.Command {
	var asJSON bool
	only := map[smpc.IPCKind]*bool{smpc.KindMsg: new(bool), smpc.KindShm: new(bool), smpc.KindSem: new(bool)}
	cmd := &cobra.Command{
		Use:   "ipcs",
		Short: "List every message queue, shared memory segment and semaphore set, with the OSlet that uses it",
		Long: `List every System V message queue, shared memory segment and semaphore set
of the cluster, as ipcs(1) does. They are the kernel's own objects in the
cluster's one IPC namespace, so util-linux ipcs inside any OSlet lists the
same. The OSLET column names where the object's creator (a segment), its last
sender (a queue) or its last operator (a set) runs, or "-" once that process
is gone. -q, -m and -s pick kinds. NATTCH counts the processes that hold a
segment.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				objects, err := c.IPCs(context.Background())
				if err != nil {
					return err
				}
				picked := *only[smpc.KindMsg] || *only[smpc.KindShm] || *only[smpc.KindSem]
				shown := []smpc.IPCInfo{}
				for _, o := range objects {
					if !picked || *only[o.Kind] {
						shown = append(shown, o)
					}
				}
				if asJSON {
					if err := json.NewEncoder(cmd.OutOrStdout()).Encode(shown); err != nil {
						return err
					}
				} else {
					tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
					for _, sec := range ipcsSections {
						if picked && !*only[sec.kind] {
							continue
						}
						fmt.Fprintf(tw, "------ %s --------\nkey\t%s\toslet\n", sec.title, sec.header)
						for _, o := range shown {
							if o.Kind == sec.kind {
								fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", ipc.FormatKey(o.Key), o.ID, vproc.UserName(o.UID), ipc.ModeString(o.Mode), sec.row(o), orDash(osletIndex(o.OSlet)))
							}
						}
						fmt.Fprintln(tw)
					}
					tw.Flush()
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(only[smpc.KindMsg], "queues", "q", false, "message queues")
	cmd.Flags().BoolVarP(only[smpc.KindShm], "shmems", "m", false, "shared memory segments")
	cmd.Flags().BoolVarP(only[smpc.KindSem], "semaphores", "s", false, "semaphore sets")
	return cmd
}

// osletIndex prints an OSlet's index, or "" for none.
func osletIndex(k int) string {
	if k == 0 {
		return ""
	}
	return strconv.Itoa(k)
}

// downError names the OSlets that could not answer a listing.
func downError(down []int) error {
	if len(down) == 0 {
		return nil
	}
	var names []string
	for _, k := range down {
		names = append(names, fmt.Sprintf("oslet %d is down", k))
	}
	return errors.New(strings.Join(names, "; "))
}

func ipcrmCmd() *cobra.Command {
	type target struct {
		kind  smpc.IPCKind
		byKey bool
		args  []string
	}
	targets := []*target{{kind: smpc.KindMsg}, {kind: smpc.KindMsg, byKey: true}, {kind: smpc.KindShm}, {kind: smpc.KindShm, byKey: true},
		{kind: smpc.KindSem}, {kind: smpc.KindSem, byKey: true}}
	cmd := &cobra.Command{
		Use:   "ipcrm [-q ID] [-Q KEY] [-m ID] [-M KEY] [-s ID] [-S KEY]...",
		Short: "Remove message queues, shared memory segments and semaphore sets by ID or key, as ipcrm(1)",
		Long: `Remove System V objects as ipcrm(1) does: -q ID and -Q KEY a message queue,
-m ID and -M KEY a shared memory segment, -s ID and -S KEY a semaphore set;
each option may repeat. Processes blocked on a removed queue or set wake with
"identifier removed"; a removed segment's pages stay with the processes that
have it attached. Only the owner, the creator or root may remove an object.
Every removal is tried; the exit status is 1 if any failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, t := range targets {
				n += len(t.args)
			}
			if n == 0 {
				return errors.New("ipcrm: nothing to remove (give -q, -Q, -m, -M, -s or -S)")
			}
			return withClient(func(c *smpc.Client) error {
				ctx := context.Background()
				failed := false
				for _, t := range targets {
					for _, arg := range t.args {
						if err := removeIPC(ctx, c, t.kind, t.byKey, arg); err != nil {
							fmt.Fprintln(os.Stderr, "smpc: ipcrm:", err)
							failed = true
						}
					}
				}
				if failed {
					return exitError{1}
				}
				return nil
			})
		},
	}
	for n, spec := range []struct{ short, long, what string }{
		{"q", "queue-id", "the message queue with this ID"}, {"Q", "queue-key", "the message queue with this key"},
		{"m", "shmem-id", "the shared memory segment with this ID"}, {"M", "shmem-key", "the shared memory segment with this key"},
		{"s", "semaphore-id", "the semaphore set with this ID"}, {"S", "semaphore-key", "the semaphore set with this key"},
	} {
		cmd.Flags().StringArrayVarP(&targets[n].args, spec.long, spec.short, nil, "remove "+spec.what)
	}
	return cmd
}

// removeIPC removes one object named by ID, or with byKey by key.
func removeIPC(ctx context.Context, c *smpc.Client, kind smpc.IPCKind, byKey bool, arg string) error {
	if byKey {
		key, err := ipc.ParseKey(arg)
		if err != nil {
			return err
		}
		return c.RemoveIPCKey(ctx, kind, key)
	}
	id, err := strconv.ParseInt(arg, 10, 32)
	if err != nil || id <= 0 {
		return fmt.Errorf("bad %s id %q (a positive integer, as smpc ipcs shows)", kind, arg)
	}
	return c.RemoveIPC(ctx, kind, int32(id))
}

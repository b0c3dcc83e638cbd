"""An unmodified program's System V IPC, through libc alone (ctypes).

Used by the end-to-end tests: one process makes a queue, a semaphore set
and a shared memory segment on one OSlet; others on other OSlets find them
by key and use them, as they would on one machine.

    sysv.py create KEY       make all three, send one message, then hold
                             the segment until killed (its creator lives)
    sysv.py recv KEY         receive the message and print it
    sysv.py count KEY N      N times, under the semaphore as a mutex,
                             add one to a counter in the segment
    sysv.py read KEY         print the counter
"""
import ctypes
import os
import signal
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]

IPC_CREAT, IPC_EXCL, SEM_UNDO, SETVAL = 0o1000, 0o2000, 0x1000, 16


class SemBuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]


def check(result, what):
    if result == -1 or result is None:
        err = ctypes.get_errno()
        sys.exit(f"{what}: {os.strerror(err)}")
    return result


def main():
    role, key = sys.argv[1], int(sys.argv[2], 0)
    if role == "create":
        flags = IPC_CREAT | IPC_EXCL | 0o600
        q = check(libc.msgget(key, flags), "msgget")
        s = check(libc.semget(key, 1, flags), "semget")
        check(libc.semctl(s, 0, SETVAL, 1), "semctl SETVAL")
        m = check(libc.shmget(key, 4096, flags), "shmget")
        mem = check(libc.shmat(m, None, 0), "shmat")
        ctypes.memset(mem, 0, 8)
        text = b"made on oslet " + os.environ.get("SMPC_OSLET", "?").encode()
        buf = ctypes.create_string_buffer(8 + len(text))
        ctypes.c_long.from_buffer(buf).value = 1
        ctypes.memmove(ctypes.addressof(buf) + 8, text, len(text))
        check(libc.msgsnd(q, buf, len(text), 0), "msgsnd")
        print("created", flush=True)
        signal.pause()
    elif role == "recv":
        q = check(libc.msgget(key, 0), "msgget")
        buf = ctypes.create_string_buffer(8 + 256)
        n = check(libc.msgrcv(q, buf, 256, 0, 0), "msgrcv")
        print(buf.raw[8:8 + n].decode())
    elif role in ("count", "read"):
        m = check(libc.shmget(key, 0, 0), "shmget")
        mem = check(libc.shmat(m, None, 0), "shmat")
        counter = ctypes.c_long.from_address(mem)
        if role == "read":
            print(counter.value)
            return
        s = check(libc.semget(key, 0, 0), "semget")
        take, give = SemBuf(0, -1, SEM_UNDO), SemBuf(0, 1, SEM_UNDO)
        for _ in range(int(sys.argv[3])):
            check(libc.semop(s, ctypes.byref(take), 1), "semop take")
            v = counter.value
            time.sleep(0)  # let another holder in, if the mutex would
            counter.value = v + 1
            check(libc.semop(s, ctypes.byref(give), 1), "semop give")
        print("counted", sys.argv[3])
    else:
        sys.exit("unknown role " + role)


main()

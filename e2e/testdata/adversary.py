#!/usr/bin/env python3
"""An unprivileged process that tries to bring its OSlet's init down.

silent N SECONDS   connect N channels to the init and never say hello
noread N           say hello, send N status requests, never read a reply
Prints "done" when it has done its part, then holds everything it opened
until killed (or, for silent, for SECONDS).
"""
import json, socket, struct, sys, time

MAGIC, MAJOR, MINOR = 0x534D5043, 2, 0
OP_HELLO, OP_STATUS = 1, 8


def frame(op, ident, body):
    b = json.dumps(body).encode()
    return struct.pack("<IBBHHHQI", MAGIC, MAJOR, MINOR, op, 0, 0, ident, len(b)) + b


def channel():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("\0smpc-oslet")
    return s


def silent(n, seconds):
    held = []
    for _ in range(n):
        try:
            held.append(channel())
        except OSError:
            break  # the backlog is full: the init is pacing us
    print("done", len(held), flush=True)
    time.sleep(seconds)


def noread(n):
    s = channel()
    s.send(frame(OP_HELLO, 1, {"role": "client"}))
    s.recv(1 << 17)
    s.setblocking(False)
    sent, stuck = 0, 0.0
    while sent < n and stuck < 2:
        try:
            s.send(frame(OP_STATUS, 2 + sent, {"cluster": True}))
            sent, stuck = sent + 1, 0.0
        except BlockingIOError:
            time.sleep(0.01)  # the init stopped reading this channel
            stuck += 0.01
    print("done", sent, flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1] == "silent":
        silent(int(sys.argv[2]), float(sys.argv[3]))
    else:
        noread(int(sys.argv[2]))

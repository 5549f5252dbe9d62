"""Kernel tty-log bytes made by hand, as docs/formats/ttylog.md lays them out, for tests that
need a log without a guest (the honeypot ingest, the readers of stored tty logs)."""

import struct
import zlib

MAGIC = b"WTTYLOG\n"
OPEN, CLOSE, DATA, EXEC, RESIZE, DROP = 1, 2, 3, 4, 5, 6
READ, WRITE = 0, 1
PTY, CONSOLE = 4, 1  # TTY_DRIVER_TYPE_PTY, _SYSTEM
MASTER, SLAVE = 1, 2


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def stream_header(start_ns: int = 1_700_000_000_000_000_000, pid: int = 4242) -> bytes:
    head = MAGIC + struct.pack("<HHIQI", 1, 32, 4096, start_ns, pid)
    return head + struct.pack("<I", crc(head))


def record(rtype: int, seq: int, payload: bytes = b"", tty: int = 0, flags: int = 0,
           time_ns: int | None = None) -> bytes:  # fmt: skip
    t = time_ns if time_ns is not None else 1_700_000_000_000_000_000 + seq * 1000
    head = struct.pack("<HHIQQI", rtype, flags, tty, seq, t, len(payload))
    return head + struct.pack("<I", crc(head)) + payload


def open_rec(seq: int, tty: int, name: str, driver: int = PTY, subtype: int = 0, link: int = 0,
             pid: int = 100, uid: int = 0) -> bytes:  # fmt: skip
    body = struct.pack("<IIHHIII", 136, tty, driver, subtype, link, pid, uid) + name.encode()
    return record(OPEN, seq, body, tty)


def data_rec(seq: int, tty: int, direction: int, data: bytes) -> bytes:
    return record(DATA, seq, data, tty, flags=direction)


def exec_rec(seq: int, tty: int, argv: list[bytes], filename: bytes = b"", pid: int = 200,
             uid: int = 1000, truncated: bool = False) -> bytes:  # fmt: skip
    fn = filename or argv[0]
    body = struct.pack("<IIIIIHH", pid, 1, uid, uid, len(argv), len(fn), 0) + fn
    body += b"".join(a + b"\0" for a in argv)
    return record(EXEC, seq, body, tty, flags=int(truncated))


def resize_rec(seq: int, tty: int, rows: int, cols: int) -> bytes:
    return record(RESIZE, seq, struct.pack("<HHHH", rows, cols, 0, 0), tty)


def drop_rec(seq: int, lost_records: int, lost_bytes: int) -> bytes:
    return record(DROP, seq, struct.pack("<QQ", lost_records, lost_bytes))


def ssh_session(first_seq: int = 1) -> list[bytes]:
    """An ssh session as the kernel logs it: sshd opens a pty pair (ptm0 = tty 1, pts0 = tty
    2), the client types `ls\\r`, the shell reads `ls\\n`, ls runs and prints, and it ends."""
    s = first_seq
    return [
        open_rec(s, 1, "ptm0", PTY, MASTER, link=2),
        open_rec(s + 1, 2, "pts0", PTY, SLAVE, link=1),
        resize_rec(s + 2, 1, 24, 100),
        data_rec(s + 3, 1, WRITE, b"ls\r"),  # sshd writes the keystrokes to the master
        data_rec(s + 4, 1, READ, b"ls\r\n"),  # sshd reads the echo
        data_rec(s + 5, 2, READ, b"ls\n"),  # the shell reads the edited line
        exec_rec(s + 6, 2, [b"ls", b"-la", b"/etc"], b"/usr/bin/ls"),
        data_rec(s + 7, 2, WRITE, b"passwd  shadow\r\n"),  # ls writes to the slave
        data_rec(s + 8, 1, READ, b"passwd  shadow\r\n"),  # sshd reads it from the master
        record(CLOSE, s + 9, tty=2),
        record(CLOSE, s + 10, tty=1),
    ]

"""The UML management console: codec, a blocking client and an asyncio client.

The wire format is written down in docs/formats/mconsole.md; the structs below quote
arch/um/drivers/mconsole.h. The codec is sans-io (bytes in, values out) so that it is tested
with byte vectors; the two clients only move datagrams.

Replies carry no request id, so each client sends one request at a time (the async client
holds a lock across a request and all datagrams of its reply) and drops stale datagrams left
by a request that timed out.

Everything a guest kernel sends is hostile input (docs/security.md, "Guest channels"): a reply
is cut off at MAX_REPLY bytes however long its `more` flag says it goes on, stale datagrams
are drained at most DRAIN_MAX at a time, and the daemon's sockets ask for the sender's
credentials (SO_PASSCRED) so that datagrams from anyone but the guest's kernel are ignored.
"""

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from warden.errors import MconsoleError

MAGIC = 0xCAFEBABE  # MCONSOLE_MAGIC
VERSION = 2  # MCONSOLE_VERSION
MAX_DATA = 512  # MCONSOLE_MAX_DATA

# struct mconsole_request { u32 magic; u32 version; u32 len; char data[MCONSOLE_MAX_DATA]; };
REQUEST_HEADER = struct.Struct("=III")
# struct mconsole_reply { u32 err; u32 more; u32 len; char data[MCONSOLE_MAX_DATA]; };
REPLY_HEADER = struct.Struct("=III")
# struct mconsole_notify { u32 magic; u32 version; enum {...} type; u32 len; char data[512]; };
NOTIFY_HEADER = struct.Struct("=IIII")

DEFAULT_TIMEOUT = 5.0
# A reply's wire bytes (headers included) beyond which it is refused: the largest file warden
# reads (`proc zoneinfo`) is a few KiB; 1 MiB leaves room for an admin's `proc kallsyms`.
MAX_REPLY = 1 << 20
DRAIN_MAX = 256  # stale datagrams dropped before a request; a flood cannot hold the loop
RECV_MAX = REPLY_HEADER.size + MAX_DATA + 1  # one more byte: a longer datagram is truncated
# struct ucred { pid_t pid; uid_t uid; gid_t gid; } (SCM_CREDENTIALS, unix(7))
UCRED = struct.Struct("=iII")

# Whether a datagram is the kernel's: called with the sender's (pid, uid).
Accept = Callable[[int, int], bool]


class NotifyType(IntEnum):
    SOCKET = 0
    PANIC = 1
    HANG = 2
    USER_NOTIFY = 3
    MEMORY = 4  # warden's kernel (kernel/0004): its OOM hook plugged memory back or waits


@dataclass(frozen=True)
class ReplyPart:
    err: bool
    more: bool
    text: str


@dataclass(frozen=True)
class Notify:
    type: NotifyType
    data: bytes

    @property
    def text(self) -> str:
        return self.data.split(b"\0", 1)[0].decode("utf-8", "replace")


class ProtocolError(MconsoleError):
    """A datagram that does not follow docs/formats/mconsole.md."""


def encode_request(command: str) -> bytes:
    data = command.encode()
    if len(data) >= MAX_DATA:
        raise MconsoleError(f"mconsole command is {len(data)} bytes; the limit is {MAX_DATA - 1}")
    return REQUEST_HEADER.pack(MAGIC, VERSION, len(data)) + data


def decode_reply(datagram: bytes) -> ReplyPart:
    if len(datagram) < REPLY_HEADER.size:
        raise ProtocolError(f"mconsole reply of {len(datagram)} bytes is shorter than its header")
    err, more, length = REPLY_HEADER.unpack_from(datagram)
    body = datagram[REPLY_HEADER.size :]
    if length == 0 or length > MAX_DATA or length > len(body):
        raise ProtocolError(
            f"mconsole reply declares {length} data bytes but carries {len(body)} (max {MAX_DATA})"
        )
    text = body[:length].split(b"\0", 1)[0].decode("utf-8", "replace")
    return ReplyPart(err=bool(err), more=bool(more), text=text)


def decode_notify(datagram: bytes) -> Notify:
    if len(datagram) < NOTIFY_HEADER.size:
        raise ProtocolError(f"mconsole notify of {len(datagram)} bytes is shorter than its header")
    magic, version, kind, length = NOTIFY_HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise ProtocolError(f"mconsole notify magic {magic:#x}, expected {MAGIC:#x}")
    if version != VERSION:
        raise ProtocolError(f"mconsole notify version {version}, expected {VERSION}")
    body = datagram[NOTIFY_HEADER.size :]
    if length > MAX_DATA or length > len(body):
        raise ProtocolError(f"mconsole notify declares {length} bytes but carries {len(body)}")
    try:
        typ = NotifyType(kind)
    except ValueError:
        raise ProtocolError(f"mconsole notify of unknown type {kind}") from None
    return Notify(type=typ, data=body[:length])


class ReplyAssembler:
    """Collects the datagrams of one reply; `done` once a datagram without `more` arrives.

    At most `limit` wire bytes: a reply whose `more` flag never clears is refused with
    ProtocolError instead of growing until the timeout."""

    def __init__(self, limit: int = MAX_REPLY) -> None:
        self.err = False
        self.parts: list[str] = []
        self.done = False
        self.limit = limit
        self.size = 0

    def feed(self, part: ReplyPart, size: int = 0) -> None:
        self.size += max(size, REPLY_HEADER.size + len(part.text) + 1)
        if self.size > self.limit:
            raise ProtocolError(
                f"mconsole reply exceeds the limit of {self.limit} bytes "
                f"({len(self.parts) + 1} datagrams so far, each saying more follows)"
            )
        if not self.parts:
            self.err = part.err
        self.parts.append(part.text)
        self.done = not part.more

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _check(command: str, target: Path, assembler: ReplyAssembler) -> str:
    if assembler.err:
        raise MconsoleError(f"{target}: {command!r} failed: {assembler.text.strip()}")
    return assembler.text


def _ask_credentials(sock: socket.socket) -> None:
    """Every datagram received on `sock` carries its sender's pid and uid (unix(7))."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


def recv_from(sock: socket.socket, size: int) -> tuple[bytes, int, int, bool]:
    """One datagram: (data, sender pid, sender uid, truncated). The socket must ask for
    credentials; without them (not Linux's unix sockets) pid and uid are -1."""
    data, anc, flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(UCRED.size))
    pid = uid = -1
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            if len(raw) >= UCRED.size:
                pid, uid, _gid = UCRED.unpack_from(raw)
    return data, pid, uid, bool(flags & socket.MSG_TRUNC)


def _bind(path: Path, relative: bool = False) -> socket.socket:
    """A datagram socket bound at `path`.

    relative=True binds it by its bare name inside path.parent, so that its address (which UML
    replies to with sendto(), resolving it in the kernel's own mount namespace) is relative:
    a jailed kernel, whose working directory is that directory but whose root cannot reach it,
    still finds it (docs/decisions/2026-11-29-cgroups-and-jails.md, "Jails"). The name is bound
    from a short-lived thread with a private working directory (unshare(CLONE_FS)): the daemon's
    own is never changed.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if not relative:
        sock.bind(str(path))
        return sock
    failed: list[BaseException] = []

    def bind_here() -> None:
        from warden.host import ns

        try:
            ns.unshare(ns.CLONE_FS)
            os.chdir(path.parent)
            sock.bind(path.name)
        except BaseException as e:
            failed.append(e)

    worker = threading.Thread(target=bind_here, name="mconsole-bind")
    worker.start()
    worker.join()
    if failed:
        sock.close()
        raise failed[0]
    return sock


class Client:
    """Blocking client: one socket bound at `reply_path`, requests to `target`."""

    def __init__(self, target: Path, reply_path: Path, timeout: float = DEFAULT_TIMEOUT):
        self.target = target
        self.reply_path = reply_path
        self.timeout = timeout
        self._sock = _bind(reply_path)

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.reply_path.unlink()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self) -> None:
        self._sock.setblocking(False)
        try:
            for _ in range(DRAIN_MAX):
                self._sock.recv(RECV_MAX)
        except BlockingIOError:
            pass
        finally:
            self._sock.setblocking(True)

    def request(self, command: str, timeout: float | None = None) -> str:
        self._drain()
        try:
            self._sock.sendto(encode_request(command), str(self.target))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise MconsoleError(f"{self.target}: no guest answers ({e.strerror})") from None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        assembler = ReplyAssembler()
        while not assembler.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MconsoleError(f"{self.target}: no reply to {command!r} within the timeout")
            self._sock.settimeout(left)
            try:
                datagram = self._sock.recv(RECV_MAX)
            except TimeoutError:
                continue
            assembler.feed(decode_reply(datagram), len(datagram))
        return _check(command, self.target, assembler)


class AsyncClient:
    """asyncio client; safe to share between tasks (requests are serialized).

    `accept(pid, uid)`, if given, says whether a datagram is the guest kernel's: others are
    counted in `foreign` and ignored (the reply socket must be reachable by the jailed kernel,
    so other processes may reach it too)."""

    def __init__(
        self,
        target: Path,
        reply_path: Path,
        timeout: float = DEFAULT_TIMEOUT,
        relative_reply: bool = False,
        accept: Accept | None = None,
    ):
        self.target = target
        self.reply_path = reply_path
        self.timeout = timeout
        self.accept = accept
        self.foreign = 0
        self._sock = _bind(reply_path, relative_reply)
        self._sock.setblocking(False)
        _ask_credentials(self._sock)
        self._lock = asyncio.Lock()

    def close(self) -> None:
        # A request may be waiting for this socket to be readable. Its reader must go now,
        # while the fd number is still ours: once the request times out, asyncio would remove
        # the reader of whatever socket has reused that number by then (an API connection,
        # which then hangs unread).
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.reply_path.unlink()

    def _drain(self) -> None:
        try:
            for _ in range(DRAIN_MAX):
                self._sock.recv(RECV_MAX)
        except BlockingIOError:
            pass

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            # Only while the socket is ours: after close() the number may belong to another
            # socket by now, whose reader must stay (close() removed ours).
            if self._sock.fileno() == fd:
                loop.remove_reader(fd)

    async def _datagram(self) -> bytes:
        """The next datagram from the kernel (others are counted and dropped)."""
        while True:
            try:
                data, pid, uid, _ = recv_from(self._sock, RECV_MAX)
            except BlockingIOError:
                await self._readable()
                continue
            if self.accept is None or self.accept(pid, uid):
                return data
            self.foreign += 1
            if self.foreign % DRAIN_MAX == 0:
                await asyncio.sleep(0)  # a stream of them does not keep the loop here

    async def request(self, command: str, timeout: float | None = None) -> str:
        async with self._lock:
            self._drain()
            try:
                self._sock.sendto(encode_request(command), str(self.target))
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise MconsoleError(f"{self.target}: no guest answers ({e.strerror})") from None
            except BlockingIOError:
                # The guest's socket queue is full: it reads no requests (frozen or hung).
                raise MconsoleError(
                    f"{self.target}: the guest does not read its mconsole (queue full)"
                ) from None
            assembler = ReplyAssembler()
            try:
                async with asyncio.timeout(self.timeout if timeout is None else timeout):
                    while not assembler.done:
                        datagram = await self._datagram()
                        assembler.feed(decode_reply(datagram), len(datagram))
            except TimeoutError:
                raise MconsoleError(
                    f"{self.target}: no reply to {command!r} within the timeout"
                ) from None
            except ProtocolError as e:
                raise ProtocolError(f"{self.target}: {command!r}: {e}") from None
            return _check(command, self.target, assembler)

    async def proc(self, file: str) -> str:
        """Contents of the guest's /proc/FILE, read by the kernel itself (no agent)."""
        text = await self.request(f"proc {file}")
        return text[1:] if text.startswith("\n") else text


def proc_text(reply: str) -> str:
    """The file contents of a `proc` reply (it begins with a lone newline)."""
    return reply[1:] if reply.startswith("\n") else reply


@dataclass(frozen=True)
class Refused:
    """A notify datagram that is not the guest kernel's notification: `reason` is `garbage`
    (not the format: `problem` says why) or `foreign` (sent by another process)."""

    reason: str
    size: int
    problem: str


class NotifyListener:
    """The socket a guest's `mconsole=notify:PATH` sends to; one per guest."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = _bind(path)
        os.chmod(path, 0o666)  # the jailed guest runs as its own uid and must be able to send
        self.sock.setblocking(False)
        _ask_credentials(self.sock)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def read_ready(self, limit: int, accept: Accept | None = None) -> list[Notify | Refused]:
        """At most `limit` datagrams waiting now, each decoded or refused (never raises on
        what a guest sends)."""
        out: list[Notify | Refused] = []
        for _ in range(limit):
            try:
                data, pid, uid, truncated = recv_from(self.sock, NOTIFY_HEADER.size + MAX_DATA + 1)
            except BlockingIOError:
                break
            if accept is not None and not accept(pid, uid):
                out.append(Refused("foreign", len(data), f"sent by pid {pid} uid {uid}"))
                continue
            if truncated:
                out.append(Refused("garbage", len(data), "datagram longer than a notification"))
                continue
            try:
                out.append(decode_notify(data))
            except ProtocolError as e:
                out.append(Refused("garbage", len(data), str(e)))
        return out

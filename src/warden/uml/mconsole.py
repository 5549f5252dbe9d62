"""The UML management console: codec, a blocking client and an asyncio client.

The wire format is written down in docs/formats/mconsole.md; the structs below quote
arch/um/drivers/mconsole.h. The codec is sans-io (bytes in, values out) so that it is tested
with byte vectors; the two clients only move datagrams.

Replies carry no request id, so each client sends one request at a time (the async client
holds a lock across a request and all datagrams of its reply) and drops stale datagrams left
by a request that timed out.
"""

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
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
    """Collects the datagrams of one reply; `done` once a datagram without `more` arrives."""

    def __init__(self) -> None:
        self.err = False
        self.parts: list[str] = []
        self.done = False

    def feed(self, part: ReplyPart) -> None:
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


def _bind(path: Path, relative: bool = False) -> socket.socket:
    """A datagram socket bound at `path`.

    relative=True binds it by its bare name inside path.parent, so that its address (which UML
    replies to with sendto(), resolving it in the kernel's own mount namespace) is relative:
    a jailed kernel, whose working directory is that directory but whose root cannot reach it,
    still finds it (docs/architecture.md, "Jails"). The name is bound from a short-lived thread
    with a private working directory (unshare(CLONE_FS)): the daemon's own is never changed.
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
            while True:
                self._sock.recv(4096)
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
                datagram = self._sock.recv(4096)
            except TimeoutError:
                continue
            assembler.feed(decode_reply(datagram))
        return _check(command, self.target, assembler)


class AsyncClient:
    """asyncio client; safe to share between tasks (requests are serialized)."""

    def __init__(
        self,
        target: Path,
        reply_path: Path,
        timeout: float = DEFAULT_TIMEOUT,
        relative_reply: bool = False,
    ):
        self.target = target
        self.reply_path = reply_path
        self.timeout = timeout
        self._sock = _bind(reply_path, relative_reply)
        self._sock.setblocking(False)
        self._lock = asyncio.Lock()

    def close(self) -> None:
        # A request may be waiting in loop.sock_recv on this socket. Its reader must go now,
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
            while True:
                self._sock.recv(4096)
        except BlockingIOError:
            pass

    async def request(self, command: str, timeout: float | None = None) -> str:
        loop = asyncio.get_running_loop()
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
                        datagram = await loop.sock_recv(self._sock, 4096)
                        assembler.feed(decode_reply(datagram))
            except TimeoutError:
                raise MconsoleError(
                    f"{self.target}: no reply to {command!r} within the timeout"
                ) from None
            return _check(command, self.target, assembler)

    async def proc(self, file: str) -> str:
        """Contents of the guest's /proc/FILE, read by the kernel itself (no agent)."""
        text = await self.request(f"proc {file}")
        return text[1:] if text.startswith("\n") else text


def proc_text(reply: str) -> str:
    """The file contents of a `proc` reply (it begins with a lone newline)."""
    return reply[1:] if reply.startswith("\n") else reply


class NotifyListener:
    """The socket a guest's `mconsole=notify:PATH` sends to; one per guest."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = _bind(path)
        os.chmod(path, 0o666)  # the jailed guest runs as its own uid and must be able to send
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def read_ready(self) -> list[Notify]:
        """Every datagram waiting now; malformed ones are reported as ProtocolError."""
        out: list[Notify] = []
        while True:
            try:
                datagram = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(decode_notify(datagram))

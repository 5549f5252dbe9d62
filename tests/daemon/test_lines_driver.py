"""A terminal Line (daemon/lines.py) driven over real FIFOs with no guest: the test holds the
kernel's ends. A client that is too slow is dropped without slowing the guest or the others,
and a guest that does not read its input gets no more than MAX_PENDING_INPUT queued. Under
asyncio debug with every callback timed (tests/support/loopcheck.py).
"""

import asyncio
import os
from pathlib import Path
from typing import Any

from tests.support.loopcheck import run_driver
from warden.daemon import lines
from warden.daemon.files import MachineFiles, open_kernel_ends
from warden.daemon.lines import CLIENT_QUEUE, Client, Line


class Log:
    """A LineLog that keeps what it is told."""

    def __init__(self) -> None:
        self.out = 0
        self.inp = 0
        self.events: list[tuple[str, dict[str, object]]] = []

    def output(self, data: bytes) -> None:
        self.out += len(data)

    def input(self, data: bytes, user: str) -> None:
        self.inp += len(data)

    def event(self, kind: str, **fields: object) -> None:
        self.events.append((kind, fields))

    def close(self) -> None:
        pass


class Viewer:
    """A client as the API's attach makes it: output queued for a websocket; a viewer that
    never reads has its queue grow until CLIENT_QUEUE, then says it is too slow."""

    def __init__(self, user: str, reads: bool):
        self.reads = reads
        self.queued = 0
        self.got = 0
        self.closed = ""
        self.notices: list[str] = []
        self.client = Client(user, "test", self.send, self.notices.append, self.close)

    def send(self, data: bytes) -> None:
        if self.reads:
            self.got += len(data)
            return
        self.queued += len(data)
        if self.queued > CLIENT_QUEUE:
            raise RuntimeError("client too slow")

    def close(self, reason: str) -> None:
        self.closed = reason


def test_a_client_too_slow_is_dropped_and_slows_nobody(tmp_path: Path) -> None:
    files = MachineFiles(tmp_path / "m1", "m1")
    files.create(("con0",))
    got: dict[str, Any] = {}

    async def main() -> None:
        kernel = open_kernel_ends(files, "con0")  # the kernel's ends of the FIFOs
        line = Line("m1", "con0", files)
        log = Log()
        line.open_boot(log)
        fast, slow = Viewer("alice", reads=True), Viewer("bob", reads=False)
        line.attach(fast.client, want_write=True)
        line.attach(slow.client, want_write=False)
        total = 3 * CLIENT_QUEUE
        chunk = b"x" * 65536
        sent = 0
        while sent < total:  # the guest prints as fast as its FIFO takes it
            try:
                sent += os.write(kernel.write, chunk)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        while log.out < total:
            await asyncio.sleep(0.01)
        got.update(fast=fast.got, slow=slow.closed, clients=len(line.clients), log=log.events)
        line.close_boot("test over")
        kernel.close()

    run_driver(main)
    assert got["fast"] == 3 * CLIENT_QUEUE  # every byte, in spite of the slow one
    assert got["slow"] == "output failed: client too slow"
    assert got["clients"] == 1
    detached = [f for k, f in got["log"] if k == "detach"]
    assert detached == [
        {"user": "bob", "source": "test", "reason": "output failed: client too slow"}
    ]


def test_a_guest_that_reads_no_input_gets_a_bounded_queue(tmp_path: Path) -> None:
    files = MachineFiles(tmp_path / "m2", "m2")
    files.create(("con0",))
    got: dict[str, Any] = {}

    async def main() -> None:
        kernel = open_kernel_ends(files, "con0")
        line = Line("m2", "con0", files)
        log = Log()
        line.open_boot(log)
        writer = Viewer("alice", reads=True)
        line.attach(writer.client, want_write=True)
        paste = b"y" * (1 << 20)
        for _ in range(12):  # 12 MiB typed at a guest that reads nothing
            line.write(writer.client, paste)
            await asyncio.sleep(0)
        got.update(
            pending=line.pending_input,
            notices=list(writer.notices),
            dropped=[f for k, f in log.events if k == "input-dropped"],
        )
        line.close_boot("test over")
        kernel.close()

    run_driver(main)
    assert got["pending"] <= lines.MAX_PENDING_INPUT
    assert got["dropped"] and all(f["user"] == "alice" for f in got["dropped"])
    assert any("is not reading its input" in n for n in got["notices"])

"""A terminal Line (daemon/lines.py) driven over real FIFOs with no guest: the test holds the
kernel's ends. A client that is too slow is dropped without slowing the guest or the others,
and a guest that does not read its input gets no more than MAX_PENDING_INPUT queued. Under
asyncio debug with every callback timed (tests/support/loopcheck.py).
"""

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.loopcheck import run_driver
from warden.daemon import lines
from warden.daemon.files import KernelLineFds, MachineFiles, open_kernel_ends
from warden.daemon.lines import CLIENT_QUEUE, Client, Line


class Log:
    """A LineLog that keeps what it is told."""

    def __init__(self) -> None:
        self.out = 0
        self.inp = 0
        self.events: list[tuple[str, dict[str, object]]] = []
        self.done: Callable[[int], None] | None = None
        self.input_done: Callable[[int], None] | None = None

    def output(self, data: bytes) -> None:
        self.out += len(data)
        if self.done is not None:
            self.done(len(data))  # written at once

    def on_written(self, done: Callable[[int], None]) -> None:
        self.done = done

    def on_input_written(self, done: Callable[[int], None]) -> None:
        self.input_done = done

    def input(self, data: bytes, user: str) -> None:
        self.inp += len(data)
        if self.input_done is not None:
            self.input_done(len(data))  # written at once

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


def boot_line(tmp_path: Path, machine: str, log: Log) -> tuple[KernelLineFds, Line]:
    """A machine's con0 FIFOs, the kernel's ends of them (the test plays the kernel), and a
    Line booted on them with `log`; called on the loop."""
    files = MachineFiles(tmp_path / machine, machine)
    files.create(("con0",))
    kernel = open_kernel_ends(files, "con0")
    line = Line(machine, "con0", files)
    line.open_boot(log)
    return kernel, line


def test_a_client_too_slow_is_dropped_and_slows_nobody(tmp_path: Path) -> None:
    got: dict[str, Any] = {}

    async def main() -> None:
        log = Log()
        kernel, line = boot_line(tmp_path, "m1", log)
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
    got: dict[str, Any] = {}

    async def main() -> None:
        log = Log()
        kernel, line = boot_line(tmp_path, "m2", log)
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


class HeldLog(Log):
    """A LineLog whose writer confirms only when told (`confirm`, `confirm_input`), or never."""

    def __init__(self) -> None:
        super().__init__()
        self.inp_confirmed = 0

    def output(self, data: bytes) -> None:
        self.out += len(data)

    def input(self, data: bytes, user: str) -> None:
        self.inp += len(data)

    def confirm(self) -> None:
        if self.done is not None:  # (a relay that asks for no confirmation: nothing to do)
            self.done(self.out)

    def confirm_input(self) -> None:
        if self.input_done is not None:
            self.input_done(self.inp - self.inp_confirmed)
            self.inp_confirmed = self.inp


def guest_read(kernel: Any) -> bytes:
    """What the guest could read of its input now."""
    try:
        return os.read(kernel.read, 1 << 20)
    except BlockingIOError:
        return b""


def test_a_keystroke_reaches_the_guest_only_once_the_log_has_it(tmp_path: Path) -> None:
    """What a daemon killed now would leave: typed bytes the log has not confirmed are held,
    so the guest never got one the log lacks; `daemon-detach` counts the ones held."""
    got: dict[str, Any] = {}

    async def main() -> None:
        log = HeldLog()
        kernel, line = boot_line(tmp_path, "m5", log)
        writer = Viewer("alice", reads=True)
        line.attach(writer.client, want_write=True)
        line.write(writer.client, b"ls -l\n")
        await asyncio.sleep(0.05)
        got["before"] = guest_read(kernel)
        log.confirm_input()  # the writer: the 6 bytes are in the file
        await asyncio.sleep(0.05)
        got["after"] = guest_read(kernel)
        line.write(writer.client, b"rm -rf /tmp/x\n")  # typed; the daemon then goes away
        await asyncio.sleep(0.05)
        line.detach_daemon()
        await asyncio.sleep(0.05)
        got["detached"] = guest_read(kernel)
        got["events"] = list(log.events)
        log.confirm_input()  # a late confirmation belongs to nobody now
        await asyncio.sleep(0.05)
        got["late"] = guest_read(kernel)
        kernel.close()

    run_driver(main)
    assert got["before"] == b""
    assert got["after"] == b"ls -l\n"
    assert got["detached"] == b"" and got["late"] == b""
    detach = [f for k, f in got["events"] if k == "daemon-detach"]
    assert detach and detach[0]["input_held"] == len(b"rm -rf /tmp/x\n")


def test_a_writer_that_never_confirms_input_holds_keystrokes_for_ack_grace_only(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(lines, "ACK_GRACE", 0.2)
    got: dict[str, Any] = {}

    async def main() -> None:
        log = HeldLog()  # never confirms, until the end
        kernel, line = boot_line(tmp_path, "m6", log)
        writer = Viewer("alice", reads=True)
        line.attach(writer.client, want_write=True)
        line.write(writer.client, b"a")
        await asyncio.sleep(0.1)
        got["held"] = guest_read(kernel)
        await asyncio.sleep(0.3)  # past the grace: relayed unconfirmed
        got["grace"] = guest_read(kernel)
        line.write(writer.client, b"b")  # the writer is still behind: at once
        await asyncio.sleep(0.02)
        got["late_mode"] = guest_read(kernel)
        log.confirm_input()  # it catches up: nothing is relayed twice
        await asyncio.sleep(0.05)
        got["twice"] = guest_read(kernel)
        line.write(writer.client, b"c")  # and the next keystroke waits for its own again
        await asyncio.sleep(0.05)
        got["next_held"] = guest_read(kernel)
        log.confirm_input()
        await asyncio.sleep(0.05)
        got["next"] = guest_read(kernel)
        line.close_boot("test over")
        kernel.close()

    run_driver(main)
    assert got["held"] == b"" and got["grace"] == b"a"
    assert got["late_mode"] == b"b" and got["twice"] == b""
    assert got["next_held"] == b"" and got["next"] == b"c"


def test_output_stays_in_the_fifo_until_the_log_has_it(tmp_path: Path) -> None:
    """What a daemon killed now would leave: the bytes it relayed and logged but whose write
    the log has not confirmed are still in the FIFO, for the next daemon."""
    got: dict[str, Any] = {}

    async def main() -> None:
        log = HeldLog()
        kernel, line = boot_line(tmp_path, "m3", log)
        viewer = Viewer("alice", reads=True)
        line.attach(viewer.client, want_write=False)
        os.write(kernel.write, b"a" * 1000)
        while viewer.got < 1000:
            await asyncio.sleep(0.001)
        os.write(kernel.write, b"b" * 500)  # printed while the first peek waits
        await asyncio.sleep(0.05)
        got["relayed"], got["logged"] = viewer.got, log.out
        got["in_fifo"] = lines._fionread(kernel.out_keep)
        log.confirm()  # the writer: 1000 bytes are in the file
        while viewer.got < 1500:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        got["in_fifo_after"] = lines._fionread(kernel.out_keep)
        log.confirm()
        await asyncio.sleep(0.05)
        got["in_fifo_end"] = lines._fionread(kernel.out_keep)
        line.close_boot("test over")
        kernel.close()

    run_driver(main)
    assert (got["relayed"], got["logged"]) == (1000, 1000)  # relayed at once, not re-read
    assert got["in_fifo"] == 1500  # nothing taken off before the log confirmed
    assert got["in_fifo_after"] == 500  # exactly what was confirmed
    assert got["in_fifo_end"] == 0


def test_a_writer_that_never_confirms_stops_the_relay_for_ack_grace_only(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(lines, "ACK_GRACE", 0.2)
    got: dict[str, Any] = {}

    async def main() -> None:
        log = HeldLog()  # never confirms
        kernel, line = boot_line(tmp_path, "m4", log)
        viewer = Viewer("alice", reads=True)
        line.attach(viewer.client, want_write=False)
        total = 3 << 20  # three times the FIFO
        chunk = b"z" * 65536
        sent = 0
        t0 = asyncio.get_running_loop().time()
        while sent < total:
            try:
                sent += os.write(kernel.write, chunk)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        while viewer.got < total:
            await asyncio.sleep(0.01)
        got["took"] = asyncio.get_running_loop().time() - t0
        got["logged"] = log.out
        log.confirm()  # the writer catches up: late confirmations take nothing more off
        await asyncio.sleep(0.05)
        got["in_fifo"] = lines._fionread(kernel.out_keep)
        os.write(kernel.write, b"w" * 1000)  # and the next output waits for its own again
        while viewer.got < total + 1000:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        got["in_fifo_next"] = lines._fionread(kernel.out_keep)
        line.close_boot("test over")
        kernel.close()

    run_driver(main)
    assert got["logged"] == 3 << 20
    assert got["took"] < 5.0  # one grace, then on as before (not a grace per peek)
    assert got["in_fifo"] == 0
    assert got["in_fifo_next"] == 1000


def test_a_kernel_ending_as_a_daemon_re_attaches_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """The fault campaign's kill -9 during a stop: the kernel had closed its files (no reader on
    LINE.in) while its pid still lived, and the next daemon's re-attach raised ENXIO, so the
    daemon did not start. Its output is still relayed; nothing typed reaches it."""
    files = MachineFiles(tmp_path / "m5", "m5")
    files.create(("con0",))
    got: dict[str, Any] = {}

    async def main() -> None:
        out = files.fifo("con0", "out")
        keep = os.open(out, os.O_RDONLY | os.O_NONBLOCK)  # the kernel's spare read end
        wfd = os.open(out, os.O_WRONLY | os.O_NONBLOCK)  # its write end; LINE.in: no reader
        line = Line("m5", "con0", files)
        log = Log()
        line.open_boot(log, reattach=True)
        viewer = Viewer("alice", reads=True)
        line.attach(viewer.client, want_write=True)
        os.write(wfd, b"last words")
        while viewer.got < 10:
            await asyncio.sleep(0.001)
        line.write(viewer.client, b"ls\n")
        got["relayed"] = viewer.got
        os.close(wfd)
        os.close(keep)
        line.close_boot("kernel ended")

    run_driver(main)
    assert got["relayed"] == 10

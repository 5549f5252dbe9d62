"""Boot a real UML guest without the daemon, for tests and benchmarks of lower layers.

The guest's console is a socketpair held by the test; the kernel runs in a cgroup of its own
(warden-<instance>/raw-<n>), so `close()` kills every process of the guest with cgroup.kill
and checks that none is left. This is the same path the daemon uses, minus supervision.
"""

import os
import re
import select
import socket
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

from warden.host import cgroup
from warden.paths import Layout
from warden.uml import cmdline, kernel

_seq = count()
PROMPT = re.compile(rb"[#$] (\x1b\[6n)?$")


class RawGuest:
    def __init__(
        self,
        layout: Layout,
        base: Path,
        cow: Path,
        memory: int = 64 << 20,
        kernel_path: Path | None = None,
        kernel_args: str = "",
        extra: tuple[str, ...] = (),
        name: str | None = None,
        seed: Path | None = None,
        log: Path | None = None,
        pass_fds: tuple[int, ...] = (),
        cow_only: bool = False,
    ):
        self.layout = layout
        self.name = name or f"raw{os.getpid()}-{next(_seq)}"
        self.base = base
        self.cow = cow
        self.memory = memory
        self.kernel = kernel_path or kernel.resolve(layout).path
        self.kernel_args = kernel_args
        self.extra = extra
        self.seed = seed
        self.log = log or (cow.parent / f"{self.name}.log")
        self.pass_fds = pass_fds  # more fds for the kernel, by number (tty log, disguise)
        # cow_only: boot `ubd0=COW` without naming the backing file, so that the kernel takes
        # it from the COW header (as after `warden disk rebase`)
        self.cow_only = cow_only
        self.uml_dir = cow.parent / f"{self.name}.ctl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cg = cgroup.Cgroup(cgroup.detect(), layout.instance, self.name)
        self.sock: socket.socket | None = None
        self.output = bytearray()
        self._mark = 0  # expect() searches the output after the previous match

    def start(self) -> "RawGuest":
        self.uml_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = theirs.fileno()
        plan = cmdline.BootPlan(
            memory=self.memory,
            cow=self.cow,
            base=self.base,
            umid=self.name,
            uml_dir=self.uml_dir,
            lines=(cmdline.LineFds("con0", fd, fd),),
            seed=self.seed,
            kernel_args=self.kernel_args,
            extra=self.extra,
        )
        argv = cmdline.argv(self.kernel, plan)
        if self.cow_only:
            argv = [f"ubd0={self.cow}" if a.startswith("ubd0=") else a for a in argv]
        self.cg.create()
        shim = kernel.xstate_shim(self.layout)
        procs = [str(p) for p in self.cg.procs_files()]
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below

        def preexec() -> None:
            cgroup.join(procs)
            os.setsid()

        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(fd, *self.pass_fds),
            env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(shim)},
            preexec_fn=preexec,
        )
        log.close()
        theirs.close()
        ours.setblocking(False)
        self.sock = ours
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def read(self, timeout: float) -> bytes:
        assert self.sock is not None
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return b""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return b""
        self.output += data
        return data

    def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float = 30.0) -> bytes:
        """Read until `pattern` appears in the output since the last expect; return that text."""
        start = self._mark
        deadline = time.monotonic() + timeout
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        while True:
            m = rx.search(self.output, start)
            if m:
                text = bytes(self.output[start : m.end()])
                self._mark = m.end()
                return text
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"guest exited ({self.proc.returncode}) before {rx.pattern!r}; "
                    f"console:\n{self.output[-2000:].decode(errors='replace')}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no {rx.pattern!r} within {timeout}s; console:\n"
                    f"{self.output[-2000:].decode(errors='replace')}"
                )
            self.read(min(left, 0.5))

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                select.select([], [self.sock], [], 1)

    def wait_prompt(self, timeout: float = 60.0) -> None:
        self.expect(PROMPT, timeout)

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command on the console; return its output (without the echo)."""
        tag = f"{next(_seq)}"
        self.send(f"{command}; echo __done{tag}__ $?\n".encode())
        text = self.expect(re.compile(rf"__done{tag}__ (\d+)".encode()), timeout).decode(
            errors="replace"
        )
        self.wait_prompt(timeout)
        body = text.split("\n", 1)[1] if "\n" in text else ""
        return body.rsplit(f"__done{tag}__", 1)[0].replace("\r\n", "\n")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill every process of the guest (through its cgroup) and remove its files."""
        if self.cg.exists():
            if self.cg.populated():
                self.cg.kill()
            if not self.cg.wait_empty(10):
                print(f"rawboot: {self.name}: processes left: {self.cg.pids()}", file=sys.stderr)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.cg.remove()
        if self.sock is not None:
            self.sock.close()

    def __enter__(self) -> "RawGuest":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

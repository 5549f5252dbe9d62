"""A real warden daemon for a test: its own WARDEN_HOME, driven through the real CLI.

`DaemonProc.close()` kills every guest of that home through the cgroup tree
(warden-INSTANCE/*), whatever state the daemon is in, stops the daemon, and reports what it had
to clean: a test that leaks fails through `assert_clean()`.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from warden.host import cgroup
from warden.paths import Layout

WARDEN = [sys.executable, "-m", "warden"]


def instance_groups(layout: Layout) -> list[Path]:
    """Every cgroup directory of this home in every hierarchy."""
    h = cgroup.detect()
    roots = [h.unified, *h.v1.values()]
    out = []
    for r in dict.fromkeys(roots):
        d = r / f"warden-{layout.instance}"
        if d.exists():
            out.append(d)
    return out


def kill_home(layout: Layout) -> list[int]:
    """cgroup.kill every guest of `layout`; returns the pids that were still there."""
    h = cgroup.detect()
    top = h.unified / f"warden-{layout.instance}"
    pids: list[int] = []
    if top.exists():
        # The daemon may be removing groups at the same time: a vanished group is fine.
        for g in [g for g in top.iterdir() if g.is_dir()]:
            with contextlib.suppress(FileNotFoundError):
                pids += [int(p) for p in (g / "cgroup.procs").read_text().split()]
                (g / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        for g in [g for g in top.iterdir() if g.is_dir()]:
            with contextlib.suppress(FileNotFoundError):
                while (g / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                    time.sleep(0.01)
    for d in instance_groups(layout):
        for g in sorted(d.iterdir(), reverse=True):
            if g.is_dir():
                try:
                    g.rmdir()
                except OSError:
                    pass
        try:
            d.rmdir()
        except OSError:
            pass
    return pids


class DaemonProc:
    def __init__(
        self, layout: Layout, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ):
        self.layout = layout
        self.args = args  # more `warden daemon` options (--cluster ...)
        self.env = {**os.environ, "WARDEN_HOME": str(layout.home), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = layout.home / "daemon.log"

    def start(self, timeout: float = 30.0) -> "DaemonProc":
        self.layout.ensure()
        logf = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [*WARDEN, "daemon", *self.args],
            env=self.env,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            r = self.cli("status", check=False)
            if r.returncode == 0:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"daemon did not answer within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cli(
        self, *args: str, input: bytes | str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        data = input.encode() if isinstance(input, str) else input
        r = subprocess.run(
            [*WARDEN, *args], env=self.env, input=data, capture_output=True, timeout=timeout
        )
        out = subprocess.CompletedProcess(
            r.args,
            r.returncode,
            r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace"),
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"warden {' '.join(args)} exited {r.returncode}:\n{out.stdout}\n{out.stderr}"
            )
        return out

    def apply(self, text: str, name: str = "fleet.toml") -> subprocess.CompletedProcess[str]:
        path = self.layout.home / name
        path.write_text(text)
        return self.cli("apply", str(path))

    def console(self, name: str, script: str, timeout: float = 2.0, line: str = "") -> str:
        args = ["console", name, "--timeout", str(timeout)]
        if line:
            args += ["--line", line]
        return self.cli(*args, input=script).stdout

    def ls(self) -> dict[str, dict[str, Any]]:
        import json

        return {m["name"]: m for m in json.loads(self.cli("ls", "--json").stdout)}

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def close(self) -> list[int]:
        """Stop the daemon (guests outlive it), then kill every guest through its cgroup, so
        nothing races the daemon's own clean-up; return the pids that had to be killed."""
        self.stop()
        return kill_home(self.layout)

    def assert_clean(self) -> None:
        assert instance_groups(self.layout) == [], "cgroups left behind"


def wait_state(d: "DaemonProc", name: str, state: str, timeout: float = 90) -> dict[str, Any]:
    """`name`'s `warden ls` entry once it is in `state`; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        info = d.ls()[name]
        if info["state"] == state:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is {info['state']}, not {state}: {info}")
        time.sleep(0.1)


def run_on(d: "DaemonProc", name: str, command: str, timeout: float = 3.0) -> str:
    """Type `command` on the guest's console; return what it printed between markers."""
    tag = f"m{time.monotonic_ns()}"
    out = d.console(name, f"echo {tag}-a; {command}; echo {tag}-b\n", timeout=timeout)
    m = re.search(rf"\n{tag}-a\r?\n(.*?){tag}-b", out, re.S)
    assert m, f"no marked output from {name}: {out!r}"
    return m.group(1).replace("\r\n", "\n")

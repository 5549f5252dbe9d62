"""Running the battery on a guest's console line, in the daemon (the thin, async part).

The daemon attaches to the line as a writer named `warden-score` (refused while someone else
writes, unless forced), types the script, and collects what the line prints until the end mark,
at most ANSWER_MAX bytes and `timeout` seconds. Every byte stays in the line's own logs like any
console input: the score's commands are part of the guest's record. The host's side of the
system-call comparison is measured here too, with the same dd the guest runs.
"""

import asyncio
import contextlib
import re
import subprocess
from collections.abc import Callable

from warden.daemon.lines import Client, Line
from warden.honeypot.score import judge as j
from warden.honeypot.score import script as sc
from warden.honeypot.score import table as tb

ANSWER_MAX = 8 << 20
CTRL_U = b"\x15"  # kill a half-typed line first
HOST_DD = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=20000"]  # as the probe


def host_ns_per_syscall(runs: int = 3) -> float | None:
    """The host's cost of a read+write pair, as the guest's dd measures it (best of `runs`)."""
    best: float | None = None
    for _ in range(runs):
        try:
            r = subprocess.run(HOST_DD, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return best
        ns = j.ns_per_syscall(r.stderr)
        if ns is not None and (best is None or ns < best):
            best = ns
    return best


def host_cpuid_faulting(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return None if m is None else "cpuid_fault" in m.group(1).split()


async def collect(line: Line, text: bytes, done_mark: bytes, timeout: float, force: bool) -> bytes:
    """Type `text` on `line` and return what it printed until `done_mark` (or the timeout)."""
    buf = bytearray()
    done = asyncio.Event()

    def send(data: bytes) -> None:
        room = ANSWER_MAX - len(buf)
        if room > 0:
            buf.extend(data[:room])
        if done_mark in buf[-(len(data) + len(done_mark)) :] or room <= 0:
            done.set()

    def closed(reason: str) -> None:
        done.set()

    client = Client(user="warden-score", source="daemon", send=send,
                    notify=lambda _t: None, close=closed)  # fmt: skip
    line.attach(client, want_write=True, force=force)
    try:
        line.write(client, CTRL_U + text)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        line.detach(client, "score done")
    return bytes(buf)


async def score_line(
    line: Line,
    timeout: float = 180.0,
    force: bool = False,
    host_facts: Callable[[], j.HostFacts] | None = None,
) -> j.Report:
    table = tb.load()
    script = sc.build(table)
    loop = asyncio.get_running_loop()
    facts_task = loop.run_in_executor(None, host_facts or default_host_facts)
    console = await collect(line, script.text.encode(), f"{script.mark}-END".encode(), timeout,
                            force)  # fmt: skip
    facts = await facts_task
    answer = sc.parse(console, script, table)
    return j.judge(table, answer.results, facts, answer.user, answer.complete)


def default_host_facts() -> j.HostFacts:
    return j.HostFacts(host_ns_per_syscall(), host_cpuid_faulting())

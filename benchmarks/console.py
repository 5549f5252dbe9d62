"""Claims of the session logs and the SSH concentrator (issue 5), side by side in one run.

1. Console throughput with session logging against the same guest without it (fleet
   `[logs] enabled = false`): a guest prints a file to its console with no client attached;
   the guest times the `cat` (/proc/uptime). The daemon must drain the FIFO and, with logs
   on, record every byte. Boots alternate on/off; medians compared. Goal: ours >= 95%.
2. Keystroke echo round trip through the concentrator (OpenSSH `ssh`, asyncssh, the line)
   against a direct `warden console` (its websocket): one key sent, time until the guest's
   echo arrives back. Blocks alternate. Goal: at most 2 ms added at the median.
3. 100 concurrent SSH sessions over 10 guests (1 writer + 9 spies each) hold: every session
   sees its guest's answer to a command typed by its writer. Goal: 100 of 100.

Each claim ends with its own RESULT line (run_all.py tabulates them all).
"""

import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, result

# isort: split
from tests.support.daemon import DaemonProc
from tests.support.ssh_client import SshSession, SshUser
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

SIZE = int(os.environ.get("CONSOLE_BYTES", str(4 << 20)))  # file in the guest's /tmp
REPEAT = int(os.environ.get("CONSOLE_REPEAT", "8"))  # printed this many times per run
ROUNDS = int(os.environ.get("CONSOLE_ROUNDS", "5"))  # boots per mode
KEYS = int(os.environ.get("CONSOLE_KEYS", "60"))  # keystrokes per block
BLOCKS = int(os.environ.get("CONSOLE_BLOCKS", "4"))  # blocks per path
GUESTS, PER_GUEST = 10, 10
ONLY = os.environ.get("CONSOLE_ONLY", "123")  # which claims to run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fleet(port: int, alice: SshUser, n: int, logs: bool = True) -> str:
    text = f"""
[concentrator]
listen = "127.0.0.1:{port}"
[logs]
enabled = {"true" if logs else "false"}
quota = "1G"
[[owner]]
name = "alice"
keys = ["{alice.public}"]
"""
    for i in range(n):
        text += f'[[machine]]\nname = "g{i}"\nowner = "alice"\nmemory = "64M"\nautostart = false\n'
    return text


def wait_running(d: DaemonProc, names: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ls = d.ls()
        if all(ls[n]["state"] == "running" for n in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError({n: ls[n]["state"] for n in names})
        time.sleep(0.2)


def shell(
    d: DaemonProc, name: str, command: str, pattern: str, timeout: float = 120
) -> re.Match[str]:
    """Type `command`, then read the console's scrollback until `pattern` shows."""
    d.console(name, command + "\n", timeout=0.3)
    deadline = time.monotonic() + timeout
    while True:
        out = d.cli("console", name, "--timeout", "0.3", "--scrollback", "65536", input="").stdout
        found = list(re.finditer(pattern, out))
        if found:
            return found[-1]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {pattern!r} not seen: {out[-500:]!r}")
        time.sleep(1)


def throughput(d: DaemonProc, port: int, alice: SshUser) -> tuple[list[float], list[float]]:
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    for rnd in range(ROUNDS):
        for logs in (True, False) if rnd % 2 == 0 else (False, True):
            d.apply(fleet(port, alice, 1, logs=logs))
            d.cli("start", "g0")
            wait_running(d, ["g0"])
            shell(d, "g0", "echo bo''ot-ok", r"boot-ok")
            tag = f"T{rnd}{int(logs)}"
            cmd = (
                f"yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW | "
                f"head -c {SIZE} > /tmp/big; (sleep 1; a=$(cut -d' ' -f1 /proc/uptime); "
                f"for i in $(seq {REPEAT}); do cat /tmp/big; done; "
                f"b=$(cut -d' ' -f1 /proc/uptime); echo {tag} $a $b) &"
            )
            cpu0 = daemon_cpu(d)
            m = shell(d, "g0", cmd, rf"{tag} ([\d.]+) ([\d.]+)")
            cpu = daemon_cpu(d) - cpu0
            cpus[logs].append(cpu)
            a, b = float(m.group(1)), float(m.group(2))
            total = SIZE * REPEAT
            rate = total / max(b - a, 0.01) / 1e6
            rates[logs].append(rate)
            print(
                f"  round {rnd} logs={'on ' if logs else 'off'}: {total >> 20} MiB in "
                f"{b - a:.2f}s = {rate:.2f} MB/s; daemon CPU {cpu:.2f}s",
                flush=True,
            )
            d.cli("kill", "g0")
    print(
        f"  daemon CPU per run (median): logs on {median(cpus[True]):.2f}s, "
        f"off {median(cpus[False]):.2f}s"
    )
    return rates[True], rates[False]


def daemon_cpu(d: DaemonProc) -> float:
    """CPU seconds the daemon (all its threads) has used so far."""
    assert d.proc is not None
    fields = Path(f"/proc/{d.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{needle!r} not seen: {buf[-200:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            data = os.read(fd, 65536)
            if not data:
                raise EOFError(buf[-200:])
            buf += data
    return buf


def _keystrokes(proc: subprocess.Popen[bytes]) -> list[float]:
    """Send KEYS single keys; return each key's echo round trip in ms."""
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout.fileno()
    proc.stdin.write(b"echo ready-$((1+1))\n")
    proc.stdin.flush()
    _read_until(out, b"ready-2", 60)
    time.sleep(0.3)
    while select.select([out], [], [], 0.2)[0]:
        os.read(out, 65536)
    samples = []
    for i in range(KEYS):
        key = b"x" if i % 2 else b"y"
        t0 = time.perf_counter()
        os.write(proc.stdin.fileno(), key)
        _read_until(out, key, 10)
        samples.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.01)
    os.write(proc.stdin.fileno(), b"\x15\n")  # Ctrl-U: drop the typed line
    time.sleep(0.2)
    return samples


def echo_block(argv: list[str], env: dict[str, str]) -> list[float]:
    """Run a console client (`argv`), time KEYS keystrokes through it, end it."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        return _keystrokes(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def echo_rtt(d: DaemonProc, port: int, alice: SshUser) -> tuple[list[float], list[float]]:
    d.apply(fleet(port, alice, 1))
    d.cli("start", "g0")
    wait_running(d, ["g0"])
    shell(d, "g0", "echo bo''ot-ok", r"boot-ok")
    ssh_ms: list[float] = []
    direct_ms: list[float] = []
    for block in range(-1, BLOCKS):  # block -1 warms both paths up and is not counted
        for path in ("ssh", "console") if block % 2 == 0 else ("console", "ssh"):
            if path == "ssh":
                argv = alice.argv(port, "g0", tty=True)  # -tt: an interactive ssh
            else:
                argv = [sys.executable, "-m", "warden", "console", "g0", "--timeout", "0.2"]
            samples = echo_block(argv, d.env)
            if block < 0:
                continue
            (ssh_ms if path == "ssh" else direct_ms).extend(samples)
            print(
                f"  block {block} {path:<7}: median {median(samples):.2f} ms "
                f"(p90 {sorted(samples)[int(len(samples) * 0.9)]:.2f})",
                flush=True,
            )
    d.cli("kill", "g0")
    return ssh_ms, direct_ms


def many_sessions(d: DaemonProc, port: int, alice: SshUser) -> tuple[int, float]:
    names = [f"g{i}" for i in range(GUESTS)]
    d.apply(fleet(port, alice, GUESTS))
    for n in names:
        d.cli("start", n, "--no-wait")
    wait_running(d, names, timeout=600)
    for n in names:
        shell(d, n, "echo bo''ot-ok", r"boot-ok")
    sessions: list[tuple[str, SshSession]] = []
    t0 = time.monotonic()
    try:
        for n in names:
            for k in range(PER_GUEST):
                args = (n,) if k == 0 else (n, "--spy")
                sessions.append((n, alice.session(port, *args)))
        for _, s in sessions:
            s.expect("attached to", stream="err", timeout=120)
        attach_s = time.monotonic() - t0
        print(f"  {len(sessions)} sessions attached in {attach_s:.1f}s", flush=True)
        t = time.monotonic()
        d.ls()
        print(f"  warden ls with {len(sessions)} sessions: {time.monotonic() - t:.3f}s")
        for i, n in enumerate(names):
            writer = sessions[i * PER_GUEST][1]
            writer.send(f"echo mark-{n}-$((40+2))\n")
        held = 0
        for n, s in sessions:
            try:
                s.expect(rf"mark-{n}-42", timeout=120)
                held += 1
            except AssertionError as e:
                print(f"  {n}: a session did not hold: {str(e)[:200]}")
        return held, attach_s
    finally:
        for _, s in sessions:
            s.close()


def scratch() -> tuple[DaemonProc, SshUser]:
    """A running daemon in a scratch WARDEN_HOME with the minimal image, and alice's SSH key
    in a scratch directory (`drop` removes both)."""
    home = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    keys = Path(tempfile.mkdtemp(prefix="wbk-", dir="/tmp"))
    return DaemonProc(lay).start(), SshUser(keys, "alice")


def drop(d: DaemonProc, alice: SshUser) -> None:
    d.close()
    shutil.rmtree(d.layout.home, ignore_errors=True)
    shutil.rmtree(alice.dir, ignore_errors=True)


def main() -> int:
    d, alice = scratch()
    port = free_port()
    try:
        if "1" in ONLY:
            claim_throughput(d, port, alice)
        if "2" in ONLY:
            claim_echo(d, port, alice)
        if "3" in ONLY:
            claim_sessions(d, port, alice)
    finally:
        drop(d, alice)
    return 0


def claim_throughput(d: DaemonProc, port: int, alice: SshUser) -> None:
    print("1. console throughput, session logs on vs off", flush=True)
    on, off = throughput(d, port, alice)
    ours, anchor = median(on), median(off)
    result(
        "console throughput with session logs (vs without)",
        ours,
        anchor,
        ">= 0.95x",
        "MB/s",
        anchor_name="same guest, logs off",
        ok=ours / anchor >= 0.95,
    )


def claim_echo(d: DaemonProc, port: int, alice: SshUser) -> None:
    print("2. keystroke echo round trip: concentrator vs warden console", flush=True)
    ssh_ms, direct_ms = echo_rtt(d, port, alice)
    added = median(ssh_ms) - median(direct_ms)
    print(
        f"  ssh median {median(ssh_ms):.2f} ms, console median {median(direct_ms):.2f} ms,"
        f" added {added:+.2f} ms (stdev ssh {statistics.pstdev(ssh_ms):.2f})"
    )
    result(
        "keystroke echo via SSH concentrator (median)",
        median(ssh_ms),
        median(direct_ms),
        "<= +2 ms",
        "ms",
        anchor_name="warden console",
        ok=added <= 2.0,
    )


def claim_sessions(d: DaemonProc, port: int, alice: SshUser) -> None:
    print("3. 100 concurrent SSH sessions over 10 guests", flush=True)
    held, attach_s = many_sessions(d, port, alice)
    result(
        f"SSH sessions that hold, of {GUESTS * PER_GUEST} over {GUESTS} guests",
        float(held),
        None,
        f"{GUESTS * PER_GUEST} of {GUESTS * PER_GUEST}",
        "sessions",
        ok=held == GUESTS * PER_GUEST,
    )


if __name__ == "__main__":
    sys.exit(main())

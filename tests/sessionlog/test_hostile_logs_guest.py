"""Real guests against the host's disk: a kernel that floods its own stdout/stderr
(logs/kernel-BOOT.log), across a daemon kill -9, next to a guest that must not notice."""

import json
import time

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_guest_lifecycle import run_on, wait_state
from tests.support.daemon import DaemonProc

pytestmark = pytest.mark.guest

# printk reaches the kernel's stderr after boot only when the boot console is kept: a fleet's
# kernel_args can ask for that, and a guest that loads a kernel module can write there anyway.
LOUD = "earlyprintk keep_bootcon"
LINE = "kmsg-flood-" + "x" * 80


def flood(d: DaemonProc, name: str, lines: int, tag: str) -> None:
    """Guest root writes `lines` kernel messages through /dev/kmsg; returns once it is done."""
    d.console(
        name,
        f"(i=0; while [ $i -lt {lines} ]; do echo {LINE}-$i > /dev/kmsg; i=$((i+1)); done; "
        f"touch /tmp/{tag}) >/dev/null 2>&1 &\n",
        timeout=0.5,
    )
    deadline = time.monotonic() + 300
    while "yes" not in run_on(d, name, f"[ -e /tmp/{tag} ] && echo yes", timeout=3):
        assert time.monotonic() < deadline, f"{name}: the flood never ended"
        time.sleep(1)


def events(d: DaemonProc, name: str, kind: str) -> list[dict[str, object]]:
    out = json.loads(d.cli("events", name, "--json").stdout)
    return [e for e in out if e["kind"] == kind]


def test_a_kernel_log_flood_stops_at_its_quota(daemon: DaemonProc) -> None:
    quota = 4 << 20
    cap = 512 << 10  # docs/formats/session-log.md: min(quota/8, 1 MiB) per boot
    daemon.apply(
        '[logs]\nquota = "4M"\n'
        + FLEET_HEAD
        + machine_toml("noisy", kernel_args=LOUD)
        + machine_toml("quiet")
    )
    wait_state(daemon, "noisy", "running")
    wait_state(daemon, "quiet", "running")
    logs = daemon.layout.machine("noisy") / "logs"
    klog = logs / "kernel-1.log"
    quiet_log = daemon.layout.machine("quiet") / "logs" / "kernel-1.log"
    quiet_before = quiet_log.read_bytes()
    assert b"Checking" in klog.read_bytes()  # the kernel's own start-up lines are kept

    flood(daemon, "noisy", 12000, "f1")  # ~1.1 MiB of kernel messages
    deadline = time.monotonic() + 60
    while not events(daemon, "noisy", "kernel-log-quota"):
        assert time.monotonic() < deadline, f"no kernel-log-quota event; {klog.stat().st_size}"
        time.sleep(0.5)
    size = klog.stat().st_size
    assert size <= cap, size
    text = klog.read_bytes()
    assert b"kmsg-flood" in text
    assert b"the kernel log reached its quota of" in text.splitlines()[-1]
    [ev] = events(daemon, "noisy", "kernel-log-quota")
    assert ev["boot"] == 1 and ev["cap"] == cap
    # The guest runs on; the other guest saw nothing of it.
    assert run_on(daemon, "noisy", "echo $((6*7))-alive").strip() == "42-alive"
    assert run_on(daemon, "quiet", "echo $((6*8))-quiet").strip() == "48-quiet"
    assert quiet_log.read_bytes() == quiet_before
    assert not events(daemon, "quiet", "kernel-log-quota")

    # The budget is the file: a new daemon (the last one killed) stores no more of this boot.
    daemon.kill9()
    time.sleep(0.5)
    daemon.start()
    wait_state(daemon, "noisy", "running")
    flood(daemon, "noisy", 3000, "f2")
    assert run_on(daemon, "noisy", "echo $((6*9))-still").strip() == "54-still"
    daemon.cli("stop", "noisy")
    wait_state(daemon, "noisy", "stopped")
    time.sleep(0.5)
    size = klog.stat().st_size
    assert size <= cap + 256, size
    last = klog.read_bytes().splitlines()[-1]
    assert b"bytes of kernel output were not stored" in last, last
    # and the guest's whole logs stay within its quota
    used = sum(p.stat().st_size for p in logs.iterdir() if p.is_file())
    assert used <= quota + 4096, used


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_intruders_tty_flood_leaves_room_for_the_next_exec_and_keystrokes(
    daemon: DaemonProc,
) -> None:
    """On the honeypot kernel: 64 MiB through a pty session in the guest (logged on both
    ends), then the intruder types a command on another session and one on the console."""
    from tests.support.honeypot import honeypot_kernel
    from tests.support.netlab import guest_sh, wait_running
    from warden.kernelbuild import build as kbuild

    honeypot_kernel()  # in the shared cache (built there once)
    kbuild.build(daemon.layout, "honeypot")
    quota = 8 << 20
    daemon.apply(
        '[logs]\nquota = "8M"\n' + FLEET_HEAD + machine_toml("pot", kernel="honeypot", tty_log=True)
    )
    wait_running(daemon, "pot")
    guest_sh(daemon, "pot", "telnetd -p 2323 -l /bin/sh")
    t0 = time.monotonic()
    guest_sh(
        daemon,
        "pot",
        "( (sleep 1; echo 'head -c 67108864 /dev/zero; touch /tmp/flooded'; sleep 900) "
        "| telnet 127.0.0.1 2323 >/dev/null 2>&1 & )",
    )
    # one command that waits (typing a poll again and again would be keystrokes too)
    guest_sh(daemon, "pot", "while [ ! -e /tmp/flooded ]; do sleep 1; done", timeout=600)
    print(f"64 MiB through the pty in {time.monotonic() - t0:.1f}s")
    # the intruder's next session: keystrokes into a pty master, a program run
    guest_sh(
        daemon,
        "pot",
        "(sleep 1; echo '/bin/busybox head -c 5 /etc/passwd; echo typed-after-$((6*7))'; sleep 2) "
        "| telnet 127.0.0.1 2323 >/tmp/second 2>&1",
    )
    assert "typed-after-42" in guest_sh(daemon, "pot", "cat /tmp/second")
    assert guest_sh(daemon, "pot", "/bin/busybox id -u; echo console-$((7*7))").split() == [
        "0",
        "console-49",
    ]
    daemon.cli("stop", "pot")
    wait_state(daemon, "pot", "stopped")
    out = daemon.cli("logs", "dump", "pot", "--line", "tty", "--json").stdout
    recs = [json.loads(x) for x in out.splitlines()]
    drops = [r for r in recs if r["type"] == "dropped"]
    assert drops and drops[-1]["state"] == "closing" and drops[-1]["bytes_out"] > 64 << 20
    argvs = [r["argv"] for r in recs if r.get("op") == "exec"]
    head = ["/bin/busybox", "head", "-c", "5", "/etc/passwd"]
    assert head in argvs and ["/bin/busybox", "id", "-u"] in argvs, argvs[-10:]
    typed = "".join(
        r["data"]
        for r in recs
        if r.get("op") == "data" and r["direction"] == "write" and r["name"].startswith("ptm")
    )
    assert "/bin/busybox head -c 5 /etc/passwd; echo typed-after-$((6*7))" in typed
    console_read = "".join(
        r["data"] for r in recs if r.get("op") == "data" and r["name"] == "tty0"
        and r["direction"] == "read"
    )  # fmt: skip
    assert "/bin/busybox id -u; echo console-$((7*7))" in console_read
    logs = daemon.layout.machine("pot") / "logs"
    used = sum(p.stat().st_size for p in logs.iterdir() if p.is_file())
    assert used <= quota + 4096, used
    assert daemon.cli("logs", "verify", "pot").returncode == 0

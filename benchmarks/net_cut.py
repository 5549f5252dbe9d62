"""`warden net cut` stops a running transfer: time from the command to the last packet.

A minimal guest streams to an "outside" host in its own network namespace (tests/support/
netlab.py). One measurement: tcpdump on the outside host's interface records packet arrival
times (kernel timestamps, not when a busy reader gets to the data); t0 is taken just before
the cut is asked for; the last data segment from the guest arrives at t_last; latency =
t_last - t0 (0 when nothing arrived after t0). Then the cut is undone and the stream resumes
by itself (TCP retransmission) before the next round.

    ours      POST /v1/net/NAME/cut on the daemon's socket (what the CLI sends; the CLI's
              Python start-up is measured apart, as "ours via the CLI process")
    anchor    `ip link set TAP down` (how libvirt's `domif-setlink ... down` cuts a tap),
              run in the [host] netns: a process start plus one netlink request. Seen here:
              a UML guest's NIC never works again after its tap went down and up (the vector
              driver gives up on the write errors), so each anchor round reboots the guest.

Goal: ours <= 50 ms at the median.
"""

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import median, result

# isort: split
from tests.support.daemon import WARDEN, DaemonProc
from tests.support.netlab import (
    OUTSIDE_IP,
    Lab,
    guest_sh,
    net_fleet,
    net_machine,
    read_log,
    wait_for,
    wait_network,
    wait_running,
)
from warden.api.client import ApiClient
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

ROUNDS = int(os.environ.get("NET_CUT_ROUNDS", "7"))
ANCHOR_ROUNDS = int(os.environ.get("NET_CUT_ANCHOR_ROUNDS", "3"))  # each reboots the guest
SETTLE = 1.5  # seconds after the cut before the sink's log is read


def received_since(log: Path, t: float) -> int:
    return sum(e["n"] for e in read_log(log) if "n" in e and e["t"] > t)


def last_data_packet(path: Path) -> float | None:
    """Arrival time (epoch seconds) of the last guest -> outside segment carrying data."""
    r = subprocess.run(["tcpdump", "-r", str(path), "-tt", "-nn"], capture_output=True, text=True)
    last = None
    for line in r.stdout.splitlines():
        if f"> {OUTSIDE_IP}.7001:" in line and not line.endswith("length 0"):
            last = float(line.split()[0])
    return last


def measure(
    lab: Lab, log: Path, cut: Callable[[], None], restore: Callable[[], None], n: int
) -> float:
    wait_for("the stream to flow", lambda: received_since(log, time.monotonic() - 0.3) > 0, 60)
    pcap = log.with_name(f"round{n}.pcap")
    err = log.with_name(f"round{n}.err")
    with open(err, "wb") as e:
        cap = lab.spawn(
            lab.outside, "tcpdump", "-i", lab.veth_out, "-s", "96", "-n", "-U",
            "--time-stamp-precision=micro", "-w", str(pcap), "tcp", stderr=e,
        )  # fmt: skip
    wait_for("tcpdump", lambda: b"listening on" in err.read_bytes(), 30, 0.01)
    time.sleep(0.2)
    t0 = time.time()  # tcpdump's timestamps are on the same (realtime) clock
    cut()
    time.sleep(SETTLE)
    cap.send_signal(signal.SIGINT)
    cap.wait(30)
    last = last_data_packet(pcap)
    restore()
    t1 = time.monotonic()
    wait_for("the stream to resume", lambda: received_since(log, t1) > 256 << 10, 60)
    return max((last or t0) - t0, 0.0)


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    lab = Lab().start()
    api = ApiClient(lay)
    ours: list[float] = []
    cli: list[float] = []
    anchor: list[float] = []
    try:
        d.apply(net_fleet(lab.host, [net_machine("web1", [("lan0", "10.77.0.10")])]))
        wait_running(d, "web1")
        wait_network(d, "web1", "10.77.0.10")
        log = home / "sink.log"
        lab.peer(lab.outside, "sink", "7001", str(log))
        wait_for("the sink", lambda: read_log(log))
        tap = "wt-web1-0"

        def stream() -> None:
            guest_sh(d, "web1", f"(cat /dev/zero | nc {OUTSIDE_IP} 7001 &); sleep 1", 60)

        stream()

        inside: list[float] = []  # the daemon's own time for the cut (its answer)
        answered: list[float] = []  # from the request to the answer

        def api_cut() -> None:
            t = time.monotonic()
            inside.append(api.post("/net/web1/cut")["seconds"])
            answered.append(time.monotonic() - t)

        def api_restore() -> None:
            api.post("/net/web1/restore")

        def cli_cut() -> None:
            subprocess.run([*WARDEN, "net", "cut", "web1"], env=d.env, check=True,
                           capture_output=True)  # fmt: skip

        def link_down() -> None:
            lab.run(lab.host, "ip", "link", "set", tap, "down")

        def reboot() -> None:
            lab.run(lab.host, "ip", "link", "set", tap, "up")
            ping = lab.run(lab.host, "ping", "-c", "2", "-W", "1", "10.77.0.10", check=False)
            state = "still answers" if ping.returncode == 0 else "is unreachable"
            print(f"  after down/up the guest {state}; rebooting it", flush=True)
            d.cli("kill", "web1")
            d.cli("start", "web1")
            wait_network(d, "web1", "10.77.0.10")
            stream()

        for r in range(ROUNDS):
            ours.append(measure(lab, log, api_cut, api_restore, 3 * r))
            cli.append(measure(lab, log, cli_cut, api_restore, 3 * r + 1))
            print(
                f"round {r + 1}: API {ours[-1] * 1000:.1f} ms (answered after "
                f"{answered[-1] * 1000:.1f} ms, {inside[-1] * 1000:.1f} ms in the daemon), "
                f"`warden net cut` process {cli[-1] * 1000:.1f} ms",
                flush=True,
            )
        for r in range(ANCHOR_ROUNDS):
            anchor.append(measure(lab, log, link_down, reboot, 3 * r + 2))
            print(
                f"anchor round {r + 1}: `ip link set down` {anchor[-1] * 1000:.1f} ms", flush=True
            )
    finally:
        d.close()
        lab.close()
        shutil.rmtree(home, ignore_errors=True)
    o, a, c = median(ours) * 1000, median(anchor) * 1000, median(cli) * 1000
    print(
        f"median: warden cut (API) {o:.1f} ms (max {max(ours) * 1000:.1f}), "
        f"ip link set down {a:.1f} ms, warden net cut via the CLI process {c:.1f} ms "
        f"(spread of API {statistics.pstdev(ours) * 1000:.1f} ms)",
        flush=True,
    )
    result(
        "net cut: command to last packet of a running transfer",
        o,
        a,
        "<= 50 ms",
        "ms",
        anchor_name="ip link set TAP down",
        ok=o <= 50,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

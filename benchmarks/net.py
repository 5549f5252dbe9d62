"""Guest-to-guest throughput over a warden bridge, with warden's filter on against without.

Two minimal guests on one network; guest A sends SIZE bytes to guest B with busybox `nc` and
times it inside the guest (`time`). "On" is warden's ruleset as built: per-port chains in the
bridge table (anti-spoofing, marks), br_netfilter handing every bridged IPv4 frame to the ip
table (conntrack, the egress map, the guest's chain). "Off" (the anchor) is a plain Linux
bridge: warden's tables deleted and br_netfilter switched off on the bridge and in the
namespace. Rounds alternate on/off on the same two guests; medians are compared.
Goal: the filter keeps at least 80% of the plain bridge's throughput.
"""

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from _common import median, result

# isort: split
from tests.support.daemon import DaemonProc
from tests.support.netlab import Lab, guest_sh, net_fleet, net_machine, wait_network, wait_running
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

SIZE_MB = int(os.environ.get("NET_MB", "16"))
ROUNDS = int(os.environ.get("NET_ROUNDS", "5"))
TIME = re.compile(r"real\s+(?:(\d+)m\s*)?([\d.]+)s")


def send(d: DaemonProc, port: int) -> float:
    """MB/s of one transfer A -> B, as timed in A; B counts what arrived."""
    # the receiver's stdin stays open: busybox nc ends a connection when its peer half-closes
    guest_sh(
        d, "b", f"rm -f /tmp/rx; (sleep 600 | nc -l -p {port} | wc -c > /tmp/rx &); sleep 0.5", 60
    )
    out = guest_sh(
        d,
        "a",
        f"time sh -c 'dd if=/dev/zero bs=64k count={SIZE_MB * 16} 2>/dev/null "
        f"| nc 10.77.0.11 {port}'",
        timeout=300,
    )
    m = TIME.search(out)
    assert m, f"no time in {out!r}"
    seconds = int(m[1] or 0) * 60 + float(m[2])
    got = guest_sh(d, "b", "sleep 0.5; cat /tmp/rx; killall sleep", 60).strip()
    assert got == str(SIZE_MB << 20), f"b received {got!r} bytes, not {SIZE_MB << 20}: {out!r}"
    return SIZE_MB * 1.048576 / seconds


def filter_off(lab: Lab, saved: Path) -> None:
    # nft's own text listing restores as one transaction (chains before the maps that jump
    # to them); its JSON listing does not.
    saved.write_text(
        lab.run(lab.host, "nft", "list", "table", "bridge", "warden").stdout
        + lab.run(lab.host, "nft", "list", "table", "ip", "warden").stdout
    )
    lab.run(lab.host, "nft", "delete", "table", "bridge", "warden")
    lab.run(lab.host, "nft", "delete", "table", "ip", "warden")
    lab.run(lab.host, "ip", "link", "set", "wb-lan0", "type", "bridge", "nf_call_iptables", "0")
    lab.run(lab.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")


def filter_on(lab: Lab, saved: Path) -> None:
    lab.run(lab.host, "nft", "-f", str(saved))
    lab.run(lab.host, "ip", "link", "set", "wb-lan0", "type", "bridge", "nf_call_iptables", "1")
    lab.run(lab.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    lab = Lab().start()
    on: list[float] = []
    off: list[float] = []
    try:
        d.apply(
            net_fleet(
                lab.host,
                [
                    net_machine("a", [("lan0", "10.77.0.10")], memory="128M"),
                    net_machine("b", [("lan0", "10.77.0.11")], memory="128M"),
                ],
            )
        )
        wait_running(d, "a", "b")
        wait_network(d, "a", "10.77.0.10")
        wait_network(d, "b", "10.77.0.11")
        saved = home / "ruleset.json"
        print(f"{SIZE_MB} MB from guest a to guest b, {ROUNDS} rounds each way", flush=True)
        send(d, 5000)  # warm-up (ARP, page cache of dd and nc)
        for r in range(ROUNDS):
            on.append(send(d, 5001 + 2 * r))
            filter_off(lab, saved)
            off.append(send(d, 5002 + 2 * r))
            filter_on(lab, saved)
            print(f"round {r + 1}: filter on {on[-1]:.1f} MB/s, off {off[-1]:.1f} MB/s", flush=True)
            time.sleep(0.2)
    finally:
        d.close()
        lab.close()
        shutil.rmtree(home, ignore_errors=True)
    ours, anchor = median(on), median(off)
    print(f"median: filter on {ours:.1f} MB/s, plain bridge {anchor:.1f} MB/s", flush=True)
    result(
        "guest-to-guest throughput with warden's filter (vs plain bridge)",
        ours,
        anchor,
        ">= 0.8x",
        "MB/s",
        anchor_name="plain Linux bridge, no filter",
        ok=ours / anchor >= 0.8,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

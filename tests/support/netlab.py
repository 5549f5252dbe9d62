"""Network namespaces made by a test: warden's [host] netns and an "outside" host, linked by a
veth pair. Nothing here touches the machine's own network.

    HOST     (warden builds its bridges, taps, rules and dnsmasq here)   192.168.250.1/30
    OUTSIDE  (a machine on "the internet": runs netpeer servers)          192.168.250.2/30

`Lab.close()` kills every process the test started in the namespaces and deletes both.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

_seq = count()
HOST_IP = "192.168.250.1"
OUTSIDE_IP = "192.168.250.2"
ROOT = Path(__file__).resolve().parent.parent.parent


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


class Lab:
    def __init__(self) -> None:
        token = f"{os.getpid() % 100000}x{next(_seq)}"
        self.host = f"wn{token}"
        self.outside = f"wo{token}"
        self.veth_host = f"vh{token}"[:15]
        self.veth_out = f"vo{token}"[:15]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> "Lab":
        for ns in (self.host, self.outside):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip", "link", "add", self.veth_host, "netns", self.host, "type", "veth",
            "peer", "name", self.veth_out, "netns", self.outside,
        )  # fmt: skip
        sh("ip", "-n", self.host, "addr", "add", f"{HOST_IP}/30", "dev", self.veth_host)
        sh("ip", "-n", self.outside, "addr", "add", f"{OUTSIDE_IP}/30", "dev", self.veth_out)
        sh("ip", "-n", self.host, "link", "set", self.veth_host, "up")
        sh("ip", "-n", self.outside, "link", "set", self.veth_out, "up")
        return self

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- running things in a namespace ------------------------------------------------------
    def run(
        self, ns: str, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def spawn(self, ns: str, *argv: str, **kw: Any) -> "subprocess.Popen[bytes]":
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def peer(self, ns: str, *args: str) -> "subprocess.Popen[bytes]":
        """Start tests/support/netpeer.py in `ns` (see there for the modes)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return self.spawn(
            ns, sys.executable, "-m", "tests.support.netpeer", *args, env=env, cwd=str(ROOT)
        )

    # ---- what is there ------------------------------------------------------------------------
    def links(self, ns: str | None = None) -> dict[str, dict[str, Any]]:
        out = self.run(ns or self.host, "ip", "-j", "link", "show").stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def ruleset(self, ns: str | None = None) -> dict[str, Any]:
        return json.loads(self.run(ns or self.host, "nft", "-j", "list", "ruleset").stdout)

    def chains(self, ns: str | None = None) -> set[tuple[str, str, str]]:
        """(family, table, chain) of every chain in the namespace."""
        return {
            (c["chain"]["family"], c["chain"]["table"], c["chain"]["name"])
            for c in self.ruleset(ns)["nftables"]
            if "chain" in c
        }

    def pids(self, ns: str | None = None) -> list[int]:
        out = sh("ip", "netns", "pids", ns or self.host, check=False).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for ns in (self.host, self.outside):
            if not Path("/run/netns", ns).exists():
                continue
            for pid in self.pids(ns):  # anything left in our namespace is ours to end
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)


def wait_for(what: str, fn: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def net_fleet(
    netns: str,
    machines: list[str],
    networks: str = '[[network]]\nname = "lan0"\nsubnet = "10.77.0.0/24"\nnat = true\n',
    extra: str = "",
) -> str:
    from tests.conftest import FLEET_HEAD

    return FLEET_HEAD + f'[host]\nnetns = "{netns}"\n' + extra + networks + "".join(machines)


def net_machine(
    name: str,
    nics: list[tuple[str, str]] | None = None,
    memory: str = "64M",
    **keys: Any,
) -> str:
    """A [[machine]] with NICs given as (network, ip) pairs (ip "" for DHCP)."""
    lines = ["[[machine]]", f'name = "{name}"', 'owner = "alice"', f'memory = "{memory}"']
    parts = []
    for net, ip in nics if nics is not None else [("lan0", "")]:
        parts.append(f'{{ network = "{net}"' + (f', ip = "{ip}"' if ip else "") + " }")
    lines.append(f"nics = [{', '.join(parts)}]")
    for k, v in keys.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def guest_sh(d: Any, name: str, command: str, timeout: float = 30.0) -> str:
    """Run `command` on the guest's console; return what it printed. Returns as soon as the
    command has ended (watching the line's scrollback), at the latest after `timeout`."""
    import re

    tag = f"m{time.monotonic_ns()}"
    rx = re.compile(rf"\n\r?{tag}-a\r?\n(.*?){tag}-b", re.S)  # bash: \r after a paste
    deadline = time.monotonic() + timeout
    out = d.console(name, f"echo {tag}-a; {command}; echo {tag}-b\n", timeout=min(1.0, timeout))
    m = rx.search(out)
    while m is None and time.monotonic() < deadline:
        r = d.cli("console", name, "--spy", "--timeout", "0.5", "--scrollback", "262144", input="")
        m = rx.search(r.stdout)
    assert m, f"no marked output from {name} within {timeout}s: {out!r}"
    return str(m.group(1)).replace("\r\n", "\n")


def kernel_log_tail(d: Any, name: str, lines: int = 30) -> str:
    """The end of a machine's last kernel log, for a failure message: why a kernel exited."""
    logs = sorted(
        (d.layout.machine(name) / "logs").glob("kernel-*.log"),
        key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else 0,
    )
    if not logs:
        return f"\n{name}: no kernel log"
    tail = logs[-1].read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- {logs[-1]} (last {len(tail)} lines):\n" + "\n".join(tail)


def wait_running(d: Any, *names: str, timeout: float = 120.0) -> None:
    def all_up() -> bool:
        ls = d.ls()
        bad = [n for n in names if ls[n]["state"] in ("crashed", "stopped")]
        assert not bad, f"{bad} did not start: {[ls[n]['last_exit'] for n in bad]}" + "".join(
            kernel_log_tail(d, n) for n in bad
        )
        return all(ls[n]["state"] == "running" for n in names)

    wait_for(f"{names} running", all_up, timeout)


def wait_network(d: Any, name: str, address: str, timeout: float = 60.0) -> None:
    """Until the guest's eth0 holds `address` (its init has configured the network)."""
    wait_for(
        f"{name} to have {address}",
        lambda: f"inet {address}/" in guest_sh(d, name, "ip -4 addr show eth0"),
        timeout,
        interval=0.5,
    )


def end_warden_up(up: "subprocess.Popen[bytes]", log: Any, home: Any, *netns: str) -> None:
    """After a test of `warden up`: kill it if it still runs, close its log, kill whatever of
    its home is left (through the cgroups) and delete the network namespaces it was given."""
    from tests.support.daemon import kill_home

    if up.poll() is None:
        up.kill()
        up.wait()
    log.close()
    kill_home(home)
    for n in netns:
        if Path("/run/netns", n).exists():
            sh("ip", "netns", "del", n, check=False)

"""Issue 16 part 4 on real guests: `warden honeypot score` run by a real daemon on two Debian
guests side by side. On the honeypot kernel with the `baremetal` disguise (and so a persona)
every check warden can hide passes; on Debian's stock kernel the same battery finds the tells
(the canary that the checks really detect)."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProc
from tests.support.honeypot import honeypot_kernel
from tests.support.netlab import Lab, guest_sh, net_fleet, net_machine, wait_for, wait_running
from warden.images import debian
from warden.images.store import ImageStore
from warden.kernelbuild import build as kbuild
from warden.progress import NullProgress

pytestmark = [pytest.mark.guest, pytest.mark.slow]

NET = '[[network]]\nname = "sc0"\nsubnet = "10.81.0.0/24"\n'
# What the stock kernel must show (each is a UML tell the battery is there to find).
STOCK_TELLS = {
    ("virt-what", "root"),
    ("systemd-detect-virt", "user"),
    ("cpuinfo-uml", "user"),
    ("dmesg-uml", "root"),
    ("hostfs", "user"),
    ("mounts-ubd", "user"),
    ("block-names", "user"),
    ("platform-uml", "user"),
    ("proc-devices", "user"),
    ("cmdline-uml", "user"),
    ("dmi", "user"),
    ("pci", "user"),
    ("acpi", "user"),
    ("nic-mac", "user"),
    ("disk-model", "user"),
}


def host_has_cpuid_faulting() -> bool:
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and "cpuid_fault" in line.split() for line in f)


@pytest.fixture
def lab(daemon: DaemonProc) -> Iterator[Lab]:
    with Lab() as lab:
        yield lab
    print("---- daemon log ----\n" + daemon.log_text()[-6000:])


def shell_ready(d: DaemonProc, name: str) -> bool:
    """A command typed now reaches root's shell (typed before the autologin, getty eats it)."""
    try:
        out = guest_sh(d, name, "systemctl is-system-running --wait", timeout=60)
    except AssertionError:
        return False
    return out.strip() in ("running", "degraded")


def score(d: DaemonProc, name: str) -> dict[str, Any]:
    r = d.cli("honeypot", "score", name, "--json", check=False, timeout=400)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    assert report["complete"] and report["user"] == "admin", report
    return report


def by_key(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["id"], c["identity"]): c for c in report["checks"]}


@pytest.mark.timeout(2400)
def test_baremetal_hides_every_hideable_tell_and_the_stock_kernel_shows_them(
    daemon: DaemonProc, lab: Lab, tmp_path: Path
) -> None:
    honeypot_kernel()
    kbuild.build(daemon.layout, "honeypot")
    debian.build(ImageStore(daemon.layout), NullProgress())
    pot = net_machine(
        "pot", [("sc0", "10.81.0.10")], memory="1G", image="debian", kernel="honeypot",
        tty_log=True, disguise="baremetal", honeypot=True, egress="deny",
    )  # fmt: skip
    plain = net_machine("plain", [("sc0", "10.81.0.11")], memory="1G", image="debian")
    daemon.apply(net_fleet(lab.host, [pot, plain], networks=NET))
    wait_running(daemon, "pot", "plain", timeout=300)
    for name in ("pot", "plain"):  # systemd is up and root's console shell answers
        wait_for(f"{name}'s root shell", lambda n=name: shell_ready(daemon, n), 600, 1)

    # the persona's hostname, and its seed disk unplugged once read
    persona_host = guest_sh(daemon, "pot", "hostname").strip()
    assert persona_host != "pot" and "-" in persona_host
    wait_for(
        "the seed disk to be unplugged",
        lambda: "seed-disk-removed" in daemon.cli("events", "pot").stdout,
        120,
        1,
    )

    report = score(daemon, "pot")
    checks = by_key(report)
    not_passed = [(k, c["evidence"]) for k, c in checks.items() if c["verdict"] != "pass"]
    print(json.dumps(report["summary"]), not_passed)
    faulting = host_has_cpuid_faulting()
    for key, c in checks.items():
        if not c["hideable"]:
            continue
        if key == ("cpuid-hypervisor", "user") and not faulting:
            continue  # without CPUID faulting the host's CPU shows through (documented)
        assert c["verdict"] in ("pass",), (key, c["evidence"])
    cpuid_tell = checks[("cpuid-hypervisor", "user")]["verdict"] == "tell"
    assert report["summary"]["hideable_tells"] == (0 if faulting else int(cpuid_tell))
    # what cannot be hidden is still found: a UML system call is a ptrace round trip
    lat = checks[("syscall-latency", "user")]
    assert lat["verdict"] == "tell" and "x (more than 5x)" in lat["evidence"][0]

    stock = by_key(score(daemon, "plain"))
    found = {k for k, c in stock.items() if c["verdict"] == "tell"}
    assert STOCK_TELLS <= found, sorted(STOCK_TELLS - found)
    assert "uml" in stock[("virt-what", "root")]["evidence"]
    assert any("02:" == e.split()[1][:3] for e in stock[("nic-mac", "user")]["evidence"])

"""Real guests on the honeypot kernel under a disguise: what /proc, the kernel log and the
virtualization detectors show with `baremetal`, against the stock kernel; profiles changed
while the guest runs; and hosts that are slow, silent or gone."""

import asyncio
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.honeypot import (
    DETECT_VIRT,
    VIRT_SETUP,
    VIRT_WHAT,
    honeypot_kernel,
    virt_image,
)
from tests.support.rawboot import RawGuest
from warden.honeypot import boot, disguise_wire
from warden.honeypot.disguise_server import DisguiseServer
from warden.honeypot.disguise_wire import Action, Entry, Fallback, MsgType, Ruleset
from warden.honeypot.profile import load_profile, parse_profile
from warden.paths import Layout
from warden.uml import kernel as ukernel

pytestmark = [pytest.mark.guest, pytest.mark.slow]
T = TypeVar("T")


@pytest.fixture(scope="module")
def kernel() -> Path:
    return honeypot_kernel()


def host_has_cpuid_faulting() -> bool:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return "cpuid_fault" in line.split()
    return False


async def in_guest(
    hp: boot.HoneypotBoot,
    home: Layout,
    image: Path,
    cow: Path,
    kernel: Path,
    scenario: Callable[[RawGuest], T],
    seed: Path | None = None,
) -> T:
    async with hp:
        with RawGuest(
            home,
            image,
            cow,
            kernel_path=kernel,
            extra=hp.kernel_args,
            pass_fds=hp.pass_fds,
            seed=seed,
        ) as g:
            hp.kernel_started()
            await asyncio.to_thread(g.wait_prompt)
            return await asyncio.to_thread(scenario, g)


def test_baremetal_shows_a_physical_machine_in_proc_and_the_kernel_log(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    profile = load_profile("baremetal")

    def look(g: RawGuest) -> dict[str, str]:
        views = {
            name: g.run(f"cat /proc/{name}")
            for name in (
                "cpuinfo",
                "cmdline",
                "filesystems",
                "mounts",
                "devices",
                "interrupts",
                "version",
                "partitions",
                "tty/drivers",
            )
        }
        views["ls"] = g.run("ls /proc")
        views["exitcode"] = g.run("cat /proc/exitcode; stat /proc/sysemu")
        views["dmesg"] = g.run("dmesg")
        views["1/environ"] = g.run("tr '\\0' '\\n' < /proc/1/environ")
        views["1/mountinfo"] = g.run("cat /proc/1/mountinfo")
        views["nproc"] = g.run("grep -c ^processor /proc/cpuinfo")
        return views

    hp = boot.prepare(disguise="baremetal")
    v = asyncio.run(in_guest(hp, home, minimal_image, tmp_path / "d.cow", kernel, look))
    assert hp.disguise is not None and hp.disguise.stats.acks[0].status == 0

    cpu = profile.rule("cpuinfo")
    assert cpu is not None and v["cpuinfo"] == cpu.text.decode()
    assert "UML" not in v["cpuinfo"] and "skas" not in v["cpuinfo"]
    assert not re.search(r"^host\s", v["cpuinfo"], re.M)
    assert " hypervisor" not in v["cpuinfo"] and v["nproc"] == "1\n"
    cmdline = profile.rule("cmdline")
    assert cmdline is not None and v["cmdline"] == cmdline.text.decode()
    assert "hostfs" not in v["filesystems"] and "ext4" in v["filesystems"]
    assert v["mounts"].startswith("/dev/sda / ext4 ") and "hostfs" not in v["mounts"]
    assert " 8:0 / / " in v["1/mountinfo"] and "/dev/sda" in v["1/mountinfo"]
    assert "ubd" not in v["devices"] and "  8 sd\n" in v["devices"]
    assert "ubd" not in v["partitions"] and v["partitions"].rstrip().endswith("sda")
    assert "UML" not in v["tty/drivers"]
    assert "SIGIO" not in v["interrupts"] and "SIGALRM" not in v["interrupts"]
    assert "IO-APIC" in v["interrupts"] and "mconsole" not in v["interrupts"]
    assert v["version"].startswith("Linux version 6.1.176 (debian-kernel@lists.debian.org)")
    assert "SMP PREEMPT_DYNAMIC Debian" in v["version"]
    for gone in ("exitcode", "mconsole", "sysemu"):
        assert gone not in v["ls"].split()
    assert "No such file or directory" in v["exitcode"]
    assert "cpuinfo" in v["ls"].split()  # the listing is otherwise whole
    assert "Kernel command line: BOOT_IMAGE=/boot/vmlinuz-6.1.176" in v["dmesg"]
    for tell in ("ubd", "mconsole", "hostfs", "setup_one_line", "COW", "stdio console", "98:0"):
        assert tell not in v["dmesg"], tell
    assert "Linux version 6.1.176" in v["dmesg"]  # the rest of the log is there
    assert "mem=" not in v["1/environ"] and "uml_dir" not in v["1/environ"]


def test_detectors_name_uml_on_the_stock_kernel_and_nothing_of_it_under_baremetal(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    image = virt_image()

    def detect(g: RawGuest) -> tuple[str, str]:
        g.run(VIRT_SETUP)
        return g.run(VIRT_WHAT), g.run(DETECT_VIRT)

    stock = ukernel.resolve(home).path
    with RawGuest(home, minimal_image, tmp_path / "s.cow", kernel_path=stock, seed=image) as g:
        g.wait_prompt()
        stock_what, stock_detect = detect(g)
    assert "uml" in stock_what.split()
    assert stock_detect.strip() == "uml"

    hp = boot.prepare(disguise="baremetal")
    what, found = asyncio.run(
        in_guest(hp, home, minimal_image, tmp_path / "h.cow", kernel, detect, seed=image)
    )
    assert "uml" not in what.split() and "uml" not in found.split()
    assert hp.disguise is not None
    ack = hp.disguise.stats.acks[0]
    if host_has_cpuid_faulting():
        # CPUID traps to the kernel, which hides the hypervisor: a physical machine
        assert ack.cpuid_faulting
        assert what.strip() == "" and found.strip() == "none"
    else:
        # no CPUID faulting: the host CPU's own answer shows (e.g. "kvm"), never uml
        assert not ack.cpuid_faulting


def test_a_new_profile_changes_what_the_running_guest_sees(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    first = parse_profile('[proc.cmdline]\nreplace = "first\\n"\n', "first", "first.toml")
    second = parse_profile(
        '[proc.cmdline]\nreplace = "second\\n"\n[proc.devices]\nhide = true\n',
        "second",
        "second.toml",
    )

    async def main() -> tuple[str, str, str, str]:
        server = DisguiseServer.pair(first, "change")
        hp = boot.HoneypotBoot(disguise=server)
        async with hp:
            with RawGuest(
                home,
                minimal_image,
                tmp_path / "d.cow",
                kernel_path=kernel,
                extra=hp.kernel_args,
                pass_fds=hp.pass_fds,
            ) as g:
                hp.kernel_started()
                await asyncio.to_thread(g.wait_prompt)
                before = await asyncio.to_thread(g.run, "cat /proc/cmdline")
                before_ls = await asyncio.to_thread(g.run, "ls /proc")
                gen = server.set_profile(second)
                after = await asyncio.to_thread(g.run, "cat /proc/cmdline")
                after_ls = await asyncio.to_thread(g.run, "ls /proc; cat /proc/devices")
                ack = await server.wait_ack(gen, 10)
                assert ack.status == 0 and ack.entries == 2
        return before, before_ls, after, after_ls

    before, before_ls, after, after_ls = asyncio.run(main())
    assert (before, after) == ("first\n", "second\n")
    assert "devices" in before_ls.split() and "devices" not in after_ls.split()
    assert "No such file or directory" in after_ls


def test_a_hung_filter_program_gets_the_fallback_and_the_guest_runs_on(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    profile = tmp_path / "slow.toml"
    profile.write_text(
        "[proc.version]\n"
        "filter = { command = ['/bin/sleep', '60'] }\n"
        'fallback = { text = "Linux version 6.1.0 (fallback)\\n" }\n'
        "timeout_ms = 400\n"
    )

    def scenario(g: RawGuest) -> tuple[str, str]:
        g.send(b"(cat /proc/version > /tmp/v; echo cat-done) & echo alive-$((1+1))\n")
        order = g.expect(re.compile(rb"cat-done\r\n"), 20).decode()  # at a prompt already
        return order, g.run("cat /tmp/v")

    hp = boot.prepare(disguise=profile)
    order, version = asyncio.run(
        in_guest(hp, home, minimal_image, tmp_path / "d.cow", kernel, scenario)
    )
    assert "alive-2" in order  # the shell answered before the slow read ended
    assert version == "Linux version 6.1.0 (fallback)\n"
    assert hp.disguise is not None and hp.disguise.stats.filter_failures == 1


def raw_ruleset(entries: tuple[Entry, ...]) -> bytes:
    body = disguise_wire.encode_ruleset(Ruleset(entries=entries, timeout_ms=300))
    return disguise_wire.encode_message(MsgType.RULESET, 1, body)


FALLBACK_RULES = (
    Entry(Action.HIDE, "exitcode"),
    Entry(Action.FILTER, "interrupts", b"fallback interrupts\n", Fallback.TEXT, 300),
    Entry(Action.FILTER, "devices", b"", Fallback.REAL, 300),
)


def test_a_silent_host_costs_a_filter_its_timeout_and_blocks_nothing_else(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    ours.send(raw_ruleset(FALLBACK_RULES))  # and then never another word
    with RawGuest(
        home,
        minimal_image,
        tmp_path / "d.cow",
        kernel_path=kernel,
        extra=(f"disguise_fd={theirs.fileno()}",),
        pass_fds=(theirs.fileno(),),
    ) as g:
        theirs.close()
        g.wait_prompt()
        g.send(b"(cat /proc/interrupts > /tmp/i; echo cat-done) & echo alive-$((1+1))\n")
        order = g.expect(re.compile(rb"cat-done\r\n"), 20).decode()  # at a prompt already
        interrupts = g.run("cat /tmp/i")
        devices = g.run("cat /proc/devices")
        exitcode = g.run("cat /proc/exitcode")
    asked = []
    ours.setblocking(False)
    while True:
        try:
            packet = ours.recv(1 << 17)
        except BlockingIOError:
            break
        if not packet:  # the kernel's end closed with the guest
            break
        asked.append(disguise_wire.decode_message(packet))
    ours.close()
    assert "alive-2" in order
    assert interrupts == "fallback interrupts\n"
    assert "Block devices:" in devices  # fallback "real": the entry's own content
    assert "No such file or directory" in exitcode
    requests = [disguise_wire.decode_request(m) for m in asked if m.type == MsgType.REQUEST]
    assert [r.path for r in requests] == ["interrupts", "devices"]
    assert b"SIGIO" in requests[0].real  # the kernel sent the real content to filter


def test_a_host_that_is_gone_gets_fallbacks_at_once_and_its_last_rules_stay(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    ours.send(raw_ruleset(FALLBACK_RULES))
    ours.close()  # the host side dies before the guest ever asks
    with RawGuest(
        home,
        minimal_image,
        tmp_path / "d.cow",
        kernel_path=kernel,
        extra=(f"disguise_fd={theirs.fileno()}",),
        pass_fds=(theirs.fileno(),),
    ) as g:
        theirs.close()
        g.wait_prompt()
        interrupts = g.run("cat /proc/interrupts")
        listing = g.run("ls /proc")
    assert interrupts == "fallback interrupts\n"
    assert "exitcode" not in listing.split()
    assert "disguise: host channel fd" in g.log.read_text(errors="replace")

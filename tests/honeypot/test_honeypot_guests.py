"""Issue 8 through the daemon: honeypot guests booted by a real `warden daemon` on the honeypot
kernel, their tty logs in the session-log store, their disguise served by the daemon.

- An intruder logs into a Debian honeypot with OpenSSH's `ssh` from another network namespace
  (through the guest's port forward) and types commands; `warden replay` shows them with their
  output, `warden logs dump` lists each program's argv; virt-what and systemd-detect-virt
  name nothing of UML under `baremetal`, and say `uml` on the stock kernel beside it.
- Bad input: the host end of the tty log closed (reported, the guest runs on), a filter program
  that hangs and a daemon that is frozen (the kernel times out and serves the fallback; the
  guest never blocks), a malformed profile (refused; the running guest keeps its disguise).
- The daemon killed or stopped while the guest runs: the next one takes both channels back;
  nothing the guest did meanwhile is missing from the log.
- A flood while the daemon is frozen: the records the kernel had to drop are counted exactly.
- examples/honeypot.toml works with `warden up`.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import WARDEN, DaemonProc, instance_groups
from tests.support.honeypot import honeypot_kernel
from tests.support.netlab import (
    HOST_IP,
    Lab,
    end_warden_up,
    guest_sh,
    net_fleet,
    net_machine,
    sh,
    wait_for,
    wait_running,
)
from tests.support.ssh_client import SSH_OPTS, SshSession, SshUser
from warden.honeypot import channels
from warden.images import debian
from warden.images.store import ImageStore
from warden.kernelbuild import build as kbuild
from warden.paths import Layout
from warden.progress import NullProgress

pytestmark = [pytest.mark.guest, pytest.mark.slow]

HP_NET = '[[network]]\nname = "hp0"\nsubnet = "10.78.0.0/24"\n'
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built_kernel() -> Path:
    """The honeypot kernel, built once into the shared cache (minutes the first time)."""
    return honeypot_kernel()


def install(d: DaemonProc, with_debian: bool = False) -> None:
    """Link the cached honeypot kernel (and the Debian image) into the daemon's home."""
    kbuild.build(d.layout, "honeypot")
    if with_debian:
        debian.build(ImageStore(d.layout), NullProgress())


def host_has_cpuid_faulting() -> bool:
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and "cpuid_fault" in line.split() for line in f)


def events(d: DaemonProc, machine: str) -> list[dict[str, Any]]:
    return [e for e in json.loads(d.cli("events", machine, "--json").stdout)]


def kinds(d: DaemonProc, machine: str) -> list[str]:
    return [e["kind"] for e in events(d, machine)]


def dump(d: DaemonProc, name: str, line: str = "tty") -> list[dict[str, Any]]:
    out = d.cli("logs", "dump", name, "--line", line, "--json").stdout
    return [json.loads(x) for x in out.splitlines()]


def status(d: DaemonProc, name: str) -> dict[str, Any]:
    from warden.api.client import ApiClient

    result: dict[str, Any] = ApiClient(d.layout).get(f"/honeypot/{name}")
    return result


def screen_text(records: list[dict[str, Any]]) -> str:
    """What the console's programs wrote, from a tty log dump (busybox guests)."""
    return "".join(
        r["data"] for r in records if r.get("op") == "data" and r["direction"] == "write"
    )


def profile_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def lab(daemon: DaemonProc) -> Iterator[Lab]:
    with Lab() as lab:
        yield lab
    print("---- daemon log ----\n" + daemon.log_text()[-6000:])


class Intruder:
    """OpenSSH's ssh from the lab's outside namespace to a guest's forwarded port."""

    def __init__(self, lab: Lab, keys: Path):
        self.lab = lab
        self.user = SshUser(keys, "intruder")

    @property
    def public(self) -> str:
        return self.user.public

    def argv(self, port: int, *command: str, login: str = "admin", tty: bool = False) -> list[str]:
        return [
            "ip", "netns", "exec", self.lab.outside,
            "ssh", *SSH_OPTS, "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-p", str(port), "-i", str(self.user.key), "-tt" if tty else "-T",
            f"{login}@{HOST_IP}", *command,
        ]  # fmt: skip

    def run(
        self, port: int, command: str, login: str = "admin", stdin: str = "", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(port, command, login=login),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait(self, port: int, timeout: float = 400) -> None:
        """Until sshd answers (a Debian guest's first boot makes its host keys)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run(port, "true", timeout=60)
            if r.returncode == 0:
                return
            assert time.monotonic() < deadline, f"no ssh on port {port}: {r.stderr}"
            time.sleep(2)

    def session(self, port: int) -> SshSession:
        # ssh -tt sends TERM to the guest: fixed here, so that Debian's bashrc gives the plain
        # prompt the test expects whatever terminal runs the tests (tmux-256color colours it).
        return SshSession(self.argv(port, tty=True), env={**os.environ, "TERM": "xterm"})


# Run by root in a guest: does mountinfo behave as on a real kernel? (systemd relies on both:
# it rereads an open mountinfo after each mount, and waits for EPOLLPRI on it.)
MOUNTINFO_PROBE = r"""
open(my $f, "<", "/proc/self/mountinfo") or die "open: $!";
my $before = join("", <$f>);
system("mount -t tmpfs wardenprobe /mnt") == 0 or die "mount failed";
my $pri = ""; vec($pri, fileno($f), 1) = 1;
my $n = select(undef, undef, $pri, 5);  # exceptfds: POLLPRI, a mount table change
seek($f, 0, 0);
my $after = join("", <$f>);
system("umount /mnt");
printf("poll=%s reread=%s before=%s\n", $n > 0 ? "pri" : "none",
       ($after =~ m{ /mnt }) ? "fresh" : "stale", ($before =~ m{ /mnt }) ? "mounted" : "clean");
"""


@pytest.mark.timeout(1200)  # Debian guests: a first build of the image, slow boots
def test_an_intruders_ssh_session_is_replayed_and_nothing_in_the_guest_names_uml(
    daemon: DaemonProc, lab: Lab, tmp_path: Path, built_kernel: Path
) -> None:
    install(daemon, with_debian=True)
    intruder = Intruder(lab, tmp_path)
    pot = net_machine(
        "pot", [("hp0", "10.78.0.10")], memory="256M", image="debian", kernel="honeypot",
        tty_log=True, disguise="baremetal", honeypot=True, egress="deny",
        forwards=["tcp:2022:22"], ssh_keys=[intruder.public],
    )  # fmt: skip
    plain = net_machine(
        "plain", [("hp0", "10.78.0.11")], memory="256M", image="debian",
        forwards=["tcp:2023:22"], ssh_keys=[intruder.public],
    )  # fmt: skip
    daemon.apply(net_fleet(lab.host, [pot, plain], networks=HP_NET))
    wait_running(daemon, "pot", "plain")
    intruder.wait(2022)
    intruder.wait(2023)

    # The intruder's session: a pty in the guest, commands typed one by one.
    s = intruder.session(2022)
    try:
        # the guest shows its persona's hostname (warden.persona), not the machine's name
        host = status(daemon, "pot")["persona"]["hostname"]
        assert host != "pot"
        s.expect(rf"admin@{host}:~\$ ".encode(), 120)
        s.send("echo marker-$((6*7))\n")
        s.expect(b"\rmarker-42\r\n")  # bash ends bracketed paste: ESC[?2004l\r
        s.send("id -un\n")
        s.expect(b"\radmin\r\n")
        s.send("ls /etc/ssh/sshd_config.d\n")
        s.expect(b"\rwarden.conf\r\n")
        s.send("exit\n")
        assert s.wait(60) == 0
    finally:
        s.close()

    # Inside, as root: the detectors, the boot, /proc; the same on the stock kernel beside it.
    def look(port: int) -> dict[str, Any]:
        probe = "virt-what; echo vw=$?; systemd-detect-virt; systemctl is-system-running; "
        probe += "grep -ci uml /proc/cpuinfo; grep -c ' 98:' /proc/self/mountinfo"
        lines = intruder.run(port, probe, login="root").stdout.split("\n")
        i = next(n for n, x in enumerate(lines) if x.startswith("vw="))
        return {
            "virt-what": lines[:i],
            "virt-what status": lines[i],
            "systemd-detect-virt": lines[i + 1],
            "system": lines[i + 2],
            "UML in cpuinfo": int(lines[i + 3]),
            "ubd (major 98) in mountinfo": int(lines[i + 4]),
        }

    faulting = host_has_cpuid_faulting()
    # on bare metal virt-what prints nothing and systemd-detect-virt "none"; without CPUID
    # faulting the host's own hypervisor (this host is a KVM guest) would show through CPUID
    assert look(2022) == {
        "virt-what": [] if faulting else ["kvm"],
        "virt-what status": "vw=0",
        "systemd-detect-virt": "none" if faulting else "kvm",
        "system": "running",  # systemd booted the disguised guest without a failed unit
        "UML in cpuinfo": 0,
        "ubd (major 98) in mountinfo": 0,
    }
    stock = look(2023)
    assert "uml" in stock["virt-what"] and stock["systemd-detect-virt"] == "uml", stock
    assert stock["UML in cpuinfo"] > 0 and stock["ubd (major 98) in mountinfo"] > 0
    # mountinfo under the disguise behaves as a real kernel's: reread and poll see a mount
    probe_pot = intruder.run(2022, "perl", login="root", stdin=MOUNTINFO_PROBE)
    probe_stock = intruder.run(2023, "perl", login="root", stdin=MOUNTINFO_PROBE)
    assert probe_pot.stdout == probe_stock.stdout == "poll=pri reread=fresh before=clean\n", (
        probe_pot.stdout + probe_pot.stderr
    )

    # What the host kept: replay, the execs' argv, search, the chain.
    r = daemon.cli("replay", "pot", "--line", "tty", "--speed", "1000", "--max-idle", "0.01")
    screen = r.stdout
    typed_at = screen.index("echo marker-$((6*7))")  # typed (echoed by the pty)
    assert typed_at < screen.index("marker-42\r\n", typed_at) < screen.index("id -un", typed_at)
    assert screen.index("id -un") < screen.index("\radmin\r\n") < screen.index("warden.conf")
    assert re.search(r"\[warden log: pts\d+\]", screen)  # the ssh session's own pty pair
    records = dump(daemon, "pot")
    ttys = {r["tty"]: r for r in records if r.get("op") == "open"}
    execs = [r for r in records if r.get("op") == "exec"]
    by_admin = [r for r in execs if r["uid"] == 1000]
    # argv as the program got it: the shell's alias (Debian's .bashrc) shows in ls's
    for argv in (["id", "-un"], ["ls", "--color=auto", "/etc/ssh/sshd_config.d"]):
        rec = next((r for r in by_admin if r["argv"] == argv), None)
        assert rec is not None, [r["argv"] for r in by_admin]
        tty = ttys[rec["tty"]]  # run on the session's pty: its slave end
        assert (tty["driver"], tty["subtype"]) == ("pty", 2) and tty["name"].startswith("pts")
    root_runs = [(r["filename"], r["argv"]) for r in execs if r["uid"] == 0 and r["tty"] == 0]
    assert any(
        fn == "/usr/sbin/virt-what" and any(a.endswith("virt-what") for a in argv)
        for fn, argv in root_runs
    ), root_runs  # the detector run over ssh without a pty: tty 0
    hits = json.loads(
        daemon.cli("logs", "search", "marker-42", "--machine", "pot", "--json").stdout
    )
    assert [(h["line"], h["direction"]) for h in hits] == [("tty", "printed")]
    hits = json.loads(
        daemon.cli("logs", "search", "id -un", "--machine", "pot", "--executed", "--json").stdout
    )
    assert [h["line"] for h in hits] == ["tty"]
    st = status(daemon, "pot")
    tl = st["tty_log"]
    assert tl["status"] == "reading" and tl["records"] > 100
    assert (tl["host_lost_records"], tl["kernel_lost_records"], tl["damaged_messages"]) == (0, 0, 0)
    assert st["disguise"]["acked_generation"] == 1
    assert st["disguise"]["cpuid_faulting"] is faulting
    assert daemon.cli("logs", "verify", "pot").returncode == 0
    assert not [k for k in kinds(daemon, "pot") if k.startswith("ttylog-")]  # nothing lost


def test_the_host_closing_the_tty_log_is_reported_and_the_guest_runs_on(
    daemon: DaemonProc, built_kernel: Path
) -> None:
    install(daemon)
    daemon.apply(FLEET_HEAD + machine_toml("pot", kernel="honeypot", tty_log=True))
    wait_running(daemon, "pot")
    assert guest_sh(daemon, "pot", "echo before-$((1+1))").strip() == "before-2"
    # The host end of the log goes away: shut down the socket itself (every copy of it, the
    # daemon's and the kernel's spare alike), as if the host had closed its only end.
    st = channels.read_state(daemon.layout.machine("pot"))
    assert st is not None and st.ttylog is not None
    sock = channels.take_fd(st.pid, st.ttylog.spare_fd, st.ttylog.inode)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    assert guest_sh(daemon, "pot", "echo still-$((2+3))").strip() == "still-5"
    wait_for("the loss reported", lambda: "ttylog-stopped" in kinds(daemon, "pot"), 60, 0.5)
    evs = {e["kind"]: e for e in events(daemon, "pot")}
    closed, stopped = evs["ttylog-closed"], evs["ttylog-stopped"]
    assert "while the guest runs" in closed["reason"] and closed["last_seq"] > 0
    assert stopped["state"] == "stopped:32" and stopped["error"] == "Broken pipe"
    assert stopped["lost_records"] > 0  # what the guest did since: counted by the kernel
    assert daemon.ls()["pot"]["state"] == "running"
    assert guest_sh(daemon, "pot", "echo alive-$((3+4))").strip() == "alive-7"
    assert status(daemon, "pot")["tty_log"]["status"] == "closed"
    log = (daemon.layout.machine("pot") / "logs" / "kernel-1.log").read_text()
    assert "tty_log: host fd" in log and "(errno 32): logging stopped after" in log
    daemon.cli("stop", "pot")
    records = dump(daemon, "pot")
    assert "before-2" in screen_text(records) and "alive-7" not in screen_text(records)
    assert {"ttylog-closed", "ttylog-stopped"} <= {r["type"] for r in records}
    assert "alive-7" in screen_text_con0(daemon)  # the host's own line log has it all
    assert daemon.cli("logs", "verify", "pot").returncode == 0


def screen_text_con0(d: DaemonProc) -> str:
    return "".join(r.get("data", "") for r in dump(d, "pot", "con0") if r["type"] == "output")


def read_lines(text: str) -> list[tuple[int, int, str]]:
    """`START END CONTENT` lines the guests' probe loops write."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\d+) (\d+) (.*)$", line.strip())
        if m:
            out.append((int(m[1]), int(m[2]), m[3]))
    return out


def test_a_hung_filter_and_a_frozen_daemon_cost_a_timeout_and_serve_the_fallback(
    daemon: DaemonProc, tmp_path: Path, built_kernel: Path
) -> None:
    install(daemon)
    prof = profile_file(
        tmp_path / "slow.toml",
        "[profile]\ntimeout_ms = 500\n"
        '[proc.version]\nfilter = { command = ["/bin/sleep", "3600"] }\n'
        'fallback = { text = "Linux version 6.1.0-0-amd64 (fallback)\\n" }\n'
        "[proc.loadavg]\nfilter = { sub = [['^', 'FILTERED ']] }\n",
    )
    daemon.apply(FLEET_HEAD + machine_toml("pot", kernel="honeypot", disguise=str(prof)))
    wait_running(daemon, "pot")
    # the filter program hangs: the daemon kills it and answers with the rule's fallback
    assert (
        guest_sh(daemon, "pot", "cat /proc/version") == "Linux version 6.1.0-0-amd64 (fallback)\n"
    )
    assert guest_sh(daemon, "pot", "cat /proc/loadavg").startswith("FILTERED ")
    assert status(daemon, "pot")["disguise"]["filter_failures"] >= 1
    assert not [
        p for p in sh("pgrep", "-a", "sleep", check=False).stdout.splitlines() if "3600" in p
    ]
    # the daemon itself freezes: the kernel waits out the rule's timeout, serves the real
    # content (the loadavg rule's fallback) and the guest goes on reading
    guest_sh(
        daemon,
        "pot",
        "(while [ ! -e /tmp/stop ]; do s=$(date +%s); c=$(cat /proc/loadavg); "
        'echo "$s $(date +%s) $c" >> /tmp/reads; sleep 1; done) & true',
    )
    assert daemon.proc is not None
    time.sleep(2)
    frozen_at = time.time()
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(12)
    finally:
        thawed_at = time.time()
        os.kill(daemon.proc.pid, signal.SIGCONT)
    reads = read_lines(guest_sh(daemon, "pot", "touch /tmp/stop; sleep 2; cat /tmp/reads"))
    during = [r for r in reads if r[0] > frozen_at + 1 and r[1] < thawed_at - 1]
    before = [r for r in reads if r[1] < frozen_at - 1]
    assert len(during) >= 3, reads  # the guest read /proc on and on while no host answered
    assert all(not c.startswith("FILTERED") for _, _, c in during), during
    assert before and all(c.startswith("FILTERED") for _, _, c in before), before
    assert guest_sh(daemon, "pot", "cat /proc/loadavg").startswith("FILTERED ")
    assert daemon.ls()["pot"]["state"] == "running"


def test_a_changed_profile_reaches_the_running_guest_and_a_broken_one_is_refused(
    daemon: DaemonProc, tmp_path: Path, built_kernel: Path
) -> None:
    install(daemon)
    prof = profile_file(tmp_path / "p.toml", "[proc.loadavg]\nfilter = { sub = [['^', 'A ']] }\n")
    fleet = FLEET_HEAD + machine_toml("pot", kernel="honeypot", disguise=str(prof))
    daemon.apply(fleet)
    wait_running(daemon, "pot")
    assert guest_sh(daemon, "pot", "cat /proc/loadavg").startswith("A ")
    profile_file(prof, "[proc.loadavg]\nfilter = { sub = [['^', 'B ']] }\n")
    assert "no change" in daemon.apply(fleet).stdout  # the fleet is the same, the file is not
    assert guest_sh(daemon, "pot", "cat /proc/loadavg").startswith("B ")
    wait_for(
        "the ack of rule set 2",
        lambda: any(
            e["kind"] == "disguise-applied" and e["generation"] == 2 for e in events(daemon, "pot")
        ),
        30,
        0.5,
    )
    profile_file(prof, "[proc.loadavg]\nfilter = { sub = [['(', 'C ']] }\n")  # a bad regex
    path = daemon.layout.home / "fleet.toml"
    path.write_text(fleet)
    r = daemon.cli("apply", str(path), check=False)
    assert r.returncode == 2
    assert (
        f"disguise = '{prof}': {prof}: proc.loadavg.filter.sub[0]: '(' is not a valid" in r.stderr
    )
    assert guest_sh(daemon, "pot", "cat /proc/loadavg").startswith("B ")
    assert [e["generation"] for e in events(daemon, "pot") if e["kind"] == "disguise-sent"] == [2]
    # another profile, by name; then none at all: the guest sees what it really is
    daemon.apply(FLEET_HEAD + machine_toml("pot", kernel="honeypot", disguise="baremetal"))
    cpu = guest_sh(daemon, "pot", "cat /proc/cpuinfo")
    assert "UML" not in cpu and "vendor_id" in cpu
    assert not guest_sh(daemon, "pot", "cat /proc/loadavg").startswith("B ")
    daemon.apply(FLEET_HEAD + machine_toml("pot", kernel="honeypot"))
    assert "User Mode Linux" in guest_sh(daemon, "pot", "cat /proc/cpuinfo")
    assert "disguise-next-boot" not in kinds(daemon, "pot")
    sent = [e["profile"] for e in events(daemon, "pot") if e["kind"] == "disguise-sent"]
    assert sent == ["p", "baremetal", "none"]


def test_both_channels_outlive_a_killed_and_a_stopped_daemon(
    daemon: DaemonProc, tmp_path: Path, built_kernel: Path
) -> None:
    install(daemon)
    prof = profile_file(tmp_path / "p.toml", "[proc.loadavg]\nfilter = { sub = [['^', 'F ']] }\n")
    daemon.apply(
        FLEET_HEAD + machine_toml("pot", kernel="honeypot", tty_log=True, disguise=str(prof))
    )
    wait_running(daemon, "pot")
    guest_sh(daemon, "pot", "echo before-$((1+1))")
    # Ticks on the console, each with the time and what /proc/loadavg said, while the daemon
    # goes away twice (kill -9, then a clean stop that leaves the guest running).
    guest_sh(
        daemon,
        "pot",
        "(i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); s=$(date +%s); c=$(cat /proc/loadavg);"
        ' echo "tick $i $s $(date +%s) $c" > /dev/console; sleep 1; done) & true',
    )
    time.sleep(2)
    # (gone, restarting, answering): no daemon from the first to the second; from the second
    # to the third a new daemon is starting and may or may not serve the rules yet (under load
    # its start takes seconds), so ticks then are judged by neither check.
    gone: list[tuple[float, float, float]] = []
    for how in ("kill", "stop"):
        t0 = time.time()
        daemon.kill9() if how == "kill" else daemon.stop()
        time.sleep(8)
        t1 = time.time()
        daemon.start()
        gone.append((t0, t1, time.time()))
        wait_running(daemon, "pot")
        guest_sh(daemon, "pot", f"echo after-{how}-$((2+2))")
        time.sleep(2)
    guest_sh(daemon, "pot", "touch /tmp/stop; sleep 2")
    daemon.cli("stop", "pot")

    records = dump(daemon, "pot")
    types = [r["type"] for r in records]
    # Every kernel record of the boot is there, in order, once; or, if a daemon was killed
    # holding records it had read but not yet written, the log says exactly how many.
    kseqs = [r["kseq"] for r in records if r["type"] == "ttylog"]
    assert kseqs == sorted(set(kseqs)) and kseqs[0] == 1
    missing = kseqs[-1] - len(kseqs)
    gaps = [r for r in records if r["type"] == "ttylog-gap"]
    assert sum(g["lost_records"] for g in gaps) == missing
    text = screen_text(records)
    ticks = [
        (int(m[1]), int(m[2]), int(m[3]), m[4])
        for m in re.finditer(r"tick (\d+) (\d+) (\d+) ([^\r\n]*)", text)
    ]
    if not gaps:
        assert [t[0] for t in ticks] == list(range(1, len(ticks) + 1))  # no tick missing
    for t0, t1, _ in gone:
        inside = [t for t in ticks if t[1] > t0 + 1 and t[2] < t1 - 1]
        assert len(inside) >= 3, (t0, t1, ticks)
        # no daemon: the kernel served the rule's fallback (the real content), not the filter
        assert all(not t[3].startswith("F ") for t in inside), inside
    outside = [t for t in ticks if all(t[2] < t0 - 1 or t[1] > t2 + 1 for t0, _, t2 in gone)]
    assert outside and all(t[3].startswith("F ") for t in outside), (
        gone,
        [t for t in outside if not t[3].startswith("F ")],
    )
    for word in ("before-2", "after-kill-4", "after-stop-4"):
        assert word in text
    assert types.count("ttylog-reattached") == 2 and types.count("recovered") == 2
    assert types[-1] == "end"
    evs = events(daemon, "pot")
    again = [e for e in evs if e["kind"] == "disguise-reattached"]
    assert len(again) == 2 and all(e["stale_messages"] >= 1 for e in again)
    assert [e["generation"] for e in again] == [2, 3]
    assert not [e for e in evs if e["kind"].endswith("reattach-failed")]
    assert daemon.cli("logs", "verify", "pot").returncode == 0
    assert not (daemon.layout.machine("pot") / channels.STATE_FILE).exists()


@pytest.mark.timeout(1200)  # Debian guests: a first build of the image, slow boots
def test_a_flood_while_the_daemon_is_frozen_drops_records_and_the_log_counts_them_exactly(
    daemon: DaemonProc, lab: Lab, tmp_path: Path, built_kernel: Path
) -> None:
    install(daemon, with_debian=True)
    intruder = Intruder(lab, tmp_path)
    pot = net_machine(
        "pot", [("hp0", "10.78.0.10")], memory="256M", image="debian", kernel="honeypot",
        tty_log=True, forwards=["tcp:2022:22"], ssh_keys=[intruder.public],
    )  # fmt: skip
    daemon.apply(net_fleet(lab.host, [pot], networks=HP_NET))
    wait_running(daemon, "pot")
    intruder.wait(2022)
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:  # 15 MB through a pty in the guest, logged on both ends, while nobody reads the log
        flood = subprocess.run(
            intruder.argv(2022, "seq 1 2000000; echo flood-done", tty=True),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=600,
        )
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert flood.stdout.endswith(b"2000000\r\nflood-done\r\n")  # the guest never waited
    assert intruder.run(2022, "echo after-flood").stdout == "after-flood\n"
    stats = dict(kv.split("=") for kv in daemon.cli("mconsole", "pot", "ttylog").stdout.split())
    assert stats["state"] == "on" and int(stats["lost_records"]) > 0
    wait_for(
        "the log to catch up",
        lambda: (
            status(daemon, "pot")["tty_log"]["kernel_lost_records"] == int(stats["lost_records"])
        ),
        60,
        0.5,
    )
    tl = status(daemon, "pot")["tty_log"]
    assert tl["host_lost_records"] == 0 and tl["damaged_messages"] == 0
    dropped = [e for e in events(daemon, "pot") if e["kind"] == "ttylog-dropped"]
    assert sum(e["lost_records"] for e in dropped) == int(stats["lost_records"])
    daemon.cli("stop", "pot")
    records = dump(daemon, "pot")
    drops = [r for r in records if r.get("op") == "drop"]
    assert sum(r["lost_records"] for r in drops) == int(stats["lost_records"])
    kseqs = [r["kseq"] for r in records if r["type"] == "ttylog"]
    assert kseqs[-1] - kseqs[0] + 1 == len(kseqs) + int(stats["lost_records"])
    assert daemon.cli("logs", "verify", "pot").returncode == 0


@pytest.mark.timeout(1200)  # Debian guests: a first build of the image, slow boots
def test_the_honeypot_example_runs_with_warden_up(home: Layout, built_kernel: Path) -> None:
    """examples/honeypot.toml, in a namespace of its own name: warden makes the namespace,
    the intruder (from a namespace wired to it) logs in as admin with the example's password,
    and Ctrl-C removes everything."""
    from warden.images import minimal

    minimal.build(ImageStore(home), NullProgress())
    kbuild.build(home, "honeypot")
    debian.build(ImageStore(home), NullProgress())
    ns = f"wp{os.getpid() % 100000}"
    outside = f"{ns}o"
    text = (ROOT / "examples" / "honeypot.toml").read_text()
    assert 'netns = "warden-pot"' in text
    fleet = home.home / "honeypot.toml"
    fleet.write_text(text.replace('netns = "warden-pot"', f'netns = "{ns}"'))
    env = {**os.environ, "WARDEN_HOME": str(home.home)}
    log = open(home.home / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([*WARDEN, "up", str(fleet)], env=env, stdout=log, stderr=log)
    d = DaemonProc(home)
    askpass = home.home / "askpass"
    askpass.write_text("#!/bin/sh\necho admin123\n")
    askpass.chmod(0o700)
    try:
        wait_for("the daemon", lambda: d.cli("status", check=False).returncode == 0, 60)
        wait_running(d, "pot")
        sh("ip", "netns", "add", outside)
        sh(
            "ip", "link", "add", "vp" + ns, "netns", ns, "type", "veth",
            "peer", "name", "vq" + ns, "netns", outside,
        )  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", "192.168.251.1/30", "dev", "vp" + ns)
        sh("ip", "-n", outside, "addr", "add", "192.168.251.2/30", "dev", "vq" + ns)
        sh("ip", "-n", ns, "link", "set", "vp" + ns, "up")
        sh("ip", "-n", outside, "link", "set", "vq" + ns, "up")
        ssh = [
            "ip", "netns", "exec", outside, "ssh", *SSH_OPTS, "-o", "LogLevel=ERROR",
            "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
            "-o", "NumberOfPasswordPrompts=1", "admin@192.168.251.1",
            "echo in-as-$(id -un); systemd-detect-virt || true",  # it exits 1 with "none"
        ]  # fmt: skip
        askenv = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}

        def logged_in() -> str:
            r = subprocess.run(ssh, env=askenv, capture_output=True, text=True, timeout=60)
            return r.stdout if r.returncode == 0 else ""

        out = wait_for("a password login on port 22", logged_in, 180, 2)
        assert out.startswith("in-as-admin\n")
        assert out.split("\n")[1] == ("none" if host_has_cpuid_faulting() else "kvm")
        wait_for(
            "the exec in the tty log",
            lambda: (
                "systemd-detect-virt"
                in d.cli("logs", "search", "systemd-detect-virt", "--executed", check=False).stdout
            ),
            30,
            0.5,
        )
        up.send_signal(signal.SIGINT)
        assert up.wait(120) == 0, (home.home / "up.log").read_text()[-3000:]
        assert not Path("/run/netns", ns).exists()
        assert instance_groups(home) == []
        assert d.cli("logs", "verify", "pot", check=False).returncode == 0
    finally:
        end_warden_up(up, log, home, ns, outside)

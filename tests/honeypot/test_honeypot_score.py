"""The detection score's pure parts: the battery table, the guest script and its reader, and the
judge, on answers recorded from examples/honeypot.toml's guest (tests/data/score/) and on
made-up ones. The script itself runs here on the host's own sh (no guest), and the CPUID
program on the host's CPU."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from warden.honeypot.score import judge as j
from warden.honeypot.score import script as sc
from warden.honeypot.score import table as tb

DATA = Path(__file__).parents[1] / "data" / "score"


def recorded(name: str) -> tuple[str, dict[tuple[str, str], tuple[int, str]]]:
    rec = json.loads((DATA / name).read_text())
    return rec["user"], {(p, w): (rc, out) for p, w, rc, out in rec["results"]}


def verdicts(report: j.Report) -> dict[tuple[str, str], j.Verdict]:
    return {(v.id, v.identity): v for v in report.verdicts}


def test_the_table_is_whole_and_every_unhideable_check_says_why() -> None:
    t = tb.load()
    assert len(t.checks) >= 35 and len(t.probes) >= 25
    for c in t.checks:
        assert c.probe in t.probes
        assert c.hideable or c.why, c.id
    with pytest.raises(ValueError, match="no probe 'nope'"):
        tb.parse_table('[[check]]\nid = "x"\nprobe = "nope"\nas = "user"\n')
    bad_as = (
        '[[probe]]\nid = "p"\nas = "user"\nrun = "true"\n'
        '[[check]]\nid = "x"\nprobe = "p"\nas = "root"\njudge = "empty"\nhideable = true\n'
    )
    with pytest.raises(ValueError, match="runs as user"):
        tb.parse_table(bad_as)
    with pytest.raises(ValueError, match="needs why"):
        tb.parse_table(bad_as.replace('as = "root"', 'as = "user"').replace("true\n", "false\n"))


def test_the_guest_script_never_contains_its_own_mark() -> None:
    s = sc.build(tb.load(), nonce="0123456789ab")
    assert s.mark == "WSC0123456789ab"
    assert s.mark not in s.text  # the console's echo of the script can never match
    assert s.text.startswith(" unset HISTFILE;")  # kept out of root's shell history
    assert sc.build(tb.load()).nonce != sc.build(tb.load()).nonce


def test_the_recorded_console_is_read_and_foreign_or_broken_lines_are_not() -> None:
    console = (DATA / "pot-before-console.bin").read_bytes()
    nonce = re.search(rb"WSC([0-9a-f]{12})-BEGIN", console)
    assert nonce is not None
    script = sc.Script(nonce.group(1).decode(), "")
    t = tb.load()
    answer = sc.parse(console, script, t)
    user, results = recorded("pot-before.json")
    assert (answer.user, answer.complete) == (user, True) == ("admin", True)
    assert answer.results == results and len(results) == 31
    # another run's lines (another nonce) are not this run's
    with pytest.raises(sc.ScriptError, match="root shell"):
        sc.parse(console, sc.Script("ffffffffffff", ""), t)
    # cut before the end: what came is kept, and the answer says it is incomplete
    cut = console[: console.index(f"{script.mark} ssh-banner user".encode())]
    partial = sc.parse(cut, script, t)
    assert not partial.complete and ("virt-what", "root") in partial.results
    assert ("ssh-banner", "user") not in partial.results
    # odd hex and unknown probes are dropped
    extra = (
        f"\r\n{script.mark} virt-what root 0 abc\r\n{script.mark} nosuch user 0 41\r\n"
    ).encode()
    again = sc.parse(console.replace(f"{script.mark}-END".encode(), extra), script, t)
    assert again.results[("virt-what", "root")] == results[("virt-what", "root")]
    assert not any(p == "nosuch" for p, _ in again.results)


def test_the_recorded_guest_before_the_fix_shows_the_issues_tells() -> None:
    user, results = recorded("pot-before.json")
    report = j.judge(tb.load(), results, j.HostFacts(862.0, True), user)
    v = verdicts(report)
    for who in ("user", "root"):
        ev = "\n".join(v[("dmesg-uml", who)].evidence)
        assert "No pseudo-terminals available" in ev and "renamed from vec0" in ev
        assert "seed.img" in "\n".join(v[("dmesg-host-path", who)].evidence)
    assert "ubda  98:0     2G disk" in v[("block-names", "user")].evidence
    assert any("uml-vector.0" in e for e in v[("platform-uml", "user")].evidence)
    assert v[("nic-mac", "user")].evidence == [
        "eth0 02:9d:d9:05:48:5d: locally administered (not a vendor's OUI)"
    ]
    for tell in ("pci", "acpi", "dmi", "memory-size", "common-commands"):
        assert v[(tell, "user")].verdict == "tell", tell
    lat = v[("syscall-latency", "user")]
    assert lat.verdict == "tell" and not lat.hideable and "167.6x" in lat.evidence[0]
    # what the disguise already hid
    hidden = "virt-what systemd-detect-virt cpuinfo-uml hostfs mounts-ubd proc-devices"
    for ok in (hidden + " cmdline-uml ssh-banner ssh-bad-version ssh-cr").split():
        who = "root" if ok == "virt-what" else "user"
        assert v[(ok, who)].verdict == "pass", (ok, v[(ok, who)].evidence)
    assert v[("lspci-virtual", "user")].verdict == "n/a"  # no lspci in that image
    s = report.summary()
    assert s["tells"] == sum(x.verdict == "tell" for x in report.verdicts) >= 14


def _probe(rc: int, out: str) -> dict[tuple[str, str], tuple[int, str]]:
    return {("p", "user"): (rc, out)}


def _one(check_toml: str, rc: int, out: str, host: j.HostFacts | None = None) -> j.Verdict:
    t = tb.parse_table('[[probe]]\nid = "p"\nas = "user"\nrun = "x"\n' + check_toml)
    return j.judge(t, _probe(rc, out), host or j.HostFacts()).verdicts[0]


CHECK = '[[check]]\nid = "c"\nprobe = "p"\nas = "user"\nhideable = true\n'


def test_macs_from_vendors_pass_and_virtual_or_local_ones_are_tells() -> None:
    mac = CHECK + 'judge = "mac"\n'
    assert _one(mac, 0, "eth0 a0:36:9f:12:34:56\n").verdict == "pass"  # Intel
    assert _one(mac, 0, "eth0 52:54:00:12:34:56\n").evidence == [
        "eth0 52:54:00:12:34:56: QEMU/KVM's OUI"
    ]
    assert "locally administered" in _one(mac, 0, "eth0 02:00:00:00:00:01\n").evidence[0]
    assert _one(mac, 0, "").evidence == ["no NIC found"]


def cpuid_hex(ecx1: int, sig: bytes) -> str:
    regs = [0xD, 0x68747541, 0x444D4163, 0x69746E65, 0x830F10, 0, ecx1, 0, 0x40000001]
    words = regs + [int.from_bytes(sig[i : i + 4].ljust(4, b"\0"), "little") for i in (0, 4, 8)]
    return " ".join(f"{b:02x}" for w in words for b in w.to_bytes(4, "little"))


def test_cpuid_is_judged_against_what_proc_cpuinfo_claims() -> None:
    t = tb.parse_table(
        '[[probe]]\nid = "p"\nas = "user"\nrun = "@cpuid"\n'
        '[[probe]]\nid = "cpuinfo"\nas = "user"\nrun = "cat /proc/cpuinfo"\n'
        + CHECK + 'judge = "cpuid"\nwith = "cpuinfo"\n'
    )  # fmt: skip
    plain = "flags\t\t: fpu sse sse2\n"

    def run(ecx1: int, sig: bytes, faulting: bool) -> list[str]:
        results = {("p", "user"): (0, cpuid_hex(ecx1, sig)), ("cpuinfo", "user"): (0, plain)}
        return j.judge(t, results, j.HostFacts(None, faulting)).verdicts[0].evidence

    assert run(0x7EFA3203, b"", True) == []  # bit 31 clear, leaf 0x40000000 zeros
    found = run(0xFEFA3203, b"KVMKVMKVM", False)
    assert found[0] == "CPUID leaf 1 ECX bit 31 (hypervisor) is set"
    assert "'KVMKVMKVM'" in found[1] and "contradicts" in found[2]
    assert "not hideable on this host" in found[3]
    assert j.cpuid_registers("00 11") is None


def test_the_other_judges() -> None:
    lat = CHECK + 'judge = "latency"\nmax_ratio = 5.0\n'
    dd = "100000+0 records in\n100000 bytes (100 kB, 98 KiB) copied, 0.5 s, 200 kB/s\n"
    assert j.ns_per_syscall(dd) == 2500.0
    busybox = "100000+0 records in\n100000+0 records out\nuptime 12.30 12.80\n"
    assert j.ns_per_syscall(busybox) == pytest.approx(2500.0)
    assert j.ns_per_syscall("100000+0 records out\nuptime 12.30 12.30\n") is None
    assert _one(lat, 0, dd, j.HostFacts(1000.0)).verdict == "pass"  # 2.5x
    assert _one(lat, 0, dd, j.HostFacts(500.0)).verdict == "pass"  # 5x: the limit itself
    assert _one(lat, 0, dd, j.HostFacts(400.0)).evidence == [
        "2500 ns a system call against the host's 400 ns: 6.2x (more than 5x)"
    ]
    differs = CHECK + 'judge = "differs"\nseparator = "--"\n'
    assert _one(differs, 0, "Mem: 1 2\n--\nMem: 1 3\n").verdict == "pass"
    assert _one(differs, 0, "Mem: 1 2\n--\nMem: 1 2\n").verdict == "tell"
    mem = CHECK + 'judge = "min_kib"\nfield = "MemTotal"\nvalue = 900000\n'
    assert _one(mem, 0, "MemTotal:        1012345 kB\n").verdict == "pass"
    assert _one(mem, 0, "MemTotal:   236732 kB\n").evidence == [
        "MemTotal 236732 kB: less than 900000 kB"
    ]
    eq = CHECK + 'judge = "equals"\nvalue = "none"\nmissing = "n/a"\n'
    assert _one(eq, 1, "none\n").verdict == "pass"
    assert _one(eq, 0, "uml\n").evidence == ["uml (not 'none')"]
    assert _one(eq, 127, "sh: 1: systemd-detect-virt: not found\n").verdict == "n/a"
    absent = CHECK + "judge = \"absent\"\npatterns = ['ubd']\n"
    assert len(_one(absent, 0, "ubd\n" * 50).evidence) == j.EVIDENCE_LINES
    assert _one(absent, 0, "x" * 1000 + "ubd").evidence[0].endswith("…")
    missing = j.judge(tb.parse_table('[[probe]]\nid = "p"\nas = "user"\nrun = "x"\n' + absent),
                      {}, j.HostFacts())  # fmt: skip
    assert missing.verdicts[0].verdict == "error"


def test_the_cpuid_program_runs_on_this_cpu(tmp_path: Path) -> None:
    prog = tmp_path / "cpuid"
    prog.write_bytes(sc.cpuid_program())
    prog.chmod(0o755)
    out = subprocess.run([str(prog)], capture_output=True, check=True, timeout=10).stdout
    assert len(out) == 48
    regs = j.cpuid_registers(out.hex())
    assert regs is not None
    vendor = b"".join(r.to_bytes(4, "little") for r in (regs[1], regs[3], regs[2])).decode()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert re.search(rf"^vendor_id\s*:\s*{vendor}$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    assert flags is not None
    assert bool(regs[6] >> 31 & 1) == ("hypervisor" in flags.group(1).split())


def test_the_script_runs_on_the_hosts_sh_and_its_answer_is_read(tmp_path: Path) -> None:
    """The script, as the guest's sh would run it (here dash, as root, `nobody` the user)."""
    t = tb.load()
    s = sc.build(t)
    body = s.text.split("<<'WARDEN_SCORE_EOF'\n", 1)[1].rsplit("WARDEN_SCORE_EOF", 1)[0]
    r = subprocess.run(["sh", "-c", body], capture_output=True, timeout=300, cwd=tmp_path)
    answer = sc.parse(r.stdout, s, t)
    assert answer.complete, r.stdout[-2000:]
    assert set(answer.results) == {(p.id, w) for p in t.probes.values() for w in p.identities}
    rc, out = answer.results[("cpuinfo", "user")]
    assert rc == 0 and out == Path("/proc/cpuinfo").read_text()[: sc.OUTPUT_MAX]
    assert answer.results[("cpuid", "user")][0] == 0
    assert j.cpuid_registers(answer.results[("cpuid", "user")][1]) is not None
    assert answer.user == "nobody"  # this host has no `admin`
    uid = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout.strip()
    rc, out = answer.results[("self-exe", "user")]
    assert rc == 0 and re.search(r"177\s+E\s+L\s+F", out)
    assert uid != "0"


def test_the_recorded_guest_after_the_fix_passes_every_hideable_check() -> None:
    """The same example after kernel/0010, the persona and the image changes (recorded)."""
    rec = json.loads((DATA / "pot-after.json").read_text())
    results = {(p, w): (rc, out) for p, w, rc, out in rec["results"]}
    report = j.judge(tb.load(), results, j.HostFacts(rec["host_ns_per_syscall"], True))
    assert report.summary()["hideable_tells"] == 0, [
        (v.id, v.evidence) for v in report.verdicts if v.verdict == "tell" and v.hideable
    ]
    tells = sorted(v.id for v in report.verdicts if v.verdict == "tell")
    assert tells == ["dmidecode", "syscall-latency", "warden-names"]  # the documented ones
    v = verdicts(report)
    assert v[("syscall-latency", "user")].evidence[0].endswith("59.6x (more than 5x)")
    lspci = results[("lspci", "user")][1]
    assert "SATA controller" in lspci and "Ethernet controller" in lspci

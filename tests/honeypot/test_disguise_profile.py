"""Disguise profiles: the shipped `baremetal` profile, what its filters make of a UML guest's
real /proc content, and malformed profiles refused before any boot with the fault named."""

from pathlib import Path

import pytest

from warden.honeypot import boot
from warden.honeypot.disguise_wire import Action, Fallback, KmsgAction
from warden.honeypot.profile import DisguiseError, host_cpuinfo, load_profile, parse_profile

# What the stock UML 6.1 kernel shows (captured from a guest on this kind of host).
UML_CPUINFO = """processor\t: 0
vendor_id\t: User Mode Linux
model name\t: UML
mode\t\t: skas
host\t\t: Linux vm 6.18.44 #1 SMP PREEMPT_DYNAMIC x86_64
fpu\t\t: yes
flags\t\t: fpu vme de pse tsc hypervisor avx2
cache_alignment\t: 64
bogomips\t: 7695.56

"""
UML_INTERRUPTS = """           CPU0       
  0:        147   SIGALRM      hr timer
  2:         62     SIGIO      ubd
  5:          0     SIGIO      mconsole
  7:          0     SIGIO      write sigio
 10:          1     SIGIO      random
 19:          8     SIGIO      console-write
 20:          4     SIGIO      console
"""  # noqa: W291 (the real file has the trailing blanks)
UML_DEVICES_BLOCK = "Block devices:\n 98 ubd\n259 blkext\n"
UML_MOUNTS = "/dev/root / ext4 rw,relatime 0 0\nnone /mnt hostfs rw 0 0\nproc /proc proc rw 0 0\n"
UML_FILESYSTEMS = "nodev\tsysfs\n\text4\nnodev\thostfs\nnodev\tmqueue\n"
HOST_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
microcode\t: 0x1
siblings\t: 2
core id\t\t: 0
cpu cores\t: 2
flags\t\t: fpu vme hypervisor avx2
bogomips\t: 5200.00
power management:

processor\t: 1
vendor_id\t: GenuineIntel
"""


def apply(path: str, text: str) -> str:
    rule = load_profile("baremetal").rule(path)
    assert rule is not None and rule.filter is not None
    return rule.filter.apply_lines(text)


def test_baremetal_covers_every_tell_tale() -> None:
    p = load_profile("baremetal")
    actions = {r.path: r.action for r in p.proc}
    for hidden in ("exitcode", "mconsole", "sysemu"):
        assert actions[hidden] == Action.HIDE
    for replaced in ("cpuinfo", "cmdline"):
        assert actions[replaced] == Action.REPLACE
    for filtered in ("filesystems", "[pid]/mounts", "devices", "interrupts", "version"):
        assert actions[filtered] == Action.FILTER
    assert p.cpuid_hide_hypervisor
    hidden_logs = {k.match for k in p.kmsg if k.action == KmsgAction.HIDE}
    assert {b"mconsole", b"ubd", b"hostfs", b"setup_one_line failed"} <= hidden_logs


def test_baremetal_cpuinfo_is_the_hosts_cpu_without_uml_or_hypervisor() -> None:
    rule = load_profile("baremetal").rule("cpuinfo")
    assert rule is not None
    text = rule.text.decode()
    assert "User Mode Linux" not in text and "UML" not in text
    assert "skas" not in text and "\nhost\t" not in text
    assert " hypervisor" not in text
    assert text.count("processor\t:") == 1 and "bogomips" in text


def test_host_cpuinfo_generator(tmp_path: Path) -> None:
    src = tmp_path / "cpuinfo"
    src.write_text(HOST_CPUINFO)
    text = host_cpuinfo(1, ("hypervisor",), {"microcode": "0x2b000603"}, source=src)
    assert text == (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "microcode\t: 0x2b000603\nsiblings\t: 1\ncore id\t\t: 0\ncpu cores\t: 1\n"
        "flags\t\t: fpu vme avx2\nbogomips\t: 5200.00\npower management:\n\n"
    )
    two = host_cpuinfo(2, (), None, source=src)
    assert "processor\t: 1\n" in two and "hypervisor" in two and "siblings\t: 2" in two


def test_baremetal_filters_on_uml_content() -> None:
    interrupts = apply("interrupts", UML_INTERRUPTS)
    assert "SIGIO" not in interrupts and "SIGALRM" not in interrupts
    assert "mconsole" not in interrupts and "ubd" not in interrupts
    assert "  0:        147     IO-APIC   2-edge      timer\n" in interrupts
    assert apply("devices", UML_DEVICES_BLOCK) == "Block devices:\n  8 sd\n259 blkext\n"
    assert apply("[pid]/mounts", UML_MOUNTS) == (
        "/dev/sda / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n"
    )
    assert "hostfs" not in apply("filesystems", UML_FILESYSTEMS)
    assert apply("partitions", "  98        0     262144 ubda\n") == (
        "   8        0     262144 sda\n"
    )
    version = "Linux version 6.1.176 (buildd@x86-grnet-03) (gcc 12.2.0) #1 Sat Jul 4 2026\n"
    assert "(debian-kernel@lists.debian.org)" in apply("version", version)
    assert UML_CPUINFO  # what cpuinfo replaces (see the test above)


def test_unknown_profile_name_lists_the_shipped_ones() -> None:
    with pytest.raises(DisguiseError, match="no disguise profile named 'vmware'.*baremetal"):
        load_profile("vmware")


def test_missing_profile_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DisguiseError, match=r"nope\.toml: No such file"):
        load_profile(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "toml, problem",
    [
        ("[proc.cpuinfo\n", "not valid TOML"),
        ("[proc.cpuinfo]\nhide = true\nreplace = 'x'\n", r"proc\.cpuinfo: needs exactly one"),
        ("[proc.cpuinfo]\nhide = false\n", r"proc\.cpuinfo\.hide: False: the only value is true"),
        ("[proc.cpuinfo]\nreplace = 3\n", r"proc\.cpuinfo\.replace: 3: expected a string"),
        ("[proc.'/etc/passwd']\nhide = true\n", "without a leading '/'"),
        ("[proc.'net/../cpuinfo']\nhide = true\n", "without a leading '/' or '..'"),
        ("[proc.'self/mounts']\nhide = true\n", r"per-process files .* \[pid\]/mounts"),
        ("[proc.'[pid]/mounts']\nhide = true\n", "can be replaced or filtered, not hidden"),
        (
            "[proc.x]\nfilter = { drop = ['(unclosed'] }\n",
            r"filter\.drop\[0\].*not a valid regular",
        ),
        ("[proc.x]\nfilter = { sub = [['a']] }\n", r"filter\.sub\[0\]: \['a'\]"),
        ("[proc.x]\nfilter = { command = ['sed'] }\n", "give the program's full path"),
        ("[proc.x]\nfilter = { grep = 'a' }\n", "unknown key 'grep'"),
        ("[proc.x]\nfilter = {}\nfallback = 'maybe'\n", r"proc\.x\.fallback: 'maybe'"),
        ("[proc.x]\nfilter = {}\ntimeout_ms = 9000\n", r"proc\.x\.timeout_ms: 9000: .* 0 to 5000"),
        ("[proc.x]\nhide = true\ntimeout_ms = 10\n", "applies to filters only"),
        ("[proc.x]\nreplace = { generator = 'dmi' }\n", "'dmi': the generators are"),
        ("[profile]\ntimeout_ms = 0\n", r"profile\.timeout_ms: 0"),
        ("[profile]\ncpuid_hide_hypervisor = 'yes'\n", "expected true or false"),
        ("[profile]\ncolour = 'red'\n", "unknown key 'colour'"),
        ("[[kmsg]]\nhide = true\n", r"kmsg\[0\]\.match: None: expected a string"),
        ("[[kmsg]]\nmatch = ''\n", "must not be empty"),
        ("[[kmsg]]\nmatch = 'a'\nhide = true\nreplace = 'b'\n", "both hide and replace"),
        (f"[[kmsg]]\nmatch = 'a'\nreplace = '{'x' * 1001}'\n", "1001 bytes: at most 1000"),
        ("[something]\n", "unknown key 'something'"),
    ],
)
def test_malformed_profiles_are_refused_with_the_fault_named(toml: str, problem: str) -> None:
    with pytest.raises(DisguiseError, match=problem) as e:
        parse_profile(toml, "bad", "/etc/warden/bad.toml")
    assert str(e.value).startswith("/etc/warden/bad.toml: ")


def test_a_profile_too_big_for_one_rule_set_is_refused() -> None:
    text = "x" * 60000
    toml = "".join(f"[proc.e{i}]\nreplace = '{text}'\n" for i in range(3))
    with pytest.raises(DisguiseError, match="rule set of .* bytes > 131072"):
        parse_profile(toml, "big", "big.toml")


def test_fallbacks_and_timeouts_reach_the_rule_set() -> None:
    p = parse_profile(
        "[profile]\ntimeout_ms = 50\n"
        "[proc.a]\nfilter = { sub = [['x', 'y']] }\nfallback = { text = 'fb' }\ntimeout_ms = 70\n"
        "[proc.b]\nfilter = {}\nfallback = 'empty'\n",
        "t",
        "t.toml",
    )
    entries = {e.path: e for e in p.ruleset().entries}
    assert (entries["a"].fallback, entries["a"].text, entries["a"].timeout_ms) == (
        Fallback.TEXT,
        b"fb",
        70,
    )
    assert (entries["b"].fallback, entries["b"].timeout_ms) == (Fallback.EMPTY, 0)
    assert p.ruleset().timeout_ms == 50


def test_honeypot_settings_need_the_honeypot_kernel() -> None:
    with pytest.raises(DisguiseError, match='tty_log = true needs kernel = "honeypot"'):
        boot.check("stock", True, "")
    with pytest.raises(DisguiseError, match="disguise = 'baremetal' needs kernel"):
        boot.check("stock", False, "baremetal")
    assert boot.check("honeypot", True, "") is None
    profile = boot.check("honeypot", False, "baremetal")
    assert profile is not None and profile.name == "baremetal"


def test_prepare_refuses_a_bad_profile_before_making_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[proc.cpuinfo]\nreplace = 1\n")
    with pytest.raises(DisguiseError, match=r"bad\.toml: proc\.cpuinfo\.replace"):
        boot.prepare(tty_log=True, disguise=bad)

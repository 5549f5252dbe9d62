"""Issue 18, section 1: the fleet file takes names in full and no kernel argument that reaches
the host or overrides warden's own; warden's arguments always win on the command line."""

import json
from pathlib import Path

import pytest

from warden.errors import SpecError
from warden.spec import fleet
from warden.uml import cmdline

HEAD = """
[[owner]]
name = "alice"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUta2V5LW5vdC1yZWFsLWFsaWNlLTAwMDAw a@b"]

[[network]]
name = "lan0"
subnet = "10.9.0.0/24"
"""


def error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        fleet.parse(HEAD + text, "f.toml")
    return str(e.value)


def machine(**keys: str | bool) -> str:
    lines = ["[[machine]]", 'name = "m1"', 'owner = "alice"']
    for k, v in keys.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


# ---- names match in full ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[[machine]]\nname = "web1\\n"\nowner = "alice"\n', "name = 'web1\\n'"),
        ('[[owner]]\nname = "bob\\n"\n', "name = 'bob\\n'"),
        ('[[network]]\nname = "lan1\\n"\nsubnet = "10.8.0.0/24"\n', "name = 'lan1\\n'"),
        ('[host]\nnetns = "w0\\n"\n', "netns = 'w0\\n'"),
        (machine(egress="20/second\n"), "egress = '20/second\\n'"),
        (machine(root_password_hash="$6$salt$" + "a" * 86 + "\n"), "root_password_hash"),
    ],
)
def test_a_trailing_newline_is_refused(table: str, key: str) -> None:
    msg = error(table)
    assert key in msg, msg


def test_a_forward_with_a_trailing_newline_is_refused() -> None:
    text = machine().replace('owner = "alice"\n', 'owner = "alice"\n') + (
        'nics = [{ network = "lan0" }]\nforwards = ["tcp:8080:80\\n"]\n'
    )
    assert "forwards" in error(text) and "tcp:8080:80\\n" in error(text)


def test_name_patterns_are_whole_even_with_match() -> None:
    """console/access.py checks names with .match: the patterns themselves are anchored."""
    assert fleet.MACHINE_NAME.match("web1\n") is None
    assert fleet.LINE_NAME.match("con0\n") is None
    assert fleet.MACHINE_NAME.match("web1") is not None


def test_an_ssh_key_with_a_line_break_is_refused() -> None:
    bad = HEAD.replace("a@b\"]", 'a@b\\nssh-ed25519 AAAAevil x"]')
    with pytest.raises(SpecError) as e:
        fleet.parse(bad, "f.toml")
    assert "keys" in str(e.value) and "line breaks" in str(e.value)


# ---- kernel_args --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arg", "key", "why"),
    [
        ("ubd1=/etc/shadow", "ubd1", "disks"),
        ("ubd0r=/var/lib/other.img", "ubd0r", "disks"),
        ("hostfs=/", "hostfs", "reaches the host"),
        ("con1=file:/etc/shadow", "con1", "reaches the host"),
        ("console=ttyS0", "console", "consoles"),
        ("ssl3=port:9000", "ssl3", "reaches the host"),
        ("mconsole=notify:/tmp/x", "mconsole", "notifications"),
        ("umid=other", "umid", "mconsole"),
        ("uml_dir=/root", "uml_dir", "ctl"),
        ("uml-dir=/root", "uml-dir", "ctl"),
        ("mem=4G", "mem", "memory"),
        ("tty_log_fd=3", "tty_log_fd", "tty log"),
        ("disguise_fd=4", "disguise_fd", "disguise"),
        ("eth0=tuntap,tap0", "eth0", "reaches the host"),
        ("vec0:transport=raw,ifname=eth0", "vec0:transport", "reaches the host"),
        ("iomem=x,/etc/shadow", "iomem", "maps a host file"),
        ("initrd=/etc/shadow", "initrd", "reads a host file"),
        ("dtb=/etc/shadow", "dtb", "reads a host file"),
        ("xterm=/bin/sh,-T,-e", "xterm", "host program"),
        ("virtio_uml.device=/tmp/s:1", "virtio_uml.device", "host socket"),
        ("time-travel=ext:1:/tmp/s", "time-travel", "host socket"),
        ("root=/dev/ubdb", "root", "ubd0"),
        ("ro", "ro", "read-write"),
        ("nosysemu", "nosysemu", "seccomp"),
        ("pty.legacy_count=256", "pty.legacy_count", "warden sets it"),
        ("--showconfig", "--showconfig", "print and exit"),
        ("--", "--", "init"),
    ],
)
def test_kernel_args_that_reach_the_host_or_override_warden_are_refused(
    arg: str, key: str, why: str
) -> None:
    msg = error(machine(kernel_args=f"quiet {arg}"))
    assert f"f.toml: machine 'm1': kernel_args = 'quiet {arg}': {key!r} is not allowed" in msg
    assert why in msg


def test_every_refused_kernel_arg_is_named() -> None:
    msg = error(machine(kernel_args="ubd1=/etc/shadow loglevel=3 hostfs=/"))
    assert "'ubd1' is not allowed" in msg and "'hostfs' is not allowed" in msg
    assert "loglevel" not in msg.split("kernel_args = ")[1].split(": ", 1)[1]


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ("'quiet ubd1=/etc/shadow'", "without blanks"),  # one argv word, two parameters
        ('foo=\\"a', "double quotes"),
        ("'unbalanced", "cannot be split"),
        ("x" * 1100, "at most 1024"),
    ],
)
def test_kernel_args_the_kernel_would_split_differently_are_refused(args: str, what: str) -> None:
    text = machine().rstrip("\n") + "\nkernel_args = '''" + args + "'''\n"
    assert what in error(text)


def test_init_is_refused_when_the_jail_or_tty_log_relies_on_it() -> None:
    msg = error(machine(kernel_args="init=/bin/sh"))
    assert "kernel_args: 'init' is not allowed with jail = true" in msg
    ok = fleet.parse(HEAD + machine(kernel_args="init=/bin/sh", jail=False), "f.toml")
    assert ok.machines[0].kernel_args == "init=/bin/sh"


def test_harmless_kernel_args_are_kept() -> None:
    f = fleet.parse(HEAD + machine(kernel_args="quiet loglevel=3 panic=5 rootwait"), "f.toml")
    assert f.machines[0].kernel_args == "quiet loglevel=3 panic=5 rootwait"


# ---- warden's own arguments win on the command line ---------------------------------------
def _plan(kernel_args: str) -> cmdline.BootPlan:
    return cmdline.BootPlan(
        memory=64 << 20,
        cow=Path("/d/cow"),
        base=Path("/d/base"),
        umid="m1",
        uml_dir=Path("."),
        lines=(cmdline.LineFds("con0", 3, 4),),
        seed=Path("/d/seed"),
        notify=Path("notify"),
        kernel_args=kernel_args,
    )


def test_warden_arguments_win_whatever_reached_the_daemon() -> None:
    """A fleet stored before these checks (or a bug) cannot put a second ubd0, umid or mem on
    the command line: UML keeps the first umid= and ubdN= and the last mem=, so only leaving
    them out makes warden's win."""
    argv = cmdline.argv(
        Path("/k/linux"), _plan("ubd0=/etc/shadow umid=x mem=4G hostfs=/ quiet init=/bin/sh")
    )
    keys = [a.split("=", 1)[0] for a in argv[1:]]
    for key in ("ubd0", "umid", "mem", "uml_dir", "mconsole", "con0", "root"):
        assert keys.count(key) == 1, (key, argv)
    assert "hostfs=/" not in argv and "/etc/shadow" not in " ".join(argv)
    assert "quiet" in argv
    # init= is the fleet file's decision (refused with a jail); when allowed it comes last
    assert argv[-1] == "init=/bin/sh" and "init=/sbin/init" in argv
    assert cmdline.argv(Path("/k/linux"), _plan("'a b'")) == cmdline.argv(
        Path("/k/linux"), _plan("")
    )

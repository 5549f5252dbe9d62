"""Issue 18: the concentrator limits failed logins, checks passwords on its own small executor,
closes connections whose key left the fleet, and filters what a spy's terminal gets.

The limiter is sans-io (tested with made-up clocks); the rest with OpenSSH's real `ssh`
against a real daemon (tests/support/ssh_client.py), guests booted only where output is needed.
"""

import asyncio
import subprocess
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import machine_toml
from tests.console.test_concentrator import Env, env, shell_ready, wait_running  # noqa: F401
from tests.support.ssh_client import SshUser
from warden.console import access, authlimit
from warden.spec import fleet
from warden.tasks import spawn

# ---- the limiter, sans-io -------------------------------------------------------------------


def test_a_source_is_blocked_after_its_failures_and_others_are_not() -> None:
    lim = authlimit.SourceLimiter(failures=10, window=60, block=60)
    for i in range(9):
        assert not lim.failed("10.0.0.1", 100 + i)
        assert lim.blocked("10.0.0.1", 100 + i) == 0
    assert lim.failed("10.0.0.1", 109)  # the 10th starts the block
    assert lim.blocked("10.0.0.1", 110) == pytest.approx(59)
    assert lim.blocked("10.0.0.2", 110) == 0  # another address is not affected
    assert lim.blocked("10.0.0.1", 169.5) == 0  # the block ends
    # Failures older than the window are forgotten: 9 spread over 10 minutes never block.
    lim2 = authlimit.SourceLimiter(failures=10, window=60, block=60)
    assert not any(lim2.failed("h", t * 70.0) for t in range(50))


def test_failed_passwords_are_answered_ever_later() -> None:
    lim = authlimit.SourceLimiter(failures=10, window=60, block=60)
    assert lim.delay("h", 0) == 0
    delays = []
    for i in range(9):
        lim.failed("h", i)
        delays.append(lim.delay("h", i))
    assert delays[:5] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert delays[5:] == [authlimit.MAX_DELAY] * 4
    assert lim.delay("other", 9) == 0


def test_memory_is_bounded_across_many_sources() -> None:
    lim = authlimit.SourceLimiter(failures=3, window=60, block=60, max_sources=1000)
    for i in range(100_000):
        lim.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i / 1000)
    assert len(lim) == 1000
    for _ in range(50):
        lim.failed("198.51.100.7", 200.0)
    assert len(lim._sources["198.51.100.7"].failures) <= 3  # noqa: SLF001


def test_source_keys() -> None:
    assert authlimit.source_key("192.0.2.1") == "192.0.2.1"
    assert authlimit.source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert authlimit.source_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert authlimit.source_key("2001:db8:1:2::99") == "2001:db8:1:2::/64"
    assert authlimit.source_key("fe80::1%eth0") == "fe80::/64"


def test_raw_option_of_an_attach() -> None:
    assert access.parse_command("web1 --spy --raw") == access.Attach("web1", "con0", True, raw=True)
    assert access.parse_command("web1 --spy").raw is False  # type: ignore[union-attr]


# ---- crypt() on an executor of its own ------------------------------------------------------


def test_a_password_flood_queues_on_its_own_executor_and_is_bounded() -> None:
    """Many concurrent password checks: at most CRYPT_QUEUE wait for crypt, the rest are
    refused at once, all run on the concentrator's thread, and the event loop's default
    executor (shared with everything else in the daemon) stays free meanwhile."""
    with warnings.catch_warnings():  # asyncssh names DSA types; cryptography deprecates DSA
        warnings.simplefilter("ignore")
        from warden.console.authlimit import CRYPT_QUEUE
        from warden.console.concentrator import Concentrator

    f = fleet.parse('[[owner]]\nname = "carol"\npassword_hash = "$6$saltsalt$' + "a" * 86 + '"\n')
    conc = Concentrator(SimpleNamespace(fleet=f))  # type: ignore[arg-type]
    threads: list[str] = []
    release = threading.Event()

    def slow_ok(stored: str, password: str) -> bool:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return False

    conc.crypt.verify = slow_ok

    async def flood() -> tuple[list[tuple[bool, str]], float]:
        loop = asyncio.get_running_loop()
        checks = [spawn(conc.check_password("carol", "x"), "check") for _ in range(50)]
        await asyncio.sleep(0.05)
        refused_at_once = [c for c in checks if c.done()]
        t0 = time.monotonic()
        assert await loop.run_in_executor(None, lambda: 42) == 42
        shared = time.monotonic() - t0
        assert len(refused_at_once) == 50 - CRYPT_QUEUE
        release.set()
        return list(await asyncio.gather(*checks)), shared

    try:
        results, shared = asyncio.run(flood())
    finally:
        release.set()
        conc.crypt.close(wait=True)
    assert all(ok is False for ok, _ in results)
    assert len(threads) == CRYPT_QUEUE and set(threads) == {"warden-crypt_0"}
    assert shared < 1.0  # the shared executor answered while crypt was busy


def test_a_spys_filter_has_a_cpu_budget_per_second() -> None:
    from warden.console.screen import CpuBudget

    b = CpuBudget(0.2)
    assert b.allow(10.0)
    b.spend(0.15)
    assert b.allow(10.5)
    b.spend(0.1)
    assert not b.allow(10.9)  # 0.25 s spent within this second
    assert b.allow(11.0)  # a new second


# ---- with OpenSSH's ssh -----------------------------------------------------------------------


def carol_fleet(e: Env, password: str, *machines: str) -> None:
    from passlib.hash import sha512_crypt

    pw_hash = sha512_crypt.using(rounds=5000).hash(password)
    carol = f'\n[[owner]]\nname = "carol"\npassword_hash = "{pw_hash}"\n'
    e.apply(*machines, extra=carol)


def password_login(
    e: Env, tmp_path: Path, password: str, prompts: int, bind: str = "127.0.0.1"
) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """ssh as carol from `bind`: the result and how many times ssh asked for the password."""
    carol = SshUser(tmp_path, "carol", key=False)
    extra = ("-o", f"BindAddress={bind}")
    return carol.password_login(
        e.port, password, "list", prompts=prompts, extra=extra, log_level="INFO"
    )


@pytest.mark.guest
def test_the_seventh_wrong_password_on_a_connection_is_not_taken(env: Env, tmp_path: Path) -> None:  # noqa: F811
    carol_fleet(env, "correct horse", machine_toml("web1", "carol", autostart=False))
    r, asked = password_login(env, tmp_path, "wrong horse", prompts=10)
    assert r.returncode == 255
    assert asked == 6, (asked, r.stderr)  # ssh would have asked 10 times
    assert b"too many authentication failures (6)" in r.stderr, r.stderr
    ok, _ = password_login(env, tmp_path, "correct horse", prompts=1)
    assert ok.returncode == 0 and b"web1" in ok.stdout, ok.stderr


@pytest.mark.guest
def test_a_guessing_address_is_slowed_then_refused_another_still_logs_in(
    env: Env,  # noqa: F811
    tmp_path: Path,
) -> None:
    carol_fleet(env, "correct horse", machine_toml("web1", "alice", autostart=False))
    t0 = time.monotonic()
    first, asked1 = password_login(env, tmp_path, "guess", prompts=10)
    second, asked2 = password_login(env, tmp_path, "guess", prompts=10)
    took = time.monotonic() - t0
    print(f"ten wrong passwords over two connections took {took:.1f}s")
    assert (asked1, asked2) == (6, 4), (first.stderr, second.stderr)
    assert b"too many failed logins from your address" in second.stderr, second.stderr
    # Slowed: each wrong password waited 0.1, 0.2, 0.4 ... 2 s (about 12 s for these ten).
    assert took > 8, took
    # Refused: even the right key from 127.0.0.1, before key exchange ...
    blocked = env.alice.run(env.port, "list")
    assert blocked.returncode == 255 and b"web1" not in blocked.stdout, blocked.stderr
    # ... while another address logs in.
    other = env.alice.run(env.port, "list", extra=("-o", "BindAddress=127.0.0.2"))
    assert other.returncode == 0 and b"web1" in other.stdout, other.stderr
    events = [x for x in env.d.cli("events").stdout.splitlines() if "ssh-source-blocked" in x]
    assert len(events) == 1, events
    for field in ("source=127.0.0.1", "failures=10", "seconds=60.0"):
        assert field in events[0], events


@pytest.mark.guest
def test_a_session_whose_key_is_removed_is_closed(env: Env, tmp_path: Path) -> None:  # noqa: F811
    env.apply(
        machine_toml("web1", "alice", autostart=False),
        machine_toml("db1", "bob", autostart=False),
    )
    alice = env.session(env.alice, "web1", "--spy")
    bob = env.session(env.bob, "db1", "--spy")
    alice.expect("attached to web1 con0 as a spy", stream="err")
    bob.expect("attached to db1 con0 as a spy", stream="err")
    (tmp_path / "new").mkdir()
    new_key = SshUser(tmp_path / "new", "alice")
    text = env.fleet(
        machine_toml("web1", "alice", autostart=False), machine_toml("db1", "bob", autostart=False)
    ).replace(env.alice.public, new_key.public)
    env.d.apply(text)  # the daemon closes the connection before `apply` returns
    t0 = time.monotonic()
    rc = alice.wait(10)
    closed_after = time.monotonic() - t0
    print(f"the ssh client ended {closed_after:.3f}s after `warden apply` returned")
    assert closed_after < 2, closed_after
    assert rc != 0
    assert b"the key alice logged in with was removed" in alice.err, alice.err
    assert bob.proc.poll() is None  # bob's key is still there: his session goes on
    assert env.alice.run(env.port, "list").returncode == 255
    assert new_key.run(env.port, "list").returncode == 0


HOSTILE_PRINTF = (
    r"printf '\033]52;c;cHduZWQ=\007\033[6n\033P$qm\033\\\033[1;31m%s\033[0m\n' hi-$((6*7))"
    "\n"
)
RAW = b"\x1b]52;c;cHduZWQ=\x07\x1b[6n\x1bP$qm\x1b\\"


def assert_filtered(out: bytes) -> None:
    assert b"\x1b]" not in out and b"\x1b[6n" not in out and b"\x1bP" not in out, out[-400:]


@pytest.mark.guest
def test_only_the_writer_on_a_pty_gets_terminal_queries(env: Env) -> None:  # noqa: F811
    """A spy is filtered, and so is a writer without a PTY (`ssh -T ... web1 < script`: no
    terminal answers, its output lands in a file someone cats later); the writer on a PTY
    (`ssh -t`) and anyone asking `--raw` get the guest's bytes."""
    env.apply(machine_toml("web1", "alice"))
    wait_running(env.d, "web1")
    script = env.session(env.alice, "web1")  # ssh -T: the writer, without a PTY
    script.expect("as the writer", stream="err")
    shell_ready(script)
    spy = env.session(env.alice, "web1", "--spy")
    spy.expect("as a spy", stream="err")
    raw = env.session(env.alice, "web1", "--spy", "--raw")
    raw.expect("as a spy", stream="err")
    script.send(HOSTILE_PRINTF)
    for s in (script, spy, raw):
        s.expect(r"\x1b\[1;31mhi-42\x1b\[0m")
    assert RAW in raw.out
    assert_filtered(script.out)
    assert_filtered(spy.out)
    for s in (script, spy, raw):
        s.close_input()
        assert s.wait() == 0
    # The writer on a PTY, then a script asking --raw: both get the guest's bytes.
    for args, tty in ((("web1",), True), (("web1", "--raw"), False)):
        w = env.session(env.alice, *args, tty=tty)
        w.expect("as the writer", stream="err")
        shell_ready(w)
        w.send(HOSTILE_PRINTF)
        w.expect(r"\x1b\[1;31mhi-42\x1b\[0m")
        assert RAW in w.out, (args, w.out[-400:])
        w.close_input()
        w.wait()

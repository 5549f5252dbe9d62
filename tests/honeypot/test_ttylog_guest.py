"""The tty log of real guests on the honeypot kernel: console and pty sessions, execs, a host
that cannot keep up or goes away, and a guest that cannot tell it is logged."""

import asyncio
import fcntl
import os
import time
from pathlib import Path

import pytest

from tests.support.honeypot import LogCapture, honeypot_kernel
from tests.support.rawboot import RawGuest
from warden.paths import Layout
from warden.sessionlog import ttylog
from warden.sessionlog.ttylog import Close, Data, Direction, Drop, Exec, Open, Resize
from warden.uml import mconsole

pytestmark = [pytest.mark.guest, pytest.mark.slow]


@pytest.fixture(scope="module")
def kernel() -> Path:
    return honeypot_kernel()


def ttylog_stats(g: RawGuest, tmp_path: Path) -> ttylog.KernelStats:
    target = g.uml_dir / g.name / "mconsole"
    with mconsole.Client(target, tmp_path / "mc-reply") as client:
        return ttylog.parse_stats(client.request("ttylog"))


def test_console_commands_output_and_execs_are_logged(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    cap = LogCapture()
    t0 = time.time_ns()
    with RawGuest(
        home,
        minimal_image,
        tmp_path / "d.cow",
        kernel_path=kernel,
        extra=(cap.kernel_arg,),
        pass_fds=(cap.write_fd,),
    ) as g:
        cap.kernel_started()
        g.wait_prompt()
        assert g.run("echo typed-$((6*7))") == "typed-42\n"
        assert g.run("/bin/busybox head -c 5 /etc/passwd") == "root:"
        g.run("stty rows 40 cols 100")
        kernel_pid = g.pid
        stats = ttylog_stats(g, tmp_path)
    cap.close()
    t1 = time.time_ns()
    d, records = cap.records()
    d.close()  # the log ends at a record boundary

    assert d.header is not None and d.header.host_pid == kernel_pid
    assert t0 <= d.header.start_ns <= t1
    assert all(t0 <= r.time_ns <= t1 for r in records)
    assert (d.missing, d.reported_lost) == (0, 0)
    assert stats.state == "on" and stats.lost_records == 0 and stats.records > 0

    console = next(o for o in ttylog.ttys(records).values() if o.name == "tty0")
    streams = ttylog.streams(records)
    assert b"echo typed-$((6*7))" in streams[(console.tty, Direction.READ)]
    assert b"typed-42" in streams[(console.tty, Direction.WRITE)]
    assert b"root:" in streams[(console.tty, Direction.WRITE)]
    execs = [r for r in records if isinstance(r, Exec)]
    head = [e for e in execs if e.argv == (b"/bin/busybox", b"head", b"-c", b"5", b"/etc/passwd")]
    assert len(head) == 1 and head[0].tty == console.tty and head[0].uid == 0
    assert head[0].filename == b"/bin/busybox"
    assert any(e.argv[:1] == (b"/bin/sh",) and e.pid == 1 and e.tty == 0 for e in execs)
    sizes = [(r.rows, r.cols) for r in records if isinstance(r, Resize) and r.tty == console.tty]
    assert sizes[-1] == (40, 100)


def test_a_pty_session_inside_the_guest_is_logged_on_both_ends(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    """telnetd gives a shell on a pty, as sshd does; the telnet client drives it."""
    cap = LogCapture()
    with RawGuest(
        home,
        minimal_image,
        tmp_path / "d.cow",
        kernel_path=kernel,
        extra=(cap.kernel_arg,),
        pass_fds=(cap.write_fd,),
    ) as g:
        cap.kernel_started()
        g.wait_prompt()
        g.run("telnetd -p 2323 -l /bin/sh")
        g.send(b"telnet 127.0.0.1 2323\n")
        g.expect(b"Connected to 127.0.0.1")
        g.wait_prompt()
        g.send(b"echo pty-$((6*7))\n")
        g.expect(b"pty-42\r\n")
        g.send(b"/bin/busybox head -c 5 /etc/passwd; echo\n")
        g.expect(b"root:")
        g.send(b"exit\n")
        g.expect(b"Connection closed")
        g.wait_prompt()
        g.run("echo back")
    cap.close()
    _, records = cap.records()

    opened = ttylog.ttys(records)
    master = next(o for o in opened.values() if o.is_pty_master)
    slave = next(o for o in opened.values() if o.is_pty_slave)
    assert (master.name, slave.name) == ("ptm0", "pts0")
    assert (master.link, slave.link) == (slave.tty, master.tty)
    streams = ttylog.streams(records)
    # keystrokes as sshd-like telnetd wrote them to the master, and as the shell read them
    assert b"echo pty-$((6*7))" in streams[(master.tty, Direction.WRITE)]
    assert b"echo pty-$((6*7))\n" in streams[(slave.tty, Direction.READ)]
    # the shell's output on the slave, and as telnetd read it from the master
    assert b"pty-42\n" in streams[(slave.tty, Direction.WRITE)]
    assert b"pty-42\r\n" in streams[(master.tty, Direction.READ)]
    execs = [r for r in records if isinstance(r, Exec) and r.tty == slave.tty]
    assert (b"/bin/sh",) in [e.argv for e in execs]
    assert (b"/bin/busybox", b"head", b"-c", b"5", b"/etc/passwd") in [e.argv for e in execs]
    closed = {r.tty for r in records if isinstance(r, Close)}
    assert {master.tty, slave.tty} <= closed
    # every record naming a tty comes after that tty's OPEN
    first_open = {o.tty: o.seq for o in opened.values()}
    for r in records:
        if isinstance(r, Data | Exec | Resize | Close) and r.tty:
            assert r.seq > first_open[r.tty]


def test_a_full_pipe_drops_records_and_never_stops_the_guest(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    cap = LogCapture(pipe_size=4096)
    with RawGuest(
        home,
        minimal_image,
        tmp_path / "d.cow",
        kernel_path=kernel,
        extra=(cap.kernel_arg,),
        pass_fds=(cap.write_fd,),
    ) as g:
        cap.kernel_started()
        g.wait_prompt()
        # the host stops reading: 350 KB of output overflow the 4 KiB pipe, the reader
        # thread's last 64 KiB read and the kernel's 64 KiB buffer
        cap.pause()
        out = g.run("seq 1 60000")
        assert out.endswith("59999\n60000\n")  # the guest went on, whatever the log lost
        during = ttylog_stats(g, tmp_path)
        # The host drains again, with room: in a 4 KiB pipe the kernel's next batch (up to
        # 64 KiB, the drop record first) would itself be cut short and "after-2" lost with it.
        fcntl.fcntl(cap.read_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        cap.resume()
        g.run("echo after-$((1+1))")
        # The kernel batches records (flushed by a timer): wait for the batch holding the
        # drop record and what followed it, or a guest killed now would take it along.
        deadline = time.monotonic() + 15
        while b"after-2" not in cap.data and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = ttylog_stats(g, tmp_path)
    cap.close()
    d, records = cap.records()
    d.close()

    assert during.state == "on" and during.lost_records > 0
    drops = [r for r in records if isinstance(r, Drop)]
    assert drops and sum(r.lost_records for r in drops) == d.reported_lost > 0
    assert d.missing == d.reported_lost  # every gap in the sequence is accounted for
    assert sum(r.lost_records for r in drops) == stats.lost_records
    console = next(o for o in ttylog.ttys(records).values() if o.name == "tty0")
    written = ttylog.streams(records)[(console.tty, Direction.WRITE)]
    assert b"after-2" in written
    assert written.count(b"\n") < out.count("\n")  # some of seq's output was lost


def test_the_host_closing_the_log_stops_logging_and_the_guest_runs_on(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    with RawGuest(
        home,
        minimal_image,
        tmp_path / "d.cow",
        kernel_path=kernel,
        extra=(f"tty_log_fd={w}",),
        pass_fds=(w,),
    ) as g:
        os.close(w)
        g.wait_prompt()
        assert os.read(r, 8) == ttylog.MAGIC
        os.close(r)  # the host side goes away
        assert g.run("echo still-alive-$((2+3))") == "still-alive-5\n"
        assert g.run("echo and-again") == "and-again\n"
        stats = ttylog_stats(g, tmp_path)
    assert stats.stopped_errno == 32  # EPIPE
    assert stats.lost_records > 0 and stats.lost_bytes > 0
    host_log = g.log.read_text(errors="replace")
    assert f"tty_log: host fd {w}: write failed (errno 32): logging stopped after" in host_log


def test_a_bad_log_fd_leaves_logging_off_and_says_so_on_the_host(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    with RawGuest(
        home, minimal_image, tmp_path / "d.cow", kernel_path=kernel, extra=("tty_log_fd=97",)
    ) as g:
        g.wait_prompt()
        assert g.run("echo fine") == "fine\n"
        stats = ttylog_stats(g, tmp_path)
    assert stats.state == "off" and stats.fd == -1
    assert "tty_log: host fd 97 is not usable (errno 9)" in g.log.read_text(errors="replace")


SEEN_BY_THE_GUEST = (
    "md5sum /proc/kallsyms",
    "cat /proc/cmdline",
    "cat /proc/filesystems",
    "cat /proc/mounts",
    "cat /proc/devices",
    "lsmod",
    "ls -R /sys | md5sum",
    "ls /proc | grep -v '^[0-9]'",
    "cat /proc/1/environ | tr '\\0' '\\n' | sort",
)


def test_the_guest_cannot_tell_that_logging_is_on(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    seen: dict[bool, list[str]] = {}
    for logging in (True, False):
        cap = LogCapture()  # made in both boots, so that the console's fd numbers match
        cow = tmp_path / "same.cow"
        cow.unlink(missing_ok=True)
        with RawGuest(
            home,
            minimal_image,
            cow,
            kernel_path=kernel,
            name="invisible",
            extra=(cap.kernel_arg,) if logging else (),
            pass_fds=(cap.write_fd,) if logging else (),
        ) as g:
            cap.kernel_started()
            g.wait_prompt()
            seen[logging] = [g.run(c) for c in SEEN_BY_THE_GUEST]
        cap.close()
        if logging:
            _, records = cap.records()
            assert any(isinstance(r, Open) for r in records)  # it really was logging
    for command, on, off in zip(SEEN_BY_THE_GUEST, seen[True], seen[False], strict=True):
        assert on == off, command
    assert "tty_log" not in seen[True][1]


def test_the_library_pipe_reads_a_live_guest_in_asyncio(
    kernel: Path, minimal_image: Path, home: Layout, tmp_path: Path
) -> None:
    """TtyLogPipe, as the daemon uses it: records arrive while the guest runs."""

    async def main() -> list[ttylog.Record]:
        got: list[ttylog.Record] = []
        pipe = ttylog.TtyLogPipe(raw=tmp_path / "raw.log", on_record=got.append)
        async with pipe:
            assert pipe.kernel_fd is not None
            with RawGuest(
                home,
                minimal_image,
                tmp_path / "d.cow",
                kernel_path=kernel,
                extra=(pipe.kernel_arg,),
                pass_fds=(pipe.kernel_fd,),
            ) as g:
                pipe.kernel_started()
                await asyncio.to_thread(g.wait_prompt)
                await asyncio.to_thread(g.run, "echo live-$((3*3))")
                for _ in range(50):  # the records come in through the event loop
                    if b"live-9" in b"".join(r.data for r in got if isinstance(r, Data)):
                        break
                    await asyncio.sleep(0.1)
            await asyncio.wait_for(pipe.eof.wait(), 10)
        assert pipe.error is None
        return got

    got = asyncio.run(main())
    assert b"live-9" in b"".join(r.data for r in got if isinstance(r, Data))
    assert list(ttylog.read_file(tmp_path / "raw.log")) == got

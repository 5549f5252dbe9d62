"""Issue 18, guest-free: text a guest controls reaches an operator's terminal escaped.

First warden.termsafe itself (the single-line escaper and the stream filter: chunk splits,
bounded state, a seeded fuzz), then every CLI front end fed hostile data through the same seams
it uses for real (the API client's `call`, the console's websocket, session-log files on disk),
asserting that nothing raw reaches stdout or stderr. The same paths with real guests are in
tests/test_hostile_terminal_guest.py.
"""

import argparse
import asyncio
import io
import json
import os
import random
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from warden import termsafe
from warden.api.client import ApiClient
from warden.api.lineclient import LineSocket
from warden.cli import console, main
from warden.errors import WardenError
from warden.paths import Layout
from warden.sessionlog import codec as sl
from warden.sessionlog import store as logstore

# One hostile string: ESC CSI queries, OSC 52 (clipboard), a title report query, BEL, C1 CSI
# (as a character), a bare 8-bit C1 byte's replacement, CR (overwrites the line), a newline
# (forges a line), DEL, a bidi override, a zero-width space and a lone surrogate.
EVIL = (
    "ok\x1b[6n\x1b]52;c;cHduZWQ=\x07\x1b[21t\x07\x9b6n\rFORGED\nfake line\x7f"
    "\u202eevil\u200b\ud800\x1bP$qm\x1b\\end"
)
EVIL_BYTES = (
    b"ok\x1b[6n\x1b]52;c;cHduZWQ=\x07\x1b[21t\x07\xc2\x9b6n\x9b6n\xff\x1bP$qm\x1b\\"
    b"\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\\x1b[c\x1b[>c\x1b[?1000h\x1b[?2004h\x1bZ\x05"
    b"\x1b[1;31mred\x1b[0m\x1b[2J\x1b[H\x1b[?1049h\x1b(0q\x1b(B\xe2\x98\x83end\r\n"
)


# ---- what "nothing raw" means -------------------------------------------------------------
def assert_plain(out: bytes | str) -> None:
    """Printable UTF-8 with newlines (and tabs) only: no C0, DEL, C1, bidi or zero-width."""
    text = out.decode("utf-8") if isinstance(out, bytes) else out  # strict: valid UTF-8
    bad = re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\ud800-\udfff]", text)
    assert bad is None, (bad.group(), text[max(0, bad.start() - 60) : bad.end() + 60])


def assert_safe_stream(out: bytes) -> None:
    """A terminal stream: what the filter keeps, and nothing that talks to the terminal."""
    out.decode("utf-8")
    assert termsafe.filter_bytes(out) == out  # a fixed point: only kept sequences remain
    for seq in (b"\x1b]", b"\x1bP", b"\x1b_", b"\x1b^", b"\x1bX", b"\x1b[6n", b"\x1b[c", b"\x05"):
        assert seq not in out, seq
    assert re.search(rb"[\x80-\x9f]", out.decode().encode("latin-1", "replace")) is None


# ---- termsafe.line / text -----------------------------------------------------------------
def test_line_escapes_every_control_visibly_and_unambiguously() -> None:
    assert termsafe.line("plain café ☃") == "plain café ☃"
    out = termsafe.line(EVIL)
    assert_plain(out)
    assert "\n" not in out
    assert out.startswith("ok\\x1b[6n\\x1b]52;c;cHduZWQ=\\x07\\x1b[21t\\x07\\x9b6n\\rFORGED\\n")
    assert "\\x7f\\u202eevil\\u200b\\ud800\\x1bP$qm\\x1b\\\\end" in out
    # A guest that writes the text of an escape cannot pass for a real one.
    assert termsafe.line("\\x1b") == "\\\\x1b" != termsafe.line("\x1b")
    assert termsafe.line(b"bad \xff\xc2\x9b utf8 \xe2\x98\x83") == "bad \\xff\\x9b utf8 ☃"
    assert termsafe.line("\U000e0041tag") == "\\U000e0041tag"  # invisible tag characters
    assert termsafe.line(12) == "12"


def test_text_keeps_newlines_and_tabs_only() -> None:
    assert termsafe.text("a\n\tb") == "a\n\tb"
    out = termsafe.text(EVIL)
    assert_plain(out)
    assert "\\rFORGED\nfake line\\x7f" in out


def test_log_formatter_escapes_records() -> None:
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(termsafe.Formatter("%(message)s"))
    log = logging.getLogger("warden.test.termsafe")
    log.addHandler(handler)
    # Not to pytest's own capture too: it keeps the raw record, whose lone surrogate a
    # pytest-xdist worker cannot send to the controller (UnicodeEncodeError).
    log.propagate = False
    try:
        log.warning("guest said %s", EVIL)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert_plain(stream.getvalue())


# ---- TerminalFilter -------------------------------------------------------------------------
CASES = [
    (b"hi\x1b[6n there", b"hi there"),  # DSR/CPR query
    (b"\x1b]52;c;SGVsbG8=\x07ok", b"ok"),  # OSC 52 (clipboard), BEL-terminated
    (b"\x1b]0;title\x1b\\ok", b"ok"),  # OSC, ST-terminated
    (b"\x1bP$qm\x1b\\ok", b"ok"),  # DECRQSS (DCS)
    (b"\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\ok", b"ok"),  # APC, PM, SOS
    (b"\x1b[c\x1b[>c\x1b[=c\x1b[>q\x1b[?6n\x1b[5n\x1b[x\x1bZ\x05ok", b"ok"),  # DA, DSR, ENQ...
    (b"\x1b[21t\x1b[14t\x1b[8;100;100t\x1b[?2026$p\x1b[?u\x1b[>1u\x1b[>4;1mok", b"ok"),
    (b"\x1b[?1000h\x1b[?1006h\x1b[?1004h\x1b[?2004h\x1b[?1h\x1b[?3hok", b"ok"),  # input modes
    (b'\x1b G\x1b%G\x1b[62;0"pok', b"ok"),  # 8-bit controls, charset switches
    # C1 controls (as UTF-8) are dropped; what followed them shows as text, harmlessly
    (b"\xc2\x9b6n\xc2\x9d52;c;x\x07\xc2\x90$qm\xc2\x9cok", b"6n52;c;x\x07$qmok"),
    (b"\x9b6n", "\ufffd6n".encode()),  # a bare 8-bit C1 byte: not UTF-8, shown as U+FFFD
    (b"\xff\xc0\xaf\xed\xa0\x80", ("\ufffd" * 6).encode()),  # invalid, overlong, surrogate
    (
        b"\x1b[1;31mred\x1b[0m \x1b[38;2;1;2;3mx\x1b[m",
        b"\x1b[1;31mred\x1b[0m \x1b[38;2;1;2;3mx\x1b[m",
    ),
    (b"\x1b[2J\x1b[H\x1b[10;5H\x1b[K\x1b[3A\x1b[r\x1b[1;20r", None),  # kept as they are
    (b"\x1b[?1049h\x1b[?25l\x1b[?25h\x1b[?1049l\x1b[?7h", None),  # alt screen, cursor
    (b"\x1b(0lqk\x1b(B\x1b7\x1b8\x1bM\x1bc\x1b#8\x1b[4h\x1b[4l\x1b[2 q", None),
    ("é☃\U0001f600 tab\there\r\n".encode(), None),  # UTF-8 text and layout controls
    (b"a\x1b[6\x18b\x1b]0;x\x1ac", b"abc"),  # CAN and SUB abort sequences
    (b"a\x1b[1\nb", b"a\nb"),  # a C0 control inside a sequence abandons it
    (b"a\x1b\x1b[31mb", b"a\x1b[31mb"),  # ESC restarts a sequence
    (b"\x1b]0;x\x1b[31mred", b"\x1b[31mred"),  # ESC (not ST) ends an OSC and starts anew
]


@pytest.mark.parametrize("data,expected", CASES)
def test_filter_cases(data: bytes, expected: bytes | None) -> None:
    out = termsafe.filter_bytes(data)
    assert out == (data if expected is None else expected)
    assert_safe_stream(out)


def test_filter_is_the_same_whatever_the_chunking() -> None:
    whole = termsafe.filter_bytes(EVIL_BYTES)
    for cut in range(len(EVIL_BYTES) + 1):
        f = termsafe.TerminalFilter()
        assert f.feed(EVIL_BYTES[:cut]) + f.feed(EVIL_BYTES[cut:]) + f.end() == whole, cut
    f = termsafe.TerminalFilter()
    assert b"".join(f.feed(bytes([b])) for b in EVIL_BYTES) + f.end() == whole
    # The lone BEL stays (it only rings); U+009B goes; 0x9b and 0xff are not UTF-8.
    assert whole == (
        b"ok\x076n\xef\xbf\xbd6n\xef\xbf\xbd\x1b[1;31mred\x1b[0m\x1b[2J\x1b[H\x1b[?1049h\x1b(0q\x1b(B"
        b"\xe2\x98\x83end\r\n"
    )


def test_filter_state_is_bounded() -> None:
    f = termsafe.TerminalFilter()
    assert f.feed(b"\x1b]52;c;") == b"" and f.feed(b"A" * 4000) == b""
    # An OSC that never ends: its payload is skipped, never held, and after MAX_STRING bytes
    # the filter stops hiding what follows (the terminal never saw the OSC start).
    shown = f.feed(b"A" * 64000)
    assert shown == b"A" * (64000 + 4000 + len(b"52;c;") - termsafe.MAX_STRING)
    assert len(f.seq) == 0 and f.feed(b"visible") == b"visible"
    g = termsafe.TerminalFilter()
    # A CSI longer than MAX_SEQUENCE is dropped; the rest of it shows as text.
    shown = g.feed(b"\x1b[" + b"1;" * 10000)
    assert shown == (b"1;" * 10000)[termsafe.MAX_SEQUENCE - 1 :] and len(g.seq) == 0
    assert g.feed(b"m after") == b"m after"
    h = termsafe.TerminalFilter()
    assert h.feed(b"\x1b]0;" + b"x" * (termsafe.MAX_STRING - 10) + b"\x07ok") == b"ok"
    assert h.feed(b"\xe2\x98") == b"" and h.end() == "\ufffd".encode()


def test_filter_fuzz_keeps_its_promises() -> None:
    rng = random.Random(18)
    alphabet = (
        b"\x1b\x07\x18\x1a\x00\x05\x7f\x0e\x9b\x9c\xc2\xc3\xa9\xff\x90\x9d"
        b'[]P_^X\\;:?>=0123456789mhlncqtuHJ $"!(#a\xe2\x98\x83\n\r'
    )
    for _ in range(1000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 300)))
        whole = termsafe.filter_bytes(data)
        assert_safe_stream(whole)
        f = termsafe.TerminalFilter()
        cuts = sorted(rng.sample(range(len(data) + 1), min(4, len(data) + 1)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert b"".join(f.feed(p) for p in parts) + f.end() == whole
        # one byte at a time: every sequence through the state machine, none on the fast path
        g = termsafe.TerminalFilter()
        assert b"".join(g.feed(data[k : k + 1]) for k in range(len(data))) + g.end() == whole


# ---- the CLI front ends, with a hostile daemon ------------------------------------------
def hostile(value: object) -> object:
    """`value` with every string replaced by one that carries EVIL."""
    if isinstance(value, str):
        return value + EVIL
    if isinstance(value, dict):
        return {k: hostile(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hostile(v) for v in value]
    return value


MACHINE = {
    "name": "web1",
    "owner": "alice",
    "state": "crashed",
    "memory": 64 << 20,
    "uptime": None,
    "pid": None,
    "last_exit": {"reason": "kernel panic: Attempted to kill init!", "status": 1},
}
JAIL = {
    "name": "web1",
    "state": "running",
    "jail": True,
    "jail_state": "empty",
    "uid": 100000,
    "cgroup": {"path": "/sys/fs/cgroup/x", "limits": {"memory": "64M"}},
    "kernel_pid": 42,
    "summary": {
        "processes": 1,
        "uids": [100000],
        "capabilities": 0,
        "no_new_privs": True,
        "seccomp": ["filter"],
    },
    "namespaces": {"mnt": {"separate": True, "guest": "mnt:[1]"}},
    "root": {"host_root": False, "entries": ["tmp"]},
    "cwd": {"path": "/", "entries": ["x"]},
    "mounts": ["tmpfs / tmpfs"],
    "processes": [
        {
            "pid": 42,
            "name": "linux",
            "uid": 100000,
            "gid": 100000,
            "groups": [],
            "no_new_privs": True,
            "seccomp": 2,
            "capabilities": {"CapEff": "0"},
            "capability_count": 0,
            "fds": [{"fd": 0, "target": "/dev/null", "host_file": "x"}],
        }
    ],
}
NET = {
    "netns": "warden",
    "netns_created": True,
    "error": "dnsmasq said",
    "br_netfilter": True,
    "networks": [
        {
            "name": "lan",
            "subnet": "10.0.0.0/24",
            "gateway": "10.0.0.1",
            "nat": True,
            "bridge": "wbr0",
            "up": True,
            "dnsmasq": "running",
        }
    ],
    "guests": [
        {
            "name": "web1",
            "cut": True,
            "capture": True,
            "forwards": ["tcp:2222:22"],
            "egress": "deny",
            "nics": [
                {
                    "nic": 0,
                    "ip": "10.0.0.5",
                    "dhcp": True,
                    "tap": "wt0",
                    "rx_bytes": 1,
                    "tx_bytes": 2,
                }
            ],
        }
    ],
}
MEMORY = {
    "budget": 1 << 30,
    "effective_budget": 1 << 30,
    "plugged": 1 << 28,
    "free": 1 << 28,
    "peak_plugged": 1 << 28,
    "host_available": 1 << 30,
    "notes": ["a note"],
    "guests": [
        {
            "name": "web1",
            "certain": True,
            "pin": None,
            "plugged": 1 << 26,
            "max": 1 << 27,
            "floor": 1 << 25,
            "weight": 100,
            "signals": ["psi"],
            "last_actions": [],
        }
    ],
}
ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "/machines"): [MACHINE],
    ("GET", "/events?since=0"): [
        {"id": 1, "ts": 0.0, "machine": "web1", "kind": "guest-notify", "text": "hi"},
        {"id": 2, "ts": 0.0, "machine": None, "kind": "ssh-login", "user": "u"},
    ],
    ("POST", "/machines/web1/mconsole"): {"reply": "MemTotal: 1 kB\nline two\n"},
    ("GET", "/status"): {"version": "1", "note": "n"},
    ("POST", "/machines/web1/start"): {"name": "web1", "state": "running"},
    ("GET", "/machines/web1/jail"): JAIL,
    ("GET", "/net"): NET,
    ("GET", "/memory"): MEMORY,
    ("POST", "/memory/web1"): {"name": "web1", "plugged": 1 << 26, "reached": True},
    ("POST", "/fleet"): {"added": ["web1"], "changed": [], "removed": [], "started": ["web1"]},
}


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch, home: Layout) -> None:
    """Every API call answers with hostile strings (keys too: they are printed)."""

    def call(self: ApiClient, method: str, path: str, body: object = None) -> Any:
        answer = ANSWERS[(method, path)]
        if isinstance(answer, dict) and path == "/status":
            return {k + EVIL: hostile(v) for k, v in answer.items()}
        return hostile(json.loads(json.dumps(answer)))

    monkeypatch.setattr(ApiClient, "call", call)


def run_cli(capfd: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, bytes]:
    """`warden ARGV` in this process; stdout and stderr as the bytes written to fds 1, 2."""
    capfd.readouterr()
    code = main.main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


COMMANDS = [
    ("ls",),
    ("events",),
    ("mconsole", "web1", "proc", "meminfo"),
    ("status",),
    ("start", "web1"),
    ("jail", "audit", "web1"),
    ("net", "ls"),
    ("top", "--once"),
    ("mem", "set", "web1", "64M"),
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_cli_listings_escape_guest_text(
    fake_daemon: None, capfdbinary: pytest.CaptureFixture[bytes], argv: tuple[str, ...]
) -> None:
    code, out, err = run_cli(capfdbinary, *argv)
    assert code == 0, err
    assert_plain(out)
    assert_plain(err)
    assert b"\\x1b]52;c;cHduZWQ=\\x07" in out  # shown, visibly, not dropped


def test_apply_report_escapes_names(
    fake_daemon: None, capfdbinary: pytest.CaptureFixture[bytes], home: Layout
) -> None:
    fleet = home.home / "fleet.toml"
    fleet.write_text('[[owner]]\nname = "alice"\n')
    code, out, _ = run_cli(capfdbinary, "apply", str(fleet))
    assert code == 0 and b"added: web1ok\\x1b[6n" in out
    assert_plain(out)


def test_mconsole_reply_keeps_its_lines(
    fake_daemon: None, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    _, out, _ = run_cli(capfdbinary, "mconsole", "web1", "proc", "meminfo")
    assert out.startswith(b"MemTotal: 1 kB\nline two\nok\\x1b[6n")


def test_error_messages_quoting_a_guest_are_escaped(
    monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes], home: Layout
) -> None:
    def call(self: ApiClient, method: str, path: str, body: object = None) -> Any:
        raise WardenError(f"web1: 'proc x' failed: {EVIL}")

    monkeypatch.setattr(ApiClient, "call", call)
    code, out, err = run_cli(capfdbinary, "mconsole", "web1", "proc", "x")
    assert code == 2 and out == b""
    assert err.startswith(b"warden: web1: 'proc x' failed: ok\\x1b[6n")
    assert_plain(err)


def test_warden_up_prints_events_escaped() -> None:
    from warden.app.run import _print_event

    out = io.StringIO()
    _print_event(hostile({"machine": "web1", "kind": "guest-notify", "text": "x"}), out)  # type: ignore[arg-type]
    assert_plain(out.getvalue())
    assert out.getvalue().startswith("web1ok\\x1b[6n")
    assert out.getvalue().count("\n") == 1  # a guest cannot forge a second event line


# ---- session logs: replay, search, dump, export -----------------------------------------
def write_log(home: Layout, records: list[tuple[int, bytes]], machine: str = "m1") -> Path:
    key = logstore.load_key(home, create=True)
    d = home.machines / machine / "logs"
    d.mkdir(parents=True)
    meta = {"key_id": sl.key_id(key), "machine": machine, "line": "con0", "boot": 1}
    data, mac = sl.encode_header(meta, key)
    for seq, (rtype, payload) in enumerate(records, 1):
        rec, mac = sl.encode_record(key, mac, rtype, seq, 1_700_000_000_000_000 + seq, payload)
        data += rec
    path = d / logstore.log_name("con0", 1)
    path.write_bytes(data)
    return path


@pytest.fixture
def hostile_log(home: Layout) -> Path:
    return write_log(
        home,
        [
            (sl.EVENT, sl.event_payload("attach", {"user": "root" + EVIL, "mode": "rw"})),
            (sl.OUTPUT, EVIL_BYTES),
            (sl.INPUT, sl.input_payload("root", b"needle\r")),
            (sl.OUTPUT, b"needle" + EVIL_BYTES),
            (sl.EVENT, sl.event_payload("detach" + EVIL, {"reason": EVIL})),
        ],
    )


def test_replay_filters_the_stream_and_escapes_its_markers(
    hostile_log: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, err = run_cli(capfdbinary, "replay", "m1", "--speed", "1000", "--events")
    assert code == 0, err
    assert_safe_stream(out)
    assert b"\x1b[1;31mred\x1b[0m" in out  # colours stay
    assert b"[warden log: attach mode=rw user=rootok\\x1b[6n\\x1b]52;" in out
    raw_code, raw, _ = run_cli(capfdbinary, "replay", "m1", "--speed", "1000", "--raw")
    assert raw_code == 0 and EVIL_BYTES in raw  # --raw: the bytes as recorded


def test_search_dump_and_exports_escape_guest_text(
    hostile_log: Path, capfdbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    code, out, _ = run_cli(capfdbinary, "logs", "search", "needle")
    assert code == 0 and b"needle" in out
    assert_plain(out)
    code, out, _ = run_cli(capfdbinary, "logs", "dump", "m1")
    assert code == 0
    assert_plain(out)
    code, out, _ = run_cli(capfdbinary, "logs", "export", "m1", "--format", "text")
    assert code == 0 and b"red" in out
    assert_plain(out)
    cast = tmp_path / "m1.cast"
    assert run_cli(capfdbinary, "logs", "export", "m1", "-o", str(cast))[0] == 0
    lines = [json.loads(x) for x in cast.read_text().splitlines()]
    markers = [e[2] for e in lines[1:] if e[1] == "m"]
    assert any("user=rootok\\x1b[6n\\x1b]52;" in m for m in markers), markers
    for m in markers:
        assert_plain(m)
    assert_plain(lines[0]["title"])


# ---- the console front end: websocket in, terminal out ----------------------------------
class FakeMessage:
    def __init__(self, kind: aiohttp.WSMsgType, data: object):
        self.type = kind
        self.data = data


class FakeWs:
    """The console's websocket as LineSocket reads it: an async iterable of messages."""

    def __init__(self, messages: list[FakeMessage]):
        self.messages = messages

    async def __aiter__(self) -> AsyncIterator[FakeMessage]:
        for m in self.messages:
            yield m


def pump(messages: list[FakeMessage], filtered: bool, quiet: bool = False) -> tuple[bytes, str]:
    r, w = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")))
    reader.start()
    try:
        reason = asyncio.run(
            console._pump_out(
                LineSocket(None, FakeWs(messages)),  # type: ignore[arg-type]
                console.Screen(w, filtered),
                quiet,
            )
        )
    finally:
        os.close(w)
        reader.join(10)
        os.close(r)
    return b"".join(chunks), reason


def test_console_spy_and_script_output_is_filtered(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    msgs = [FakeMessage(aiohttp.WSMsgType.BINARY, EVIL_BYTES[i : i + 7]) for i in range(0, 999, 7)]
    msgs.append(FakeMessage(aiohttp.WSMsgType.TEXT, json.dumps({"notice": "[warden: " + EVIL})))
    msgs.append(FakeMessage(aiohttp.WSMsgType.TEXT, json.dumps({"closed": "bye"})))
    capfdbinary.readouterr()
    out, reason = pump(msgs, filtered=True)
    assert reason == "bye" and out == termsafe.filter_bytes(EVIL_BYTES)
    assert_safe_stream(out)
    err = capfdbinary.readouterr().err
    assert b"[warden: ok\\x1b[6n" in err
    assert_plain(err.replace(b"\r", b""))
    raw, _ = pump(msgs, filtered=False, quiet=True)  # the writer's own interactive session
    assert raw == EVIL_BYTES


def test_console_writer_demoted_to_spy_is_filtered_from_then_on() -> None:
    msgs = [
        FakeMessage(aiohttp.WSMsgType.BINARY, b"\x1b]0;unfinished"),
        FakeMessage(
            aiohttp.WSMsgType.TEXT,
            json.dumps({"notice": "[warden: bob from ssh took over con0; you are a spy now]"}),
        ),
        FakeMessage(aiohttp.WSMsgType.BINARY, b"rest\x07\x1b[6n\x1b]52;c;x\x07after"),
    ]
    out, reason = pump(msgs, filtered=False, quiet=True)
    assert reason == "connection closed"
    # raw while a writer; then CAN (ends the open sequence on the terminal) and filtered
    assert out == b"\x1b]0;unfinished\x18rest\x07after"


def test_console_reads_stdin_from_devnull_and_files(tmp_path: Path) -> None:
    async def collect(fd: int) -> bytes:
        return b"".join([c async for c in console.read_input(fd)])

    with open(os.devnull, "rb") as f:
        assert asyncio.run(asyncio.wait_for(collect(f.fileno()), 10)) == b""
    p = tmp_path / "in"
    p.write_bytes(b"x" * 200_000)
    with open(p, "rb") as f:
        assert asyncio.run(asyncio.wait_for(collect(f.fileno()), 10)) == b"x" * 200_000
    r, w = os.pipe()
    os.write(w, b"piped")
    os.close(w)
    try:
        assert asyncio.run(asyncio.wait_for(collect(r), 10)) == b"piped"
        assert os.get_blocking(r)  # left as it was found
    finally:
        os.close(r)


def test_parsers_offer_raw() -> None:
    parser = main.build_parser(["console"])
    assert parser.parse_args(["console", "web1", "--raw"]).raw is True
    parser = main.build_parser(["replay"])
    args = parser.parse_args(["replay", "web1"])
    assert isinstance(args, argparse.Namespace) and args.raw is False

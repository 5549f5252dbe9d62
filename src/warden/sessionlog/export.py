"""Session logs out to other formats: asciicast v2, plain text, raw bytes.

- asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): NDJSON, a header then
  `[seconds, code, data]` events: "o" output, "i" input, "r" resize ("COLSxROWS"), "m" markers
  (attach, detach, takeover, dropped...). Players show the title and markers as labels, so
  these are escaped (warden.termsafe.line): an exec's argv in a marker is guest text.
  asciicast carries UTF-8 text only: bytes are decoded incrementally (a character split
  across records stays whole) with U+FFFD for invalid ones; `raw` is the lossless export.
- text: what was printed, with terminal control sequences removed (ECMA-48 CSI, OSC, DCS and
  other strings, two-byte escapes, C1 controls), carriage returns and backspaces applied to
  the line.
  rich's ANSI decoder was tried first: it keeps OSC payloads (window titles) and drops text
  before a CR, so this small stripper is warden's own.
- raw: the bytes of one direction, concatenated, exactly as recorded.

A tty log (line `tty`, warden.sessionlog.ttyview) exports what its terminals showed as output
and what was typed as input; `tty` picks one session (a pty pair or the console); in
asciicast, execs, opens, closes and drops are markers and window sizes are resizes.
"""

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from warden import termsafe
from warden.sessionlog import codec as sl
from warden.sessionlog.ttyview import TtyStreams

DEFAULT_SIZE = (80, 24)

# ESC [ params intermediates final | ESC ] ... (BEL | ESC \) | ESC P/X/^/_ ... ESC \ |
# ESC intermediates final (charset selection and the like) | C1 CSI (0x9b) sequences |
# C1 OSC, DCS, SOS, PM, APC strings. Any other C1 control is dropped by strip_controls.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x90\x98\x9d-\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
)


def strip_controls(text: str) -> str:
    """Plain text from terminal output (see the module docstring)."""
    text = _CONTROL.sub("", text)
    out_lines: list[str] = []
    for raw_line in text.replace("\r\n", "\n").split("\n"):
        line: list[str] = []
        col = 0
        for ch in raw_line:
            if ch == "\r":
                col = 0
            elif ch == "\b":
                col = max(0, col - 1)
            elif ch == "\t" or ch >= " " and not "\x7f" <= ch <= "\x9f":
                if col < len(line):
                    line[col] = ch
                else:
                    line.append(ch)
                col += 1
            # other C0 controls (BEL, ...), DEL and C1 controls print nothing
        out_lines.append("".join(line).rstrip())
    return "\n".join(out_lines)


def _size(records: list[sl.Record], tty: int | None = None) -> tuple[int, int]:
    streams = TtyStreams(tty)
    for r in records:
        if r.type == sl.EVENT and r.kind == "resize":
            ev = r.event
            return int(ev.get("cols", DEFAULT_SIZE[0])), int(ev.get("rows", DEFAULT_SIZE[1]))
        if r.type == sl.TTYLOG and (item := streams.feed(r.payload)) and item.resize:
            return item.resize
    return DEFAULT_SIZE


MARKED = {"attach", "detach", "takeover", "dropped", "reattach", "recovered", "boot-end"}


def _marker(ev: dict[str, Any]) -> str:
    kind = str(ev.get("kind", "?"))
    rest = " ".join(f"{k}={v}" for k, v in sorted(ev.items()) if k != "kind")
    return termsafe.line(f"{kind} {rest}".strip())


def asciicast(
    records: list[sl.Record],
    meta: dict[str, Any],
    with_input: bool = True,
    tty: int | None = None,
) -> Iterator[str]:
    """asciicast v2 lines (each ends with a newline)."""
    cols, rows = _size(records, tty)
    start_us = next((r.time_us for r in records), int(meta.get("created_us", 0)))
    header = {
        "version": 2,
        "width": cols,
        "height": rows,
        "timestamp": start_us // 1_000_000,
        "title": termsafe.line(f"{meta.get('machine')} {meta.get('line')} boot {meta.get('boot')}"),
        "env": {"TERM": "xterm-256color"},
    }
    yield json.dumps(header) + "\n"
    dec_out = codecs.getincrementaldecoder("utf-8")("replace")
    dec_in = codecs.getincrementaldecoder("utf-8")("replace")
    streams = TtyStreams(tty)
    t = 0.0
    for r in records:
        t = round((r.time_us - start_us) / 1e6, 6)
        if r.type == sl.OUTPUT:
            text = dec_out.decode(r.data)
            if text:
                yield json.dumps([t, "o", text]) + "\n"
        elif r.type == sl.INPUT and with_input:
            text = dec_in.decode(r.data)
            if text:
                yield json.dumps([t, "i", text]) + "\n"
        elif r.type == sl.EVENT:
            ev = r.event
            if r.kind == "resize":
                yield json.dumps([t, "r", f"{ev.get('cols')}x{ev.get('rows')}"]) + "\n"
            elif r.kind in MARKED:
                yield json.dumps([t, "m", _marker(ev)]) + "\n"
        elif r.type == sl.TTYLOG and (item := streams.feed(r.payload)) is not None:
            if item.switched_to:
                yield json.dumps([t, "m", termsafe.line(f"tty {item.switched_to}")]) + "\n"
            if item.screen and (text := dec_out.decode(item.screen)):
                yield json.dumps([t, "o", text]) + "\n"
            elif item.typed and with_input and (text := dec_in.decode(item.typed)):
                yield json.dumps([t, "i", text]) + "\n"
            elif item.resize:
                yield json.dumps([t, "r", f"{item.resize[0]}x{item.resize[1]}"]) + "\n"
            elif item.marker:
                yield json.dumps([t, "m", termsafe.line(item.marker)]) + "\n"
    tail = dec_out.decode(b"", final=True)
    if tail:
        yield json.dumps([t, "o", tail]) + "\n"


def raw(
    records: Iterable[sl.Record], direction: str = "out", tty: int | None = None
) -> Iterator[bytes]:
    streams = TtyStreams(tty)
    for r in records:
        if (r.type == sl.OUTPUT and direction in ("out", "both")) or (
            r.type == sl.INPUT and direction in ("in", "both")
        ):
            yield r.data
        elif r.type == sl.TTYLOG and (item := streams.feed(r.payload)) is not None:
            if item.screen and direction in ("out", "both"):
                yield item.screen
            elif item.typed and direction in ("in", "both"):
                yield item.typed


def text(records: Iterable[sl.Record], direction: str = "out", tty: int | None = None) -> str:
    data = b"".join(raw(records, direction, tty))
    return strip_controls(data.decode("utf-8", "replace"))

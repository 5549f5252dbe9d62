"""Text and byte streams from guests, made safe for an operator's terminal.

Everything a guest writes is hostile input, and a terminal is an interpreter: an escape
sequence in a guest's panic message, a USER_NOTIFY text, an mconsole reply or a session log can
set the operator's clipboard (OSC 52), retitle the window and read the title back into the
operator's shell (a report query answered onto standard input), switch the terminal to 8-bit
controls, or hide text. Two tools, used at every place warden writes guest data to a terminal:

- `line(value)` / `text(value)`: an escaped string for one field in a listing or a message.
  Every C0 and C1 control, DEL, backslash, Unicode format character (bidi overrides, zero-width
  characters, tag characters), line or paragraph separator and lone surrogate is written as a
  visible escape (`\\x1b`, `\\x9b`, `\\n`, `\\\\`, `\\u202e`); bytes that are not UTF-8 show as
  `\\xNN`. Backslash is escaped too, so the escaped text is unambiguous: a guest that writes
  the four characters `\\x1b` shows as `\\\\x1b`. `text()` keeps newlines and tabs (a multi-line
  mconsole reply, an error message), `line()` escapes them (one field, one line).
- `TerminalFilter`: a sans-io filter for a terminal *stream* (spying, replay, scripted
  consoles). It keeps what draws the screen (text, SGR colours, cursor movement, erasing,
  scrolling regions, the alternate screen, charset selection) and removes what talks to the
  terminal instead: every OSC, DCS, SOS, PM and APC string, every query (DA, DSR/CPR, DECRQM,
  DECRQSS, XTVERSION, ENQ, DECID, window reports), window operations, mouse, focus and
  keyboard modes, 8-bit control switches and every C1 control. It is an allowlist: what it
  does not know is dropped. The output is always valid UTF-8 and ends each sequence it keeps,
  so the terminal is back in its ground state after every chunk the filter returns.
"""

import logging
import re
from typing import Final

# ---- single strings --------------------------------------------------------------------------

# C0, DEL, C1, backslash; Unicode format characters (Cf) that reorder or hide text; line and
# paragraph separators; surrogates (lone ones from JSON, or bytes kept by surrogateescape).
_UNSAFE_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\\\\\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]"
)
_UNSAFE_TEXT = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\\\\\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(m: "re.Match[str]") -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    n = ord(ch)
    if 0xDC80 <= n <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def _as_str(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


def line(value: object) -> str:
    """`value` as one line that a terminal shows as it is (see the module docstring)."""
    return _UNSAFE_LINE.sub(_escape_char, _as_str(value))


def text(value: object) -> str:
    """Like `line`, but newlines and tabs stay: for multi-line replies and messages."""
    return _UNSAFE_TEXT.sub(_escape_char, _as_str(value))


def fields(items: dict[str, object]) -> str:
    """`k=v k=v` for an event's details, each key and value escaped."""
    return " ".join(f"{line(k)}={line(v)}" for k, v in items.items())


class Formatter(logging.Formatter):
    """A logging formatter whose records (guest strings in messages included) are escaped;
    tracebacks keep their newlines."""

    def format(self, record: logging.LogRecord) -> str:
        return text(super().format(record))


# ---- terminal streams ------------------------------------------------------------------------

ESC: Final = 0x1B
MAX_SEQUENCE: Final = 256  # bytes of one ESC/CSI sequence before it is dropped as garbage
MAX_STRING: Final = 8192  # bytes of one OSC/DCS/SOS/PM/APC string before the filter gives up
REPLACEMENT: Final = "\ufffd".encode()
# C0 controls that only move the cursor or ring: BEL BS HT LF VT FF CR SO SI. Dropped: NUL,
# ENQ (answerback: a query), CAN/SUB (abort), ESC (handled), the rest (nothing prints them).
_KEPT_C0: Final = frozenset(b"\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f")
# Plain printable ASCII, kept C0 and well-formed UTF-8 (never C1: U+0080..U+009F is C2 80..9F,
# excluded here), matched in one step: the fast path for ordinary output.
_SAFE_RUN: Final = re.compile(
    rb"(?:[\x07-\x0d\x0e\x0f\x20-\x7e]"
    rb"|\xc2[\xa0-\xbf]|[\xc3-\xdf][\x80-\xbf]"
    rb"|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})+"
)
# C1 controls that open a string (dropped with their payload), by their ESC Fe form.
_STRING_OPENERS: Final = frozenset(b"P]X^_")  # DCS OSC SOS PM APC

# ESC Fs/Fp sequences kept: DECSC DECRC IND NEL HTS RI RIS DECKPAM DECKPNM DECBI DECFI.
_ESC_KEPT: Final = frozenset(b"78DEHMc=>69")
# ESC with one intermediate: charset designation ( ) * + - . / (any final), line size # 3-6, 8.
_DESIGNATE: Final = frozenset(b"()*+-./")
_DEC_LINE: Final = frozenset(b"34568")
# CSI finals kept with no private marker and no intermediate (ECMA-48 editing and movement).
_CSI_KEPT: Final = frozenset(b"@ABCDEFGHIJKLMPSTXZ`abdefgmrs")
# DEC private modes (CSI ? Pm h/l) kept: reverse video, origin, autowrap, cursor blink and
# visibility, reverse wrap, the alternate screen, synchronized output. Not kept: mouse, focus
# and bracketed paste (they make the terminal send input), cursor-key and keypad modes, 132
# columns (resizes the window).
_DEC_MODES: Final = frozenset({5, 6, 7, 12, 25, 45, 47, 1047, 1048, 1049, 2026})
_ANSI_MODES: Final = frozenset({4, 20})  # insert mode, newline mode
_CSI_PARAMS: Final = re.compile(rb"[0-9;:]*")


def _csi_kept(params: bytes, inter: bytes, final: int) -> bool:
    private = params[:1] if params[:1] in (b"<", b"=", b">", b"?") else b""
    body = params[len(private) :]
    if _CSI_PARAMS.fullmatch(body) is None:
        return False
    if inter == b"":
        if private == b"":
            if final in (ord("h"), ord("l")):
                return _modes(body) <= _ANSI_MODES
            if final == ord("u"):
                return body == b""  # SCORC; CSI Ps u is a keyboard protocol request
            return final in _CSI_KEPT
        if private == b"?":
            if final in (ord("h"), ord("l")):
                return _modes(body) <= _DEC_MODES
            return final in b"JK"  # selective erase
        return False  # CSI > / = / < ...: queries and keyboard modes
    if private:
        return False
    if inter == b" ":
        return final in b"q@A"  # cursor style, scroll left/right
    if inter == b"!":
        return final == ord("p")  # soft reset
    if inter == b'"':
        return final == ord("q")  # character protection
    return False


def _modes(body: bytes) -> set[int]:
    out: set[int] = set()
    for p in body.replace(b":", b";").split(b";"):
        if not p:
            return {-1}
        out.add(int(p))
    return out


def _esc_kept(inter: bytes, final: int) -> bool:
    if inter == b"":
        return final in _ESC_KEPT
    if len(inter) <= 2 and inter[0] in _DESIGNATE:
        return True
    return inter == b"#" and final in _DEC_LINE


class TerminalFilter:
    """Filters one terminal stream (see the module docstring); sans-io, one per stream.

    `feed(chunk)` returns what may go to the terminal now; a sequence split across chunks is
    held (at most MAX_SEQUENCE bytes) until its end decides it. `end()` closes the stream: an
    unfinished UTF-8 character becomes U+FFFD and an unfinished sequence is dropped. The
    payload of a dropped string is never held: it is skipped as it arrives, and an
    unterminated one stops being skipped after MAX_STRING bytes (what follows then shows as
    text). `dropped` counts the sequences and controls removed.
    """

    GROUND, UTF8, ESCAPE, CSI, STRING, STRING_ESC = range(6)

    def __init__(self, max_sequence: int = MAX_SEQUENCE, max_string: int = MAX_STRING):
        self.max_sequence = max_sequence
        self.max_string = max_string
        self.state = self.GROUND
        self.seq = bytearray()  # the sequence or UTF-8 character being read
        self.need = 0  # UTF-8: continuation bytes still expected
        self.low, self.high = 0x80, 0xBF  # UTF-8: the range of the next continuation byte
        self.string_len = 0
        self.dropped = 0

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if self.state == self.GROUND:
                m = _SAFE_RUN.match(data, i)
                if m is not None:
                    out += m.group()
                    i = m.end()
                    continue
            self._byte(data[i], out)
            i += 1
        return bytes(out)

    def end(self) -> bytes:
        out = bytearray()
        if self.state == self.UTF8:
            out += REPLACEMENT
        elif self.state != self.GROUND:
            self.dropped += 1
        self._reset()
        return bytes(out)

    # -- the state machine, one byte at a time (the fast path above skips plain text)
    def _reset(self) -> None:
        self.state = self.GROUND
        self.seq.clear()
        self.need = 0
        self.string_len = 0

    def _drop(self) -> None:
        self.dropped += 1
        self._reset()

    def _byte(self, b: int, out: bytearray) -> None:
        state = self.state
        if state == self.GROUND:
            self._ground(b, out)
        elif state == self.UTF8:
            self._utf8(b, out)
        elif state == self.ESCAPE:
            self._escape(b, out)
        elif state == self.CSI:
            self._csi(b, out)
        else:
            self._string(b, out)

    def _ground(self, b: int, out: bytearray) -> None:
        if b == ESC:
            self._start_escape()
        elif b < 0x20 or b == 0x7F:
            if b in _KEPT_C0:
                out.append(b)
            else:
                self.dropped += 1
        elif b < 0x7F:
            out.append(b)
        elif 0xC2 <= b <= 0xF4:
            self.state = self.UTF8
            self.seq[:] = bytes([b])
            self.need = 1 if b < 0xE0 else 2 if b < 0xF0 else 3
            self.low = 0xA0 if b == 0xE0 else 0x90 if b == 0xF0 else 0x80
            self.high = 0x9F if b == 0xED else 0x8F if b == 0xF4 else 0xBF
        else:
            # Not UTF-8 (a stray continuation byte, a bare 8-bit C1 control, C0/C1, F5..FF):
            # shown as U+FFFD, so no 8-bit control ever reaches the terminal.
            out += REPLACEMENT

    def _utf8(self, b: int, out: bytearray) -> None:
        if not self.low <= b <= self.high:
            out += REPLACEMENT
            self._reset()
            self._ground(b, out)
            return
        self.seq.append(b)
        self.low, self.high = 0x80, 0xBF
        self.need -= 1
        if self.need:
            return
        char = bytes(self.seq)
        self._reset()
        if char[0] == 0xC2 and char[1] < 0xA0:
            self._c1(char[1] - 0x40, out)  # U+0080..U+009F: C1, as its ESC Fe form
        else:
            out += char

    def _c1(self, fe: int, out: bytearray) -> None:
        """A C1 control (encoded as UTF-8): the same as ESC followed by `fe`."""
        self._start_escape()
        if fe in b"[" + bytes(_STRING_OPENERS):
            self._escape(fe, out)
        else:
            self._drop()  # IND, NEL, ST and the other lone C1 controls: none is needed

    def _start_escape(self) -> None:
        self.state = self.ESCAPE
        self.seq[:] = b"\x1b"

    def _finish(self, kept: bool, final: int, out: bytearray) -> None:
        """The final byte of an ESC or CSI sequence: the whole sequence out, or nothing."""
        if kept:
            out += self.seq
            out.append(final)
            self._reset()
        else:
            self._drop()

    def _abandon(self, b: int, out: bytearray) -> None:
        """A byte that cannot continue the sequence (a C0 control, CAN/SUB, ESC, a byte above
        ASCII): the sequence is dropped and the byte read as if no escape had come."""
        self._drop()
        if b == ESC:
            self._start_escape()
        elif b not in (0x18, 0x1A):
            self._ground(b, out)

    def _escape(self, b: int, out: bytearray) -> None:
        inter = len(self.seq) > 1
        if b == ord("[") and not inter:
            self.state = self.CSI
            self.seq.append(b)
        elif b in _STRING_OPENERS and not inter:
            self.state = self.STRING
            self.string_len = 0
            self.seq.clear()
        elif 0x20 <= b <= 0x2F:
            self.seq.append(b)
            if len(self.seq) > 4:
                self._drop()
        elif 0x30 <= b <= 0x7E:
            self._finish(_esc_kept(bytes(self.seq[1:]), b), b, out)
        elif b != 0x7F:  # DEL is ignored inside sequences
            self._abandon(b, out)

    def _csi(self, b: int, out: bytearray) -> None:
        if 0x20 <= b <= 0x3F:
            self.seq.append(b)
            if len(self.seq) > self.max_sequence:
                self._drop()
        elif 0x40 <= b <= 0x7E:
            body = bytes(self.seq[2:])
            k = len(body)
            while k and 0x20 <= body[k - 1] <= 0x2F:
                k -= 1
            params, inter = body[:k], body[k:]
            ok = all(0x30 <= c <= 0x3F for c in params) and _csi_kept(params, inter, b)
            self._finish(ok, b, out)
        elif b != 0x7F:
            self._abandon(b, out)

    def _string(self, b: int, out: bytearray) -> None:
        # The payload is skipped, never stored. BEL ends an OSC (xterm); ESC \ is ST; CAN and
        # SUB abort; ESC and anything else ends the string and starts a new sequence.
        self.string_len += 1
        if self.state == self.STRING_ESC:
            self._drop()
            if b != ord("\\"):
                self._start_escape()
                self._escape(b, out)
            return
        if b == ESC:
            self.state = self.STRING_ESC
        elif b in (0x07, 0x18, 0x1A):
            self._drop()
        elif self.string_len > self.max_string:
            self._drop()  # unterminated: stop hiding what follows
            self._ground(b, out)


def filter_bytes(data: bytes) -> bytes:
    """One complete buffer through a fresh TerminalFilter."""
    f = TerminalFilter()
    return f.feed(data) + f.end()

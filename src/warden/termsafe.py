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

import codecs
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
# C0 controls that only move the cursor or ring (BEL BS HT LF VT FF CR SO SI) are text. The
# others are deleted from text as if never sent: NUL, ENQ (answerback: a query), CAN/SUB, the
# rest (nothing prints them), DEL; ESC starts a sequence (and breaks a UTF-8 character).
_DELETED: Final = bytes(range(0x00, 0x07)) + bytes(range(0x10, 0x1B)) + b"\x1c\x1d\x1e\x1f\x7f"
# A span of text and of the CSI sequences that are always kept (no private marker, no
# intermediate: colours, movement, erasing), taken in one step: colourful output (ls, vim)
# has a sequence every few bytes, and one step per sequence is what made the filter slow.
_SPAN: Final = re.compile(
    rb"(?:[^\x1b]+|\x1b\[[0-9;:]{0,%d}[@A-MPSTXZ`abd-gmrs])+" % (MAX_SEQUENCE - 3)
)
_C1: Final = re.compile("[\x80-\x9f]")
# Whole ESC sequences, matched in one step at an ESC (the fast path); what does not match (a
# sequence cut by the chunk's end, CAN/SUB or DEL inside one, a string longer than MAX_STRING)
# goes through the byte-at-a-time state machine, which treats every sequence these match the
# same way.
_SEQUENCE: Final = re.compile(
    rb"(?P<csi>\x1b\[[0-?]*[ -/]*[@-~])"
    rb"|(?P<string>\x1b[\]P_^X][^\x07\x18\x1a\x1b]{0,%d}(?:\x07|\x1b\\))"
    rb"|(?P<esc>\x1b[ -/]{0,3}[0-~])" % (MAX_STRING - 1)
)
# ESC followed by these opens a string (dropped with its payload): DCS OSC SOS PM APC.
_STRING_OPENERS: Final = frozenset(b"P]X^_")
_OPENERS: Final = frozenset(b"[P]X^_")  # ... or, with [, a CSI

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

    `feed(chunk)` returns what may go to the terminal now; a sequence or UTF-8 character split
    across chunks is held (at most MAX_SEQUENCE bytes) until its end decides it. `end()`
    closes the stream: an unfinished UTF-8 character becomes U+FFFD and an unfinished sequence
    is dropped. The payload of a dropped string is never held: it is skipped as it arrives,
    and an unterminated one stops being skipped after MAX_STRING bytes (what follows then shows
    as text). Text is decoded as UTF-8 (invalid bytes become U+FFFD, as Python's decoder
    replaces them) and C1 controls in it (U+0080..U+009F) are dropped. `dropped` counts the
    sequences and controls removed.

    Ordinary output takes a fast path (one regular expression step per span of text and
    always-kept CSI sequences, the UTF-8 decoder, one step per other escape sequence):
    benchmarks/terminal_filter.py.
    """

    GROUND, ESCAPE, CSI, STRING, STRING_ESC = range(5)

    def __init__(self) -> None:
        self.state = self.GROUND
        self.seq = bytearray()  # the ESC or CSI sequence being read
        self.string_len = 0
        self.dropped = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if self.state != self.GROUND:
                if self._byte(data[i], out):
                    i += 1
                continue
            m = _SPAN.match(data, i)
            if m is not None:
                j = m.end()
                self._text(data[i:j], out, final=j < n)
                i = j
                continue
            self._text(b"", out, final=True)  # an ESC breaks a UTF-8 character
            i = self._sequence(data, i, out)
        return bytes(out)

    def end(self) -> bytes:
        out = bytearray()
        self._text(b"", out, final=True)
        if self.state != self.GROUND:
            self._drop()
        return bytes(out)

    # -- text and whole sequences (the fast path)
    def _text(self, data: bytes, out: bytearray, final: bool) -> None:
        kept = data.translate(None, _DELETED)
        self.dropped += len(data) - len(kept)
        text = self._utf8.decode(kept, final)
        if text:
            text, n = _C1.subn("", text)
            self.dropped += n
            out += text.encode()

    def _sequence(self, data: bytes, i: int, out: bytearray) -> int:
        """At an ESC: a whole sequence handled at once, or the state machine started; returns
        where to go on."""
        m = _SEQUENCE.match(data, i)
        token = m.group() if m is not None else b""
        kind = m.lastgroup if m is not None else None
        if kind == "csi" and len(token) <= MAX_SEQUENCE + 1:
            body = token[2:-1]
            k = len(body)
            while k and 0x20 <= body[k - 1] <= 0x2F:
                k -= 1
            self._emit(_csi_kept(body[:k], body[k:], token[-1]), token, out)
        elif kind == "string":
            self.dropped += 1
        elif kind == "esc" and not (len(token) == 2 and token[1] in _OPENERS):
            self._emit(_esc_kept(token[1:-1], token[-1]), token, out)
        else:
            self._start_escape()
            return i + 1
        return i + len(token)

    def _emit(self, kept: bool, token: bytes, out: bytearray) -> None:
        if kept:
            out += token
        else:
            self.dropped += 1

    # -- the state machine, one byte at a time, for sequences the fast path could not take
    def _reset(self) -> None:
        self.state = self.GROUND
        self.seq.clear()
        self.string_len = 0

    def _drop(self) -> None:
        self.dropped += 1
        self._reset()

    def _start_escape(self) -> None:
        self.state = self.ESCAPE
        self.seq[:] = b"\x1b"

    def _byte(self, b: int, out: bytearray) -> bool:
        """One byte in a sequence; False if it was not taken (read it again as text)."""
        if self.state == self.ESCAPE:
            return self._escape(b, out)
        if self.state == self.CSI:
            return self._csi(b, out)
        return self._string(b, out)

    def _finish(self, kept: bool, final: int, out: bytearray) -> bool:
        """The final byte of an ESC or CSI sequence: the whole sequence out, or nothing."""
        if kept:
            out += self.seq
            out.append(final)
            self._reset()
        else:
            self._drop()
        return True

    def _abandon(self, b: int) -> bool:
        """A byte that cannot continue the sequence (a C0 control, CAN/SUB, ESC, a byte above
        ASCII): the sequence is dropped and the byte read as if no escape had come."""
        self._drop()
        if b == ESC:
            self._start_escape()
            return True
        return b in (0x18, 0x1A)  # CAN and SUB only abort; anything else is read again

    def _escape(self, b: int, out: bytearray) -> bool:
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
            return self._finish(_esc_kept(bytes(self.seq[1:]), b), b, out)
        elif b != 0x7F:  # DEL is ignored inside sequences
            return self._abandon(b)
        return True

    def _csi(self, b: int, out: bytearray) -> bool:
        if 0x20 <= b <= 0x3F:
            self.seq.append(b)
            if len(self.seq) > MAX_SEQUENCE:
                self._drop()
        elif 0x40 <= b <= 0x7E:
            body = bytes(self.seq[2:])
            k = len(body)
            while k and 0x20 <= body[k - 1] <= 0x2F:
                k -= 1
            params, inter = body[:k], body[k:]
            ok = all(0x30 <= c <= 0x3F for c in params) and _csi_kept(params, inter, b)
            return self._finish(ok, b, out)
        elif b != 0x7F:
            return self._abandon(b)
        return True

    def _string(self, b: int, out: bytearray) -> bool:
        # The payload is skipped, never stored. BEL ends an OSC (xterm); ESC \ is ST; CAN and
        # SUB abort; ESC and anything else ends the string and starts a new sequence.
        self.string_len += 1
        if self.state == self.STRING_ESC:
            self._drop()
            if b == ord("\\"):
                return True
            self._start_escape()
            return self._escape(b, out)
        if b == ESC:
            self.state = self.STRING_ESC
        elif b in (0x07, 0x18, 0x1A):
            self._drop()
        elif self.string_len > MAX_STRING:
            self._drop()  # unterminated: stop hiding what follows
            return False
        return True


def filter_bytes(data: bytes) -> bytes:
    """One complete buffer through a fresh TerminalFilter."""
    f = TerminalFilter()
    return f.feed(data) + f.end()

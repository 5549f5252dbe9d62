"""What readers of a stored tty log see: which bytes were on a screen, which were typed.

A session log of line `tty` holds one kernel tty-log record per TTYLOG record, verbatim
(docs/formats/session-log.md, docs/formats/ttylog.md). Readers (`warden replay`, `warden logs
search|export|dump`) pass each payload through a `TtyView`, which decodes it and follows the
OPEN records so it knows what every tty id is:

- a pty pair is one *session*, named by its master's tty id. Its screen is what the master
  READ (sshd, a terminal emulator, `script`): everything the terminal showed, the line
  discipline's echo included. What was typed is what the master WROTE (keystrokes before the
  line discipline edits them).
- any other tty (the console, a serial line) is a session of its own: its screen is what
  programs WROTE to it, what was typed is what they READ from it (there is no master to see
  the echo; the host's own line log, con0/sslN, has the raw bytes of those lines).
- EXEC records name the program and its argv; RESIZE a session's window size.

Sans-io: bytes in, decoded records and plain values out.
"""

from dataclasses import dataclass, field
from typing import Any

from warden.sessionlog import ttylog
from warden.sessionlog.ttylog import (
    CRC_OFFSET,
    RECORD_HEADER,
    Close,
    Data,
    Direction,
    Drop,
    Exec,
    Open,
    Record,
    Resize,
    TtyLogError,
    Unknown,
)

DRIVER_NAMES = {1: "system", 2: "console", 3: "serial", 4: "pty", 5: "scc", 6: "syscons"}


def decode_payload(payload: bytes) -> Record:
    """One TTYLOG payload (a whole kernel record) -> the record; TtyLogError if damaged."""
    if len(payload) < RECORD_HEADER.size:
        raise TtyLogError(f"TTYLOG payload of {len(payload)} bytes: shorter than a record")
    head = RECORD_HEADER.unpack_from(payload)
    if ttylog.crc32(payload[:CRC_OFFSET]) != head[6]:
        raise TtyLogError("TTYLOG payload: record header CRC mismatch")
    if head[5] != len(payload) - RECORD_HEADER.size:
        raise TtyLogError(
            f"TTYLOG payload: the record says {head[5]} payload bytes, "
            f"the session-log record holds {len(payload) - RECORD_HEADER.size}"
        )
    return ttylog.decode_record(head, payload[RECORD_HEADER.size :], 0)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def argv_text(rec: Exec) -> str:
    """An exec's argv as one shell-like line (arguments with blanks quoted)."""
    parts = []
    for a in rec.argv:
        s = _text(a)
        parts.append(s if s and not any(c.isspace() or c in "'\"" for c in s) else repr(s))
    return " ".join(parts) + (" …" if rec.truncated else "")


@dataclass
class TtyView:
    """Follows one boot's records (feed them in order)."""

    ttys: dict[int, Open] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # session -> (cols, rows)

    def decode(self, payload: bytes) -> Record:
        rec = decode_payload(payload)
        if isinstance(rec, Open):
            self.ttys[rec.tty] = rec
        elif isinstance(rec, Resize):
            self.sizes[self.session(rec.tty)] = (rec.cols, rec.rows)
        return rec

    def session(self, tty: int) -> int:
        """A pty pair is one session, named by its master's id; any other tty by its own."""
        op = self.ttys.get(tty)
        if op is not None and op.is_pty_slave and op.link:
            return op.link
        return tty

    def name(self, tty: int) -> str:
        op = self.ttys.get(tty)
        return op.name if op is not None else f"tty{tty}?"

    def label(self, session: int) -> str:
        """`pts3` for a pty pair (its slave's name), `tty0` for the console, ..."""
        op = self.ttys.get(session)
        if op is not None and op.is_pty_master and op.link:
            return self.name(op.link)
        return self.name(session)

    def _is_master(self, tty: int) -> bool:
        op = self.ttys.get(tty)
        return op is not None and op.is_pty_master

    def _is_slave(self, tty: int) -> bool:
        op = self.ttys.get(tty)
        return op is not None and op.is_pty_slave

    def screen(self, rec: Record) -> bytes | None:
        """The bytes a terminal showed, or None if `rec` is not such bytes."""
        if not isinstance(rec, Data):
            return None
        if self._is_master(rec.tty):
            return rec.data if rec.direction == Direction.READ else None
        if self._is_slave(rec.tty):
            return None  # the master's READ has it (with the echo)
        return rec.data if rec.direction == Direction.WRITE else None

    def typed(self, rec: Record) -> bytes | None:
        """The bytes someone typed, or None."""
        if not isinstance(rec, Data):
            return None
        if self._is_master(rec.tty):
            return rec.data if rec.direction == Direction.WRITE else None
        if self._is_slave(rec.tty):
            return None
        return rec.data if rec.direction == Direction.READ else None

    def marker(self, rec: Record) -> str | None:
        """A one-line description of a record that is not terminal bytes (None for DATA)."""
        if isinstance(rec, Exec):
            who = f"pid {rec.pid} uid {rec.uid}" + (
                f" euid {rec.euid}" if rec.euid != rec.uid else ""
            )
            where = f" on {self.label(self.session(rec.tty))}" if rec.tty else ""
            return f"exec {argv_text(rec)} ({who}{where})"
        if isinstance(rec, Open):
            kind = DRIVER_NAMES.get(rec.driver, str(rec.driver))
            return f"open {rec.name} ({kind}, tty {rec.tty}, by pid {rec.pid} uid {rec.uid})"
        if isinstance(rec, Close):
            return f"close {self.name(rec.tty)} (tty {rec.tty})"
        if isinstance(rec, Resize):
            return f"resize {self.label(self.session(rec.tty))} {rec.cols}x{rec.rows}"
        if isinstance(rec, Drop):
            return f"kernel dropped {rec.lost_records} records ({rec.lost_bytes} bytes of data)"
        if isinstance(rec, Unknown):
            return f"record type {rec.type} ({len(rec.payload)} bytes)"
        return None

    def describe(self, rec: Record) -> dict[str, Any]:
        """Every field of a record, for `warden logs dump` (bytes as text, lossless)."""
        out: dict[str, Any] = {"op": type(rec).__name__.lower(), "kseq": rec.seq}
        out["ktime_ns"] = rec.time_ns
        if isinstance(rec, Open):
            out.update(
                tty=rec.tty,
                name=rec.name,
                driver=DRIVER_NAMES.get(rec.driver, rec.driver),
                subtype=rec.subtype,
                major=rec.major,
                minor=rec.minor,
                link=rec.link,
                pid=rec.pid,
                uid=rec.uid,
            )
        elif isinstance(rec, Close):
            out.update(tty=rec.tty)
        elif isinstance(rec, Data):
            out.update(
                tty=rec.tty,
                name=self.name(rec.tty),
                direction="write" if rec.direction == Direction.WRITE else "read",
                data=rec.data.decode("latin-1"),
            )
        elif isinstance(rec, Exec):
            out.update(
                tty=rec.tty,
                pid=rec.pid,
                ppid=rec.ppid,
                uid=rec.uid,
                euid=rec.euid,
                argc=rec.argc,
                filename=_text(rec.filename),
                argv=[_text(a) for a in rec.argv],
                truncated=rec.truncated,
            )
        elif isinstance(rec, Resize):
            out.update(tty=rec.tty, rows=rec.rows, cols=rec.cols)
        elif isinstance(rec, Drop):
            out.update(lost_records=rec.lost_records, lost_bytes=rec.lost_bytes)
        else:
            out.update(tty=rec.tty, type=rec.type, payload=rec.payload.hex())
        return out


@dataclass(frozen=True)
class TtyItem:
    """What one stored record means to a reader (see TtyStreams)."""

    record: Record | None  # None: the payload was damaged (see marker)
    session: int | None  # the pty pair / tty it belongs to (None: no tty)
    screen: bytes | None = None
    typed: bytes | None = None
    marker: str | None = None  # exec, open, close, resize, drop, damage
    switched_to: str | None = None  # screen output moved to another session: its label
    resize: tuple[int, int] | None = None  # (cols, rows)


@dataclass
class TtyStreams:
    """TTYLOG payloads in order -> TtyItems; with `tty` set, only that session's items
    (either end of a pty pair may be named)."""

    tty: int | None = None
    view: TtyView = field(default_factory=TtyView)
    _last: int | None = None

    def feed(self, payload: bytes) -> TtyItem | None:
        try:
            rec = self.view.decode(payload)
        except TtyLogError as e:
            return TtyItem(None, None, marker=f"damaged record: {e}")
        tty = 0 if isinstance(rec, Drop) else rec.tty
        session = self.view.session(tty) if tty else None
        if self.tty is not None and not isinstance(rec, Drop):
            if session is None or session != self.view.session(self.tty):
                return None
        screen = self.view.screen(rec)
        switched = None
        if screen is not None and session != self._last:
            if self._last is not None and session is not None:
                switched = self.view.label(session)
            self._last = session
        resize = (rec.cols, rec.rows) if isinstance(rec, Resize) else None
        return TtyItem(
            rec, session, screen, self.view.typed(rec), self.view.marker(rec), switched, resize
        )

    def executed(self, item: TtyItem) -> str | None:
        return argv_text(item.record) if isinstance(item.record, Exec) else None

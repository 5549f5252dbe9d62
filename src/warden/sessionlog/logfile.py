"""One session-log file being written, owned by the writer thread (warden.sessionlog.writer).

It keeps the file's MAC chain, encodes records into a buffer of pieces that one writev(2) per
batch writes, applies the guest's quota and the disk's room by tier (warden.sessionlog.quota),
counts what it drops and tells it in "dropped" events, and takes a failed write back to the last
whole record so that the chain stays valid (docs/formats/session-log.md).
"""

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.sessionlog import codec as sl
from warden.sessionlog import manifest as mf
from warden.sessionlog import store as logstore
from warden.sessionlog.quota import DiskRoom, GuestUsage, Tier, resume_margin

log = logging.getLogger("warden.sessionlog")

DROP_NOTE_EVERY = 10.0  # seconds between "dropped" events while dropping goes on


@dataclass(eq=False)
class LogFile:
    """One session-log file being written: owned by the writer thread."""

    path: Path
    fd: int
    key: bytes  # the HMAC key of its chain
    usage: GuestUsage
    disk: DiskRoom
    manifest: mf.ManifestWriter
    line: str
    boot: int
    part: int
    seq: int = 0  # last record written to the file
    mac: bytes = b""
    size: int = 0  # bytes in the file
    pending_seq: int = 0  # last record encoded (written or in buf)
    pending_mac: bytes = b""
    buf: list[bytes] = field(default_factory=list)  # pieces waiting for writev
    buf_bytes: int = 0
    # what the pieces in buf hold (notes apart): added to the totals once written
    batch_records: int = 0
    batch_out: int = 0
    batch_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped_out: int = 0
    dropped_in: int = 0
    dropped_records: int = 0
    drop_tier: Tier | None = None  # the lowest tier dropped since dropping began
    drop_reason: str = ""
    last_note: float = 0.0
    # writes that failed and were taken back, not yet told in a write-failed event
    failed_records: int = 0
    failed_out: int = 0
    failed_in: int = 0
    failed_attempts: int = 0
    failed_first_us: int = 0
    failed_last_us: int = 0
    failed_error: str = ""
    telling: bool = False  # this batch starts with the write-failed event

    def chain_from(self, seq: int, mac: bytes, size: int) -> None:
        self.seq = self.pending_seq = seq
        self.mac = self.pending_mac = mac
        self.size = size

    def record(
        self,
        rtype: int,
        t: int,
        payload: bytes | list[bytes],
        tier: Tier,
        out: int = 0,
        inn: int = 0,
    ) -> bool:
        n = len(payload) if isinstance(payload, bytes) else sum(len(p) for p in payload)
        size = sl.RECORD_HEADER.size + n + sl.MAC_LEN
        if tier is not Tier.CLOSING:
            reason = ""
            # While dropping, a record of a class that was dropped needs a margin to resume.
            margin = 0
            if self.drop_tier is not None and tier <= self.drop_tier:
                margin = resume_margin(self.usage.quota)
            if size + margin > self.usage.room(tier):
                reason = "quota"
            elif not self.disk.fits(tier, size + margin):
                reason = "disk"
            if reason:
                self.count_drop(t, tier, out, inn, reason)
                return False
        if self.drop_tier is not None and tier <= self.drop_tier:
            self.drop_tier = None
            self.note_drop(t, "resumed")
        self.append(rtype, t, payload)
        self.batch_records += 1
        self.batch_out += out
        self.batch_in += inn
        return True

    def append(self, rtype: int, t: int, payload: bytes | list[bytes]) -> None:
        if self.failed_attempts and not self.buf and not self.telling:
            self.telling = True
            self.note_failed(t)  # the first record once writing works again
        pieces = [payload] if isinstance(payload, bytes) else payload
        self.pending_seq += 1
        head, self.pending_mac = sl.record_parts(
            self.key, self.pending_mac, rtype, self.pending_seq, t, pieces
        )
        # No copy of the payload until the kernel's: writev takes the pieces as they are.
        self.buf.append(head)
        self.buf += pieces
        self.buf.append(self.pending_mac)
        size = len(head) + sum(len(p) for p in pieces) + len(self.pending_mac)
        self.buf_bytes += size
        self.usage.add(size)
        self.disk.took(size)

    def count_drop(self, t: int, tier: Tier, out: int, inn: int, reason: str) -> None:
        self.dropped_out += out
        self.dropped_in += inn
        self.dropped_records += 1
        self.drop_reason = reason
        if self.drop_tier is None:
            self.drop_tier = tier
            self.note_drop(t, "dropping")
        else:
            self.drop_tier = min(self.drop_tier, tier)
            if time.monotonic() - self.last_note >= DROP_NOTE_EVERY:
                self.note_drop(t, "dropping", periodic=True)

    def note_drop(self, t: int, state: str, periodic: bool = False) -> None:
        self.last_note = time.monotonic()
        payload = sl.event_payload(
            "dropped",
            {
                "bytes_out": self.dropped_out,
                "bytes_in": self.dropped_in,
                "records": self.dropped_records,
                "quota": self.usage.quota,
                "state": state,
                "reason": self.drop_reason,
            },
        )
        # A change of state is always told; while dropping goes on, only if there is room.
        size = sl.RECORD_HEADER.size + len(payload) + sl.MAC_LEN
        if not periodic or (size <= self.usage.room(Tier.HOST) and self.disk.fits(Tier.HOST, size)):
            self.append(sl.EVENT, t, payload)

    def note_failed(self, t: int) -> None:
        payload = sl.event_payload(
            "write-failed",
            {
                "error": self.failed_error,
                "first_us": self.failed_first_us,
                "last_us": self.failed_last_us,
                "records": self.failed_records,
                "bytes_out": self.failed_out,
                "bytes_in": self.failed_in,
                "attempts": self.failed_attempts,
            },
        )
        self.append(sl.EVENT, t, payload)

    def flush(self) -> None:
        if not self.buf:
            return
        pieces, total = self.buf, self.buf_bytes
        self.buf, self.buf_bytes = [], 0
        records, out, inn = self.batch_records, self.batch_out, self.batch_in
        self.batch_records = self.batch_out = self.batch_in = 0
        try:
            write_all(self.fd, pieces)
        except OSError as e:
            # Disk full or I/O error: put the file back to its last whole record, so the
            # chain stays valid; count what was lost, to tell it once writing works again.
            self.usage.add(-total)
            self.disk.took(-total)
            self.disk.invalidate()
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            self.pending_seq, self.pending_mac = self.seq, self.mac
            self.telling = False  # taken back with the rest: told with the next batch
            now = logstore.now_us()
            if not self.failed_attempts:
                self.failed_first_us = now
                log.warning(
                    "%s: writing failed (%s) after record %d: %d records (%d bytes out, "
                    "%d in) taken back; counting until writing works again",
                    self.path,
                    e.strerror or e,
                    self.seq,
                    records,
                    out,
                    inn,
                )
            self.failed_attempts += 1
            self.failed_last_us = now
            self.failed_error = e.strerror or str(e)
            self.failed_records += records
            self.failed_out += out
            self.failed_in += inn
            self.dropped_records += records
            self.dropped_out += out
            self.dropped_in += inn
            return
        if self.telling:
            log.warning(
                "%s: writing works again; a write-failed event says what was lost", self.path
            )
            self.telling = False
            self.failed_attempts = self.failed_records = self.failed_out = self.failed_in = 0
        self.size += total
        self.seq, self.mac = self.pending_seq, self.pending_mac
        self.bytes_out += out
        self.bytes_in += inn

    def note_manifest(self, kind: str, t: int, sync: bool, **fields: Any) -> bool:
        try:
            n = self.manifest.note(kind, self.line, self.boot, self.part, t, sync, **fields)
        except OSError as e:
            log.warning("%s: cannot note %s in %s: %s", self.path, kind, self.manifest.path, e)
            return False
        self.usage.add(n)
        return True

    def end(self, t: int, reason: str, **extra: object) -> None:
        payload = sl.event_payload(
            "end",
            {
                "reason": reason,
                "records": self.pending_seq + 1,
                "bytes_out": self.bytes_out + self.batch_out,
                "bytes_in": self.bytes_in + self.batch_in,
                "dropped_bytes": self.dropped_out + self.dropped_in,
                **extra,
            },
        )
        self.append(sl.END, t, payload)


IOV_MAX = 1024


def write_all(fd: int, pieces: list[bytes]) -> None:
    """writev every piece, in order, whatever the kernel takes per call."""
    i = 0
    while i < len(pieces):
        group = pieces[i : i + IOV_MAX]
        n = os.writev(fd, group)
        want = sum(len(p) for p in group)
        if n < want:  # a short write (rare on files): finish this group byte by byte
            rest = memoryview(b"".join(group))[n:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        i += IOV_MAX

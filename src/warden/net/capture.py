"""Packet capture of a guest's taps with tcpdump, on demand and always-on (honeypots).

The capture runs on the host side of the tap, so it records every frame the guest sends or
receives, including frames the rules then drop, and the guest cannot see or stop it.

Always-on capture and its quota: each boot of a honeypot guest writes one ring of files per NIC,
`logs/pcap/boot-NNNN-ethK.pcapN` (tcpdump -C/-W: when the ring is full the oldest file is
overwritten). The guest's quota Q ([logs] quota) is split in two: the current boot's rings may
use Q/2, and captures of earlier boots are pruned, oldest first, down to Q/2 when a boot starts.
So a guest's captures never exceed Q, the newest traffic is always kept, and an old boot's
capture survives until newer ones need its room.
"""

import re
from pathlib import Path

MB = 1_000_000  # tcpdump -C counts in millions of bytes
CAPTURE_BUFFER_KIB = 16384  # tcpdump -B: the kernel's buffer per capture (see tcpdump_argv)
FILE_NAME = re.compile(r"^boot-(\d{4,})-eth(\d+)\.pcap(\d*)$")


def ring(quota: int, nics: int) -> tuple[int, int]:
    """(file size in MB, number of files) for one NIC's ring: all rings together <= quota/2."""
    share = max(quota // 2 // max(nics, 1), MB)
    size = max(share // 8 // MB, 1)
    return size, max(share // (size * MB), 1)


def base_name(boot: int, nic: int) -> str:
    return f"boot-{boot:04d}-eth{nic}.pcap"


def tcpdump_argv(
    binary: str,
    tap: str,
    out: str,
    count: int | None = None,
    ring_size: tuple[int, int] | None = None,
) -> list[str]:
    """tcpdump writing every frame of `tap` to `out` ("-" for stdout), one packet at a time."""
    # A capture must hold every frame, so no --immediate-mode: it makes libpcap use
    # TPACKET_V2, whose ring has one slot per frame the size of the snap length (256 KiB
    # with -s 0), so a 16 MiB buffer held ~60 frames and a 5 MB transfer on a loaded host
    # lost 1003 of 7922 (tcpdump's count). TPACKET_V3 packs frames by their real size, so
    # 16 MiB (-B, in KiB; the default is 2 MiB) holds ~11,000 full-size frames, more than the
    # whole transfer. The price: frames reach the file in blocks, up to tcpdump's 1 s timeout
    # late; -U still writes each one out as soon as tcpdump has it.
    args = [binary, "-i", tap, "-n", "-s", "0", "-B", str(CAPTURE_BUFFER_KIB)]
    args += ["-U", "-Z", "root"]
    if count:
        args += ["-c", str(count)]
    if ring_size is not None:
        args += ["-C", str(ring_size[0]), "-W", str(ring_size[1])]
    return args + ["-w", out]


def files(directory: Path) -> list[Path]:
    """Capture files of `directory`, oldest first: by boot, then by last write (a ring's
    oldest file is not its first)."""
    found = []
    for p in directory.glob("boot-*"):
        m = FILE_NAME.match(p.name)
        if m and p.is_file():
            found.append(((int(m[1]), p.stat().st_mtime_ns, p.name), p))
    return [p for _, p in sorted(found)]


def prune(directory: Path, keep_bytes: int, before_boot: int) -> list[Path]:
    """Delete the oldest captures of boots before `before_boot` until they total <= keep_bytes."""
    old = []
    for p in files(directory):
        m = FILE_NAME.match(p.name)
        if m and int(m[1]) < before_boot:
            old.append(p)
    total = sum(p.stat().st_size for p in old)
    removed = []
    for p in old:
        if total <= keep_bytes:
            break
        total -= p.stat().st_size
        p.unlink()
        removed.append(p)
    return removed


class RecordBoundary:
    """Follows a pcap stream and knows where its last whole record ends, so that a capture
    interrupted in the middle of a packet can be cut back to a file tcpdump reads cleanly.

    pcap (libpcap's savefile format): a 24-byte file header whose magic gives the byte order,
    then records: a 16-byte header (ts_sec, ts_usec or ts_nsec, incl_len, orig_len) followed by
    incl_len bytes of the frame.
    """

    FILE_HEADER = 24
    RECORD_HEADER = 16

    def __init__(self) -> None:
        self.complete = 0  # stream offset after the last whole record (or the file header)
        self._pending = bytearray()  # bytes after `complete`
        self._order: str | None = None

    def feed(self, data: bytes) -> None:
        import struct

        self._pending += data
        if self._order is None:
            if len(self._pending) < self.FILE_HEADER:
                return
            magic = bytes(self._pending[:4])
            if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                self._order = "<"
            elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                self._order = ">"
            else:
                raise ValueError(f"not a pcap stream (magic {magic.hex()})")
            self._advance(self.FILE_HEADER)
        while len(self._pending) >= self.RECORD_HEADER:
            (incl,) = struct.unpack_from(self._order + "I", self._pending, 8)
            end = self.RECORD_HEADER + incl
            if len(self._pending) < end:
                return
            self._advance(end)

    def _advance(self, n: int) -> None:
        del self._pending[:n]
        self.complete += n

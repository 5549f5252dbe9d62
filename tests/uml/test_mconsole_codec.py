"""The mconsole codec against byte vectors written from docs/formats/mconsole.md."""

import struct

import pytest

from warden.uml import mconsole as mc


def test_request_vector() -> None:
    assert mc.encode_request("version") == bytes.fromhex("bebafeca 02000000 07000000") + b"version"


def test_request_too_long() -> None:
    with pytest.raises(mc.MconsoleError, match="the limit is 511"):
        mc.encode_request("x" * 512)


def test_reply_vector() -> None:
    dg = bytes.fromhex("00000000 00000000 06000000") + b"hello\0"
    assert mc.decode_reply(dg) == mc.ReplyPart(err=False, more=False, text="hello")


def test_reply_error_and_more() -> None:
    dg = struct.pack("=III", 1, 1, 4) + b"bad\0"
    part = mc.decode_reply(dg)
    assert part.err and part.more and part.text == "bad"


@pytest.mark.parametrize(
    "dg",
    [
        b"\0" * 11,  # shorter than the header
        struct.pack("=III", 0, 0, 0),  # len must count the NUL
        struct.pack("=III", 0, 0, 10) + b"short\0",  # declares more than it carries
        struct.pack("=III", 0, 0, 600) + b"x" * 600,  # over MCONSOLE_MAX_DATA
    ],
)
def test_reply_malformed(dg: bytes) -> None:
    with pytest.raises(mc.ProtocolError):
        mc.decode_reply(dg)


def test_assembler_joins_parts_and_keeps_first_error() -> None:
    a = mc.ReplyAssembler()
    a.feed(mc.ReplyPart(err=False, more=True, text="\n"))
    a.feed(mc.ReplyPart(err=False, more=True, text="MemTotal: 1 kB\n"))
    assert not a.done
    a.feed(mc.ReplyPart(err=False, more=False, text=""))
    assert a.done and not a.err and mc.proc_text(a.text) == "MemTotal: 1 kB\n"


def test_notify_vectors() -> None:
    path = b"/run/x/mconsole\0"
    dg = struct.pack("=IIII", mc.MAGIC, 2, 0, len(path)) + path
    n = mc.decode_notify(dg)
    assert n.type is mc.NotifyType.SOCKET and n.text == "/run/x/mconsole"
    panic = struct.pack("=IIII", mc.MAGIC, 2, 1, 5) + b"oops!"
    assert mc.decode_notify(panic).type is mc.NotifyType.PANIC


@pytest.mark.parametrize(
    ("dg", "what"),
    [
        (struct.pack("=IIII", 0xDEADBEEF, 2, 0, 0), "magic"),
        (struct.pack("=IIII", mc.MAGIC, 3, 0, 0), "version"),
        (struct.pack("=IIII", mc.MAGIC, 2, 9, 0), "unknown type"),
        (struct.pack("=IIII", mc.MAGIC, 2, 0, 8) + b"abc", "declares"),
        (b"\0" * 10, "shorter"),
    ],
)
def test_notify_malformed(dg: bytes, what: str) -> None:
    with pytest.raises(mc.ProtocolError, match=what):
        mc.decode_notify(dg)

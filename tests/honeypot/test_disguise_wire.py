"""The disguise channel's messages (docs/formats/disguise.md) on byte vectors, and the checks
that refuse truncated, oversized and malformed ones."""

import struct

import pytest

from warden.honeypot import disguise_wire as w
from warden.honeypot.disguise_wire import (
    Action,
    DisguiseProtocolError,
    Entry,
    Fallback,
    KmsgAction,
    KmsgRule,
    MsgType,
    Ruleset,
)

# RULESET body: flags 1 (hide the hypervisor), timeout 200 ms, 2 entries, 1 kmsg rule;
#   entry: hide "exitcode";
#   entry: filter "interrupts", fallback 2 (text "none"), timeout 300 ms;
#   kmsg: replace records containing "ubda" with "sda ok".
RULESET_BODY = bytes.fromhex(
    "01000000 c8000000 0200 0100 00000000 01 00 0800 00000000 00000000 65786974636f6465 "
    "03 02 0a00 2c010000 04000000 696e7465727275707473 6e6f6e65 02 00 0400 06000000 "
    "75626461 736461206f6b"
)
RULESET = Ruleset(
    entries=(
        Entry(Action.HIDE, "exitcode"),
        Entry(Action.FILTER, "interrupts", b"none", Fallback.TEXT, 300),
    ),
    kmsg=(KmsgRule(KmsgAction.REPLACE, b"ubda", b"sda ok"),),
    timeout_ms=200,
    cpuid_hide_hypervisor=True,
)
# header: magic "WDSG", version 1, type 1 (RULESET), id 7, len 80
RULESET_HEADER = bytes.fromhex("57445347 0100 0100 07000000 50000000")


def test_ruleset_encodes_to_the_vector_and_back() -> None:
    assert w.encode_ruleset(RULESET) == RULESET_BODY
    assert w.decode_ruleset(RULESET_BODY) == RULESET
    packet = w.encode_message(MsgType.RULESET, 7, RULESET_BODY)
    assert packet[:16] == RULESET_HEADER
    assert w.decode_message(packet) == w.Message(MsgType.RULESET, 7, RULESET_BODY)


def test_ack_vector() -> None:
    # ACK of generation 7: status 0, flags 1 (CPUID faulting on), 14 entries
    packet = bytes.fromhex("57445347 0100 0200 07000000 0c000000 00000000 01000000 0e000000")
    assert w.decode_ack(w.decode_message(packet)) == w.Ack(7, 0, True, 14)
    # a refused rule set: status -EINVAL (-22)
    refused = w.encode_message(MsgType.ACK, 8, struct.pack("<iII", -22, 0, 0))
    assert w.decode_ack(w.decode_message(refused)).status == -22


def test_request_vector_and_reply() -> None:
    # REQUEST 5: pid 42, uid 0, path "cpuinfo", 3 bytes of real content
    body = bytes.fromhex("2a000000 00000000 0700 0000 03000000") + b"cpuinfo" + b"abc"
    req = w.decode_request(w.decode_message(w.encode_message(MsgType.REQUEST, 5, body)))
    assert req == w.Request(5, 42, 0, "cpuinfo", b"abc")
    assert (
        w.encode_reply(5, b"xyz") == bytes.fromhex("57445347 0100 0400 05000000 03000000") + b"xyz"
    )


@pytest.mark.parametrize(
    "packet, problem",
    [
        (b"WDSG", "shorter than its 16-byte header"),
        (bytes.fromhex("58585858 0100 0100 00000000 00000000"), "magic"),
        (bytes.fromhex("57445347 0200 0100 00000000 00000000"), "version 2"),
        (bytes.fromhex("57445347 0100 0900 00000000 00000000"), "unknown type 9"),
        (bytes.fromhex("57445347 0100 0100 00000000 05000000") + b"abc", "declares 5"),
    ],
)
def test_malformed_messages_are_refused(packet: bytes, problem: str) -> None:
    with pytest.raises(DisguiseProtocolError, match=problem):
        w.decode_message(packet)


@pytest.mark.parametrize("cut", [0, 15, 16, 27, 36, 60, len(RULESET_BODY) - 1])
def test_truncated_ruleset_is_refused(cut: int) -> None:
    with pytest.raises(DisguiseProtocolError):
        w.decode_ruleset(RULESET_BODY[:cut])


def test_ruleset_with_trailing_bytes_is_refused() -> None:
    with pytest.raises(DisguiseProtocolError, match="2 bytes after its last rule"):
        w.decode_ruleset(RULESET_BODY + b"xx")


def test_corrupted_ruleset_fields_are_refused() -> None:
    bad_action = bytearray(RULESET_BODY)
    bad_action[16] = 9
    with pytest.raises(DisguiseProtocolError, match="action 9"):
        w.decode_ruleset(bytes(bad_action))
    zero_timeout = bytearray(RULESET_BODY)
    zero_timeout[4:8] = b"\0\0\0\0"
    with pytest.raises(DisguiseProtocolError, match="timeout 0"):
        w.decode_ruleset(bytes(zero_timeout))


def test_encoder_enforces_the_format_limits() -> None:
    with pytest.raises(DisguiseProtocolError, match="1..63 ASCII"):
        w.encode_ruleset(Ruleset(entries=(Entry(Action.HIDE, "x" * 64),)))
    with pytest.raises(DisguiseProtocolError, match="1..63 ASCII"):
        w.encode_ruleset(Ruleset(entries=(Entry(Action.HIDE, "cpu\u00efnfo"),)))
    with pytest.raises(DisguiseProtocolError, match="text of 65537 bytes"):
        w.encode_ruleset(Ruleset(entries=(Entry(Action.REPLACE, "a", b"x" * 65537),)))
    with pytest.raises(DisguiseProtocolError, match="at most 64"):
        w.encode_ruleset(Ruleset(entries=tuple(Entry(Action.HIDE, f"e{i}") for i in range(65))))
    with pytest.raises(DisguiseProtocolError, match="timeout_ms 0"):
        w.encode_ruleset(Ruleset(timeout_ms=0))
    with pytest.raises(DisguiseProtocolError, match="kmsg text of 1001 bytes"):
        w.encode_ruleset(Ruleset(kmsg=(KmsgRule(KmsgAction.REPLACE, b"a", b"x" * 1001),)))
    big = tuple(Entry(Action.REPLACE, f"e{i}", b"x" * 60000) for i in range(3))
    with pytest.raises(DisguiseProtocolError, match="rule set of .* bytes > 131072"):
        w.encode_ruleset(Ruleset(entries=big))
    with pytest.raises(DisguiseProtocolError, match="reply of 65537 bytes"):
        w.encode_reply(1, b"x" * 65537)


def test_request_declaring_more_than_it_carries_is_refused() -> None:
    body = struct.pack("<IIHHI", 1, 0, 7, 0, 10) + b"cpuinfo" + b"abc"
    with pytest.raises(DisguiseProtocolError, match="declares 7\\+10 bytes"):
        w.decode_request(w.decode_message(w.encode_message(MsgType.REQUEST, 1, body)))

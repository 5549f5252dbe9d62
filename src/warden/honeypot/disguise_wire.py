"""The disguise channel's messages (docs/formats/disguise.md), as bytes and back.

Sans-io: the server (disguise_server.py) moves the packets. Every struct below quotes the
table of the format page it mirrors; every decoder checks every bound and raises
DisguiseProtocolError naming what is wrong.
"""

import struct
from dataclasses import dataclass
from enum import IntEnum

from warden.errors import WardenError

MAGIC = 0x47534457  # "WDSG" read as a little-endian u32
VERSION = 1

# header: le32 magic; le16 version; le16 type; le32 id; le32 len
HEADER = struct.Struct("<IHHII")
# RULESET body: le32 flags; le32 timeout_ms; le16 n_entries; le16 n_kmsg; le32 reserved
RULESET_HEAD = struct.Struct("<IIHHI")
# entry: u8 action; u8 fallback; le16 path_len; le32 timeout_ms; le32 text_len; path; text
ENTRY_HEAD = struct.Struct("<BBHII")
# kernel log rule: u8 action; u8 reserved; le16 match_len; le32 text_len; match; text
KMSG_HEAD = struct.Struct("<BBHI")
# ACK body: le32 status (signed); le32 flags; le32 n_entries
ACK_BODY = struct.Struct("<iII")
# REQUEST body: le32 pid; le32 uid; le16 path_len; le16 reserved; le32 real_len; path; real
REQUEST_HEAD = struct.Struct("<IIHHI")

RULESET_MAX = 131072
TEXT_MAX = 65536
PATH_MAX = 63
MATCH_MAX = 255
KMSG_TEXT_MAX = 1000
RULES_MAX = 64
TIMEOUT_MAX_MS = 5000
FLAG_CPUID_HIDE_HYPERVISOR = 1  # RULESET flags bit 0
ACK_CPUID_FAULTING = 1  # ACK flags bit 0


class DisguiseProtocolError(WardenError):
    """A disguise channel message that does not follow docs/formats/disguise.md."""


class MsgType(IntEnum):
    RULESET = 1
    ACK = 2
    REQUEST = 3
    REPLY = 4


class Action(IntEnum):
    HIDE = 1
    REPLACE = 2
    FILTER = 3


class Fallback(IntEnum):
    REAL = 0
    EMPTY = 1
    TEXT = 2


class KmsgAction(IntEnum):
    HIDE = 1
    REPLACE = 2


@dataclass(frozen=True)
class Message:
    type: MsgType
    id: int
    body: bytes


@dataclass(frozen=True)
class Entry:
    action: Action
    path: str
    text: bytes = b""
    fallback: Fallback = Fallback.REAL
    timeout_ms: int = 0  # 0: the rule set's default


@dataclass(frozen=True)
class KmsgRule:
    action: KmsgAction
    match: bytes
    text: bytes = b""


@dataclass(frozen=True)
class Ruleset:
    entries: tuple[Entry, ...] = ()
    kmsg: tuple[KmsgRule, ...] = ()
    timeout_ms: int = 200
    cpuid_hide_hypervisor: bool = False


@dataclass(frozen=True)
class Ack:
    generation: int
    status: int  # 0 accepted, else -errno
    cpuid_faulting: bool
    entries: int


@dataclass(frozen=True)
class Request:
    id: int
    pid: int
    uid: int
    path: str
    real: bytes


def encode_message(kind: MsgType, ident: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, ident, len(body)) + body


def decode_message(packet: bytes) -> Message:
    if len(packet) < HEADER.size:
        raise DisguiseProtocolError(
            f"disguise message of {len(packet)} bytes is shorter than its {HEADER.size}-byte header"
        )
    magic, version, kind, ident, length = HEADER.unpack_from(packet)
    if magic != MAGIC:
        raise DisguiseProtocolError(f"disguise message magic {magic:#010x}, expected {MAGIC:#x}")
    if version != VERSION:
        raise DisguiseProtocolError(f"disguise message version {version}, expected {VERSION}")
    if length != len(packet) - HEADER.size:
        raise DisguiseProtocolError(
            f"disguise message declares {length} body bytes but carries {len(packet) - HEADER.size}"
        )
    try:
        typ = MsgType(kind)
    except ValueError:
        raise DisguiseProtocolError(f"disguise message of unknown type {kind}") from None
    return Message(typ, ident, packet[HEADER.size :])


def _check_path(path: str) -> bytes:
    raw = path.encode("ascii", "strict") if path.isascii() else b""
    if not 1 <= len(raw) <= PATH_MAX or b"\0" in raw:
        raise DisguiseProtocolError(f"path {path!r}: expected 1..{PATH_MAX} ASCII characters")
    return raw


def encode_ruleset(rules: Ruleset) -> bytes:
    """A RULESET body; DisguiseProtocolError if it breaks a limit of the format."""
    if not 1 <= rules.timeout_ms <= TIMEOUT_MAX_MS:
        raise DisguiseProtocolError(f"timeout_ms {rules.timeout_ms}: expected 1..{TIMEOUT_MAX_MS}")
    if len(rules.entries) > RULES_MAX or len(rules.kmsg) > RULES_MAX:
        raise DisguiseProtocolError(f"at most {RULES_MAX} entries and {RULES_MAX} kmsg rules")
    flags = FLAG_CPUID_HIDE_HYPERVISOR if rules.cpuid_hide_hypervisor else 0
    out = [RULESET_HEAD.pack(flags, rules.timeout_ms, len(rules.entries), len(rules.kmsg), 0)]
    for e in rules.entries:
        path = _check_path(e.path)
        if len(e.text) > TEXT_MAX:
            raise DisguiseProtocolError(f"{e.path}: text of {len(e.text)} bytes > {TEXT_MAX}")
        if not 0 <= e.timeout_ms <= TIMEOUT_MAX_MS:
            raise DisguiseProtocolError(f"{e.path}: timeout_ms {e.timeout_ms} > {TIMEOUT_MAX_MS}")
        out.append(ENTRY_HEAD.pack(e.action, e.fallback, len(path), e.timeout_ms, len(e.text)))
        out += [path, e.text]
    for k in rules.kmsg:
        if not 1 <= len(k.match) <= MATCH_MAX or b"\0" in k.match:
            raise DisguiseProtocolError(f"kmsg match {k.match!r}: expected 1..{MATCH_MAX} bytes")
        if len(k.text) > KMSG_TEXT_MAX:
            raise DisguiseProtocolError(f"kmsg text of {len(k.text)} bytes > {KMSG_TEXT_MAX}")
        out.append(KMSG_HEAD.pack(k.action, 0, len(k.match), len(k.text)))
        out += [k.match, k.text]
    body = b"".join(out)
    if len(body) > RULESET_MAX:
        raise DisguiseProtocolError(f"rule set of {len(body)} bytes > {RULESET_MAX}")
    return body


def decode_ruleset(body: bytes) -> Ruleset:
    """The inverse of encode_ruleset, with the kernel's checks (for tests and tools)."""
    if len(body) < RULESET_HEAD.size or len(body) > RULESET_MAX:
        raise DisguiseProtocolError(f"rule set of {len(body)} bytes: expected 16..{RULESET_MAX}")
    flags, timeout, n_entries, n_kmsg, _ = RULESET_HEAD.unpack_from(body)
    if not 1 <= timeout <= TIMEOUT_MAX_MS or n_entries > RULES_MAX or n_kmsg > RULES_MAX:
        raise DisguiseProtocolError(
            f"rule set header: timeout {timeout}, {n_entries} entries, {n_kmsg} kmsg rules"
        )
    pos = RULESET_HEAD.size

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(body):
            raise DisguiseProtocolError(f"rule set ends inside {what} at byte {pos}")
        chunk = body[pos : pos + n]
        pos += n
        return chunk

    entries = []
    for i in range(n_entries):
        action, fallback, plen, tmo, tlen = ENTRY_HEAD.unpack(take(ENTRY_HEAD.size, f"entry {i}"))
        if action not in Action._value2member_map_ or fallback not in Fallback._value2member_map_:
            raise DisguiseProtocolError(f"entry {i}: action {action}, fallback {fallback}")
        if not 1 <= plen <= PATH_MAX or tlen > TEXT_MAX or tmo > TIMEOUT_MAX_MS:
            raise DisguiseProtocolError(f"entry {i}: path {plen} bytes, text {tlen}, timeout {tmo}")
        path = take(plen, f"entry {i}'s path")
        text = take(tlen, f"entry {i}'s text")
        entries.append(Entry(Action(action), path.decode("ascii"), text, Fallback(fallback), tmo))
    kmsg = []
    for i in range(n_kmsg):
        action, _, mlen, tlen = KMSG_HEAD.unpack(take(KMSG_HEAD.size, f"kmsg rule {i}"))
        if action not in KmsgAction._value2member_map_:
            raise DisguiseProtocolError(f"kmsg rule {i}: action {action}")
        if not 1 <= mlen <= MATCH_MAX or tlen > KMSG_TEXT_MAX:
            raise DisguiseProtocolError(f"kmsg rule {i}: match {mlen} bytes, text {tlen}")
        match = take(mlen, f"kmsg rule {i}'s match")
        kmsg.append(KmsgRule(KmsgAction(action), match, take(tlen, f"kmsg rule {i}'s text")))
    if pos != len(body):
        raise DisguiseProtocolError(f"rule set has {len(body) - pos} bytes after its last rule")
    return Ruleset(tuple(entries), tuple(kmsg), timeout, bool(flags & FLAG_CPUID_HIDE_HYPERVISOR))


def decode_ack(msg: Message) -> Ack:
    if msg.type != MsgType.ACK or len(msg.body) != ACK_BODY.size:
        raise DisguiseProtocolError(f"ACK body of {len(msg.body)} bytes, expected {ACK_BODY.size}")
    status, flags, entries = ACK_BODY.unpack(msg.body)
    return Ack(msg.id, status, bool(flags & ACK_CPUID_FAULTING), entries)


def decode_request(msg: Message) -> Request:
    body = msg.body
    if msg.type != MsgType.REQUEST or len(body) < REQUEST_HEAD.size:
        raise DisguiseProtocolError(f"REQUEST body of {len(body)} bytes is too short")
    pid, uid, plen, _, rlen = REQUEST_HEAD.unpack_from(body)
    if not 1 <= plen <= PATH_MAX or rlen > TEXT_MAX:
        raise DisguiseProtocolError(f"REQUEST path of {plen} bytes, content of {rlen}")
    if REQUEST_HEAD.size + plen + rlen != len(body):
        raise DisguiseProtocolError(
            f"REQUEST declares {plen}+{rlen} bytes but carries {len(body) - REQUEST_HEAD.size}"
        )
    path = body[REQUEST_HEAD.size : REQUEST_HEAD.size + plen].decode("ascii", "replace")
    return Request(msg.id, pid, uid, path, body[REQUEST_HEAD.size + plen :])


def encode_reply(request_id: int, content: bytes) -> bytes:
    if len(content) > TEXT_MAX:
        raise DisguiseProtocolError(f"reply of {len(content)} bytes > {TEXT_MAX}")
    return encode_message(MsgType.REPLY, request_id, content)

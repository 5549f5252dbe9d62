"""Network flows from a honeypot's captures: 5-tuple, bytes and packets each way, DNS names.

The capture files (`logs/pcap/boot-NNNN-ethK.pcapN`, tcpdump's ring) are read with dpkt, a
kept pure-Python packet library; warden parses no packet format of its own. Why not tshark
(installed, and with more dissectors): every byte in these files was chosen by an intruder,
and tshark's C dissectors, run as root on them, are a memory-unsafe parser of hostile input
(Wireshark publishes dissector crash advisories every year). dpkt's errors are Python
exceptions, caught per packet.

A flow is one (proto, address, port, address, port) conversation, both directions together;
its *client* is the side that sent the first packet (for TCP, the SYN without ACK when the
capture has it). A new SYN after the flow ended (FIN or RST seen both ways, or 120 s of
silence) starts a new flow. ICMP is one flow per (addresses, type) without ports. DNS: the
names in queries (QD section) sent to port 53 over UDP are listed with their flow.

Bounds (the capture is as big as the quota allows): at most FLOW_MAX flows (then only packet
and byte totals are counted), DNS_MAX names per flow, and a packet that does not parse is
counted, never fatal. A file cut in the middle of a record (tcpdump still writing) ends at
its last whole record.
"""

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

FLOW_MAX = 100_000
DNS_MAX = 64
IDLE_US = 120_000_000  # silence after which the same 5-tuple is a new flow
NAME_MAX = 255


@dataclass
class Flow:
    proto: str  # tcp, udp, icmp, ip:N
    client: str
    client_port: int | None
    server: str
    server_port: int | None
    first_us: int
    last_us: int
    packets_out: int = 0  # from the client
    packets_in: int = 0
    bytes_out: int = 0  # frame bytes on the wire (captured length of the frame's IP packet)
    bytes_in: int = 0
    syn: bool = False
    fin: int = 0  # directions that sent FIN (bit 1: client, bit 2: server)
    rst: bool = False
    dns: list[str] = field(default_factory=list)
    icmp_type: int | None = None

    def ended(self) -> bool:
        return self.rst or self.fin == 3

    def as_json(self, guest_addrs: frozenset[str] = frozenset()) -> dict[str, Any]:
        out: dict[str, Any] = {
            "proto": self.proto,
            "src": self.client,
            "sport": self.client_port,
            "dst": self.server,
            "dport": self.server_port,
            "first_us": self.first_us,
            "seconds": round((self.last_us - self.first_us) / 1e6, 6),
            "packets_out": self.packets_out,
            "packets_in": self.packets_in,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
        }
        if guest_addrs:
            out["direction"] = "outbound" if self.client in guest_addrs else "inbound"
        if self.proto == "tcp":
            out["tcp"] = {"syn": self.syn, "fin": self.fin, "rst": self.rst}
        if self.icmp_type is not None:
            out["icmp_type"] = self.icmp_type
        if self.dns:
            out["dns"] = list(self.dns)
        return out


@dataclass
class Totals:
    packets: int = 0
    bytes: int = 0
    not_ip: int = 0
    unparsed: int = 0
    flows_over_cap: int = 0  # packets not in any flow because FLOW_MAX was reached
    cut_files: list[str] = field(default_factory=list)


Key = tuple[str, tuple[str, int], tuple[str, int]]  # proto and both ends, sorted


class FlowTable:
    """Packets in (time order), flows out. Sans-io: `add(time_us, ethernet frame)`."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self.open: dict[Key, Flow] = {}
        self.totals = Totals()

    def add(self, time_us: int, frame: bytes) -> None:
        self.totals.packets += 1
        self.totals.bytes += len(frame)
        try:
            eth = dpkt.ethernet.Ethernet(frame)
        except (dpkt.UnpackError, dpkt.NeedData, ValueError):
            self.totals.unparsed += 1
            return
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP):
            family = socket.AF_INET
        elif isinstance(ip, dpkt.ip6.IP6):
            family = socket.AF_INET6
        else:
            self.totals.not_ip += 1
            return
        try:
            self._ip(time_us, ip, family, len(frame))
        except (dpkt.UnpackError, dpkt.NeedData, ValueError, AttributeError, TypeError):
            self.totals.unparsed += 1

    def _ip(self, time_us: int, ip: Any, family: int, size: int) -> None:
        src = socket.inet_ntop(family, ip.src)
        dst = socket.inet_ntop(family, ip.dst)
        l4 = ip.data
        sport = dport = 0
        icmp_type: int | None = None
        flags = 0
        if isinstance(l4, dpkt.tcp.TCP):
            proto, sport, dport, flags = "tcp", l4.sport, l4.dport, l4.flags
        elif isinstance(l4, dpkt.udp.UDP):
            proto, sport, dport = "udp", l4.sport, l4.dport
        elif isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
            proto, icmp_type = "icmp", l4.type
        else:
            proto = f"ip:{ip.p if family == socket.AF_INET else ip.nxt}"
        ends = sorted(((src, sport), (dst, dport)))
        if icmp_type is not None:
            ends = sorted(((src, icmp_type), (dst, -1)))
        key: Key = (proto, ends[0], ends[1])
        flow = self.open.get(key)
        syn_only = proto == "tcp" and flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK
        if flow is not None and (time_us - flow.last_us > IDLE_US or (syn_only and flow.ended())):
            flow = None
        if flow is None:
            if len(self.flows) >= FLOW_MAX:
                self.totals.flows_over_cap += 1
                return
            flow = Flow(
                proto,
                src,
                sport if proto in ("tcp", "udp") else None,
                dst,
                dport if proto in ("tcp", "udp") else None,
                time_us,
                time_us,
                syn=bool(syn_only),
                icmp_type=icmp_type,
            )
            self.flows.append(flow)
            self.open[key] = flow
        flow.last_us = max(flow.last_us, time_us)
        from_client = src == flow.client and (flow.client_port is None or sport == flow.client_port)
        if from_client:
            flow.packets_out += 1
            flow.bytes_out += size
        else:
            flow.packets_in += 1
            flow.bytes_in += size
        if proto == "tcp":
            if flags & dpkt.tcp.TH_FIN:
                flow.fin |= 1 if from_client else 2
            if flags & dpkt.tcp.TH_RST:
                flow.rst = True
        if proto == "udp" and dport == 53 and len(flow.dns) < DNS_MAX:
            self._dns(flow, l4.data)

    @staticmethod
    def _dns(flow: Flow, payload: bytes) -> None:
        try:
            msg = dpkt.dns.DNS(payload)
        except (dpkt.UnpackError, dpkt.NeedData, ValueError, IndexError):
            return
        if msg.qr != dpkt.dns.DNS_Q:
            return
        for q in msg.qd:
            name = str(q.name)[:NAME_MAX]
            if name not in flow.dns and len(flow.dns) < DNS_MAX:
                flow.dns.append(name)


def packets(f: BinaryIO, where: str, totals: Totals) -> Iterator[tuple[int, bytes]]:
    """(time in µs, frame) of each whole record of one pcap file."""
    try:
        reader = dpkt.pcap.Reader(f)
    except (ValueError, dpkt.NeedData, dpkt.UnpackError):
        totals.cut_files.append(f"{where}: not a pcap file (or cut inside its header)")
        return
    it = iter(reader)
    while True:
        try:
            ts, frame = next(it)
        except StopIteration:
            return
        except (dpkt.NeedData, dpkt.UnpackError, ValueError):
            totals.cut_files.append(f"{where}: ends inside a record (still being written?)")
            return
        yield round(float(ts) * 1e6), frame


def read(paths: Iterable[Path]) -> tuple[list[Flow], Totals]:
    """Flows of capture files, read in the order given (a ring's oldest file first)."""
    table = FlowTable()
    for p in paths:
        with open(p, "rb") as f:
            for t, frame in packets(f, str(p), table.totals):
                table.add(t, frame)
    return table.flows, table.totals

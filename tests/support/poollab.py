"""A netlab Lab with two attackers for the pools (warden.forensics.pool*): the lab's OUTSIDE
(192.168.250.2) and ATTACKER2 (192.168.251.2, on a veth of its own to HOST), both routed to
HOST; optionally GUESTS, a namespace of servers standing in for guests (the gate's own test).

`connect` opens a TCP connection from an attacker and prints what the server sent first
(repr), and how long it took; `hold` keeps one open for a while (for what the guest sees);
`spoof_syns` sends one SYN from each of many forged source addresses (a raw socket).
"""

import subprocess
import sys

from tests.support.netlab import HOST_IP, Lab, sh

HOST2_IP, ATTACKER2_IP = "192.168.251.1", "192.168.251.2"
SERVER = """
import socket, sys, threading
def serve(ip):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, 22)); s.listen()
    while True:
        c, a = s.accept()
        c.sendall(f"SSH-2.0-{ip} sees {a[0]}\\r\\n".encode()); c.close()
for ip in sys.argv[1:]:
    threading.Thread(target=serve, args=(ip,)).start()
"""
CONNECT = """
import socket, sys, time
t = time.monotonic()
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[3])), timeout=float(sys.argv[2]))
    data = s.recv(100)
    print(repr(data) if data[:1] == b"\\xff" else data.decode().strip(),
          round(time.monotonic() - t, 4))
    time.sleep(float(sys.argv[4]))
except OSError as e:
    print("error", type(e).__name__, round(time.monotonic() - t, 4))
"""

# One SYN from each address to DST:DPORT, built by hand (IPPROTO_RAW: the kernel fills the IP
# checksum and length; the TCP checksum is ours).
SPOOF_SYNS = """
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b"\\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
dst, dport = sys.argv[1], int(sys.argv[2])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i, src in enumerate(sys.argv[3:]):
    sport = 40000 + i
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    raw.sendto(ip + tcp, (dst, 0))
print("sent", len(sys.argv) - 3)
"""


class PoolLab(Lab):
    def __init__(self, guests: list[str] | None = None) -> None:
        super().__init__()
        self.guest_addrs = guests or []
        self.guests = self.host.replace("wn", "wg")
        self.attacker2 = self.host.replace("wn", "wa")

    def start(self) -> "PoolLab":
        super().start()
        extra = [self.attacker2] + ([self.guests] if self.guest_addrs else [])
        for ns in extra:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self._veth(self.attacker2, f"{HOST2_IP}/30", [ATTACKER2_IP], HOST2_IP)
        sh("ip", "-n", self.outside, "route", "add", "default", "via", HOST_IP)
        self.run(self.host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if self.guest_addrs:
            self._veth(self.guests, "10.66.0.1/24", self.guest_addrs, "10.66.0.1")
            self.spawn(self.guests, sys.executable, "-c", SERVER, *self.guest_addrs)
        return self

    def _veth(self, ns: str, host_addr: str, addrs: list[str], gw: str) -> None:
        a, b = f"v{ns}"[:15], f"p{ns}"[:15]
        sh("ip", "link", "add", a, "netns", self.host, "type", "veth", "peer", "name", b,
           "netns", ns)  # fmt: skip
        sh("ip", "-n", self.host, "addr", "add", host_addr, "dev", a)
        sh("ip", "-n", self.host, "link", "set", a, "up")
        for addr in addrs:
            sh("ip", "-n", ns, "addr", "add", f"{addr}/{host_addr.split('/')[1]}", "dev", b)
        sh("ip", "-n", ns, "link", "set", b, "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", gw)

    def close(self) -> None:
        super().close()
        for ns in (self.guests, self.attacker2):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                subprocess.run(["kill", "-9", pid], check=False)
            sh("ip", "netns", "del", ns, check=False)

    def connect(self, ns: str, to: str = HOST_IP, timeout: float = 3, port: int = 22) -> str:
        return self.run(
            ns, sys.executable, "-c", CONNECT, to, str(timeout), str(port), "0"
        ).stdout.strip()

    def hold(
        self, ns: str, seconds: float, to: str = HOST_IP, port: int = 22
    ) -> "subprocess.Popen[bytes]":
        return self.spawn(ns, sys.executable, "-c", CONNECT, to, "10", str(port), str(seconds),
                          stdout=subprocess.DEVNULL)  # fmt: skip

    def spoof_syns(self, ns: str, srcs: list[str], to: str = HOST_IP, port: int = 22) -> None:
        out = self.run(ns, sys.executable, "-c", SPOOF_SYNS, to, str(port), *srcs).stdout
        assert out.split() == ["sent", str(len(srcs))], out

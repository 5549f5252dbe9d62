"""The pools' helper inside the fleet's network namespace: `python -m warden.forensics.poolgate
FD NETNS`, started by the pool driver (pooldriver.py), which holds the other end of FD.

It owns the nftables table `ip warden_pool` (poolrules.py) and does what needs the namespace:
write the table and its elements, read back what the kernel did (claims, activity, waiting
addresses) and probe guests' services. The daemon never enters the namespace (as with the
network helper, warden.net.agent).

Protocol: SOCK_SEQPACKET, one JSON object per message. Request {"op": OP, ...}; reply
{"ok": RESULT} or {"error": TEXT}, in order. Ops:
    setup {pools: [{name, listen, port, wait, guests: [[guest, address], ...]}]}   fresh table
    offer {pool, warm: [guest, ...]}
    map {pool, guest, src}          "error": the guest's map is full (claimed meanwhile)
    unmap {pool, guest, src, last}  last: `src` has no other guest of the pool
    forget {pool, src}
    probe {guest, address, port, timeout}   starts a probe; its result comes with a poll
    poll {} -> {pools: {P: {claims: [[guest, src]], seen: [src], waiting: [src],
                            handshakes: [src]}},
                probes: {guest: seconds | null}}
When the daemon's end closes, the gate deletes the table and exits: no address keeps a route
to a guest that nobody watches.
"""

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from warden.forensics import poolrules as rules
from warden.host.nftables import LibNftables

MAX_MESSAGE = 256 * 1024
PROBE_INTERVAL = 0.05


class GateError(Exception):
    pass


class Gate:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.nft = LibNftables()
        self.pools: dict[str, rules.PoolNet] = {}
        self.probes: dict[str, float | None] = {}
        self._lock = threading.Lock()

    def run(self, text: str) -> str:
        rc, out, err = self.nft.run(text)
        if rc != 0:
            raise GateError(f"nft failed: {err.strip()[-800:]}")
        return out

    # ---- ops -----------------------------------------------------------------------------------
    def setup(self, pools: list[dict[str, Any]]) -> None:
        self.pools = {
            p["name"]: rules.PoolNet(
                name=str(p["name"]),
                listen=int(p["listen"]),
                port=int(p["port"]),
                wait=int(p["wait"]),
                guests=tuple((str(g), str(a)) for g, a in p["guests"]),
            )
            for p in pools
        }
        self.run(rules.table(list(self.pools.values())))

    def offer(self, pool: str, warm: list[str]) -> None:
        self.run("\n".join(rules.offer(self.pools[pool], tuple(warm))) + "\n")

    def map(self, pool: str, guest: str, src: str) -> None:
        addr = dict(self.pools[pool].guests)[guest]
        self.run(rules.map_src(pool, guest, addr, src))

    def unmap(self, pool: str, guest: str, src: str, last: bool) -> None:
        for text in [rules.unmap_guest(guest, src)] + (rules.drop_src(pool, src) if last else []):
            try:
                self.run(text)
            except GateError:
                pass  # gone already: what unmap wants

    def forget(self, pool: str, src: str) -> None:
        try:
            self.run(rules.forget(pool, src))
        except GateError:
            pass  # timed out in the kernel already

    def probe(self, guest: str, address: str, port: int, timeout: float) -> None:
        with self._lock:
            self.probes.pop(guest, None)
        threading.Thread(
            target=self._probe, args=(guest, address, int(port), float(timeout)), daemon=True
        ).start()

    def _probe(self, guest: str, address: str, port: int, timeout: float) -> None:
        """Until the guest's service sends its first byte (an ssh banner, telnetd's option
        negotiation): that is when an attacker would see it."""
        t0 = time.monotonic()
        result: float | None = None
        while time.monotonic() - t0 < timeout:
            try:
                with socket.create_connection((address, port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(1):
                        result = time.monotonic() - t0
                        break
            except OSError:
                pass
            time.sleep(PROBE_INTERVAL)
        with self._lock:
            self.probes[guest] = result

    def poll(self) -> dict[str, Any]:
        listing = json.loads(self.run(f"list table {rules.T}") or "{}")
        pools: dict[str, Any] = {}
        for name, p in self.pools.items():
            claims = []
            for guest, _addr in p.guests:  # in guest order: the DNAT's order (poolpolicy)
                for src in rules.addresses(rules.elements(listing, rules.dnat_map(guest))):
                    claims.append([guest, src])
            pools[name] = {
                "claims": claims,
                "seen": rules.addresses(rules.elements(listing, rules.seen_set(name))),
                "waiting": rules.addresses(rules.elements(listing, rules.wait_set(name))),
                "handshakes": rules.addresses(rules.elements(listing, rules.hand_set(name))),
            }
        with self._lock:
            probes, self.probes = self.probes, {}
        return {"pools": pools, "probes": probes}

    # ---- loop ----------------------------------------------------------------------------------
    def serve(self) -> None:
        ops: dict[str, Callable[..., Any]] = {
            "setup": self.setup,
            "offer": self.offer,
            "map": self.map,
            "unmap": self.unmap,
            "forget": self.forget,
            "probe": self.probe,
            "poll": self.poll,
        }
        while True:
            msg = self.sock.recv(MAX_MESSAGE)
            if not msg:
                return
            try:
                req = json.loads(msg)
                op = ops.get(req.pop("op", None))
                if op is None:
                    raise GateError(f"unknown op in {msg[:200]!r}")
                reply: dict[str, Any] = {"ok": op(**req)}
            except (GateError, KeyError, ValueError, TypeError, OSError) as e:
                reply = {"error": f"{type(e).__name__}: {e}"}
            self.sock.send(json.dumps(reply).encode())

    def close(self) -> None:
        try:
            self.run(rules.remove())
        except GateError:
            pass


def main() -> None:
    fd, netns = int(sys.argv[1]), sys.argv[2]
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon's Ctrl-C is not ours
    try:
        if netns:
            from pyroute2 import netns as nsmod

            nsmod.setns(netns, flags=0)
        gate = Gate(sock)
    except Exception as e:
        sock.send(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        sys.exit(1)
    sock.send(json.dumps({"ok": {"pid": os.getpid()}}).encode())
    try:
        gate.serve()
    finally:
        gate.close()


if __name__ == "__main__":
    main()

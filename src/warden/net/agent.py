"""The network helper: a process living in the [host] network namespace, serving the daemon.

The daemon never switches namespaces (a threaded asyncio process must not), so everything that
has to happen inside the namespace happens here: netlink (pyroute2), opening taps, running
`nft`, bind tests, starting dnsmasq and tcpdump (which inherit the namespace). Protocol:

    argv     python -m warden.net.agent SOCKFD NETNS CREATE
             SOCKFD: this end of a SOCK_SEQPACKET socketpair; NETNS: a name under /run/netns
             or "" (stay in the namespace we were started in); CREATE: "1" to create a missing
             namespace, "0" to fail instead
    hello    the agent's first message: {"ok": {"pid", "netns", "created", "inode"}}
    request  one datagram of JSON {"op": NAME, ...arguments}
    reply    one datagram of JSON {"ok": RESULT} or {"error": MESSAGE}, with file descriptors
             (SCM_RIGHTS) for ops that hand some back ("tap", "spawn")
    end      the daemon closes its end; the agent exits (its on-demand captures with it)

One request at a time; the daemon serialises them. Processes the agent starts are its
children; it reaps them between requests.
"""

import errno
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warden.host.nftables import LibNftables
from warden.proc import start_time

MAX_MESSAGE = 8 << 20
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTICAST = 0x1000  # net_device flag (not the tun flag above)
PR_SET_PDEATHSIG = 1


class AgentError(Exception):
    pass


def _nft_binary() -> str:
    nft = shutil.which("nft")
    if nft is None:
        raise AgentError(
            "nftables is missing: no `nft` in PATH "
            f"({os.environ.get('PATH', '')}); install it with apt-get install nftables"
        )
    return nft


class Agent:
    def __init__(self, sock: socket.socket, netns: str, created: bool):
        from pyroute2 import IPRoute

        self.sock = sock
        self.netns = netns
        self.created = created
        self.ipr = IPRoute()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.libnft: LibNftables | None = None
        try:
            self.libnft = LibNftables()
        except (OSError, AttributeError):
            self.libnft = None  # fall back to running `nft -j`
        self.ops: dict[str, Callable[..., Any]] = {
            "nft": self.nft,
            "bridge": self.bridge,
            "links": self.links,
            "addresses": self.addresses,
            "delete_link": self.delete_link,
            "tap": self.tap,
            "port_free": self.port_free,
            "sysctl": self.sysctl,
            "spawn": self.spawn,
            "ping": lambda: "pong",
        }
        self._fds: list[int] = []

    # ---- loop -------------------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock], [], [], 1.0)
            self.reap()
            if not ready:
                continue
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
            for fd in fds:
                os.close(fd)
            if not msg:
                return
            self._fds = []
            try:
                req = json.loads(msg)
                op = self.ops.get(req.pop("op", ""))
                if op is None:
                    raise AgentError(f"unknown op in {msg[:200]!r}")
                reply: dict[str, Any] = {"ok": op(**req)}
            except (AgentError, OSError, ValueError, TypeError) as e:
                reply = {"error": str(e) or type(e).__name__}
                for fd in self._fds:
                    os.close(fd)
                self._fds = []
            try:
                socket.send_fds(self.sock, [json.dumps(reply).encode()], self._fds)
            finally:
                for fd in self._fds:
                    os.close(fd)

    def reap(self) -> None:
        for pid, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[pid]

    def shutdown(self) -> None:
        self.ipr.close()

    # ---- nftables -----------------------------------------------------------------------------
    def nft(self, cmds: list[Any] | None = None, args: list[str] | None = None) -> Any:
        """Run a batch of JSON commands (`cmds`), or `nft -j ARGS` (e.g. list ruleset)."""
        nft = _nft_binary()  # the nftables package must be there, library or not
        text = json.dumps({"nftables": cmds}) if cmds is not None else " ".join(args or [])
        if self.libnft is None:
            argv = [nft, "-j", "-f", "-"] if cmds is not None else [nft, "-j", *(args or [])]
            data = text.encode() if cmds is not None else None
            res = subprocess.run(argv, input=data, capture_output=True, timeout=30)
            rc, out = res.returncode, res.stdout.decode()
            err = res.stderr.decode(errors="replace")
        else:
            rc, out, err = self.libnft.run(text)
        if rc != 0:
            raise AgentError(f"nft failed: {err.strip()[-1500:]}")
        return json.loads(out) if out.strip() else None

    # ---- links ----------------------------------------------------------------------------------
    def _lookup(self, name: str) -> Any | None:
        idx = self.ipr.link_lookup(ifname=name)
        if not idx:
            return None
        return self.ipr.get_links(idx[0])[0]

    @staticmethod
    def _kind(link: Any) -> str:
        info = link.get_attr("IFLA_LINKINFO")
        return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else ""

    def _own(self, link: Any, name: str, alias: str) -> None:
        have = link.get_attr("IFLA_IFALIAS") or ""
        if have != alias:
            where = f"network namespace {self.netns!r}" if self.netns else "the host"
            raise AgentError(
                f"interface {name} already exists in {where} and is not warden's "
                f"(alias {have!r}, expected {alias!r}): rename the network or remove it"
            )

    def _quiet(self, name: str, index: int) -> None:
        """No chatter of the host's own toward the guests (or into their captures): warden's
        networks are IPv4 only (no IPv6 router solicitations or MLD), and the host side joins
        no multicast group (no IGMP reports). Forwarding between guests is not affected."""
        p = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
        if p.exists():
            p.write_text("1")
        self.ipr.link("set", index=index, flags=0, change=IFF_MULTICAST)

    def bridge(self, name: str, alias: str, mac: str, address: str, prefix: int) -> dict[str, Any]:
        link = self._lookup(name)
        if link is not None:
            self._own(link, name, alias)
            if self._kind(link) != "bridge":
                raise AgentError(f"interface {name} is not a bridge")
            idx = link["index"]
        else:
            self.ipr.link("add", ifname=name, kind="bridge", br_nf_call_iptables=1, address=mac)
            idx = self.ipr.link_lookup(ifname=name)[0]
            self.ipr.link("set", index=idx, ifalias=alias)
        self._quiet(name, idx)
        have = [
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in self.ipr.get_addr(family=socket.AF_INET, index=idx)
        ]
        for addr, plen in have:
            if (addr, plen) != (address, prefix):
                self.ipr.addr("del", index=idx, address=addr, prefixlen=plen)
        if (address, prefix) not in have:
            self.ipr.addr("add", index=idx, address=address, prefixlen=prefix)
        self.ipr.link("set", index=idx, state="up")
        return {"index": idx, "created": link is None}

    def links(self) -> list[dict[str, Any]]:
        out = []
        for link in self.ipr.get_links():
            stats = link.get_attr("IFLA_STATS64")
            out.append(
                {
                    "name": link.get_attr("IFLA_IFNAME"),
                    "index": link["index"],
                    "alias": link.get_attr("IFLA_IFALIAS") or "",
                    "kind": self._kind(link),
                    "master": link.get_attr("IFLA_MASTER"),
                    "up": bool(link["flags"] & 1),
                    "rx_bytes": stats["rx_bytes"] if stats is not None else 0,
                    "tx_bytes": stats["tx_bytes"] if stats is not None else 0,
                }
            )
        return out

    def addresses(self) -> list[list[Any]]:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in self.ipr.get_links()}
        return [
            [names.get(a["index"], "?"), a.get_attr("IFA_ADDRESS"), a["prefixlen"]]
            for a in self.ipr.get_addr(family=socket.AF_INET)
        ]

    def delete_link(self, name: str, alias_prefix: str) -> bool:
        link = self._lookup(name)
        if link is None:
            return False
        alias = link.get_attr("IFLA_IFALIAS") or ""
        if not alias.startswith(alias_prefix):
            raise AgentError(f"interface {name} is not warden's (alias {alias!r}); left alone")
        self.ipr.link("del", index=link["index"])
        return True

    def tap(self, name: str, alias: str, bridge: str) -> dict[str, Any]:
        """Create a (non-persistent) tap, put it on `bridge`, hand its fd to the daemon: the
        tap lives exactly as long as some process holds that fd (the guest's kernel)."""
        old = self._lookup(name)
        if old is not None:
            raise AgentError(
                f"tap {name} already exists (alias {old.get_attr('IFLA_IFALIAS')!r}): is an "
                "earlier boot of this guest still running?"
            )
        br = self.ipr.link_lookup(ifname=bridge)
        if not br:
            raise AgentError(f"bridge {bridge} does not exist")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
            idx = self.ipr.link_lookup(ifname=name)[0]
            self._quiet(name, idx)
            self.ipr.link("set", index=idx, ifalias=alias, master=br[0])
            self.ipr.link("set", index=idx, state="up")
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)
        return {"index": idx}

    # ---- ports, sysctls -----------------------------------------------------------------------
    def port_free(self, proto: str, port: int) -> dict[str, Any]:
        """Can something bind PROTO port `port` on every address here? (what a forward takes)"""
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                # TIME_WAIT leftovers are not "bound"; a listener or a bound socket is.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return {"free": False}
            raise
        finally:
            s.close()
        return {"free": True}

    def sysctl(self, path: str, value: str | None = None) -> str | None:
        p = Path("/proc/sys") / path
        if not p.exists():
            return None
        if value is not None:
            p.write_text(value)
        return p.read_text().strip()

    # ---- processes ----------------------------------------------------------------------------
    def spawn(
        self,
        argv: list[str],
        procs: list[str],
        log: str,
        stdout: str = "log",
        ready: str = "",
        ready_timeout: float = 10.0,
        die_with_agent: bool = False,
    ) -> dict[str, Any]:
        """Start `argv` in the cgroups whose cgroup.procs files are `procs`, stderr to `log`.

        stdout: "log" (same file), "pipe" (the read end is handed back) or "null".
        ready: wait until this text appears in the log (tcpdump's "listening on") before
        answering, so that the caller knows the process is working.
        """
        if shutil.which(argv[0]) is None:
            raise AgentError(f"{argv[0]} is missing (not in PATH)")
        logf = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        start_size = os.fstat(logf).st_size
        pipe_r: int | None = None
        out: int | None
        if stdout == "pipe":
            pipe_r, out = os.pipe2(os.O_CLOEXEC)
        elif stdout == "null":
            out = subprocess.DEVNULL
        else:
            out = logf

        def prepare() -> None:  # in the child, before exec; this process has no threads
            for f in procs:
                with open(f, "w") as cg:
                    cg.write("0")
            if die_with_agent:
                import ctypes

                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            os.setsid()

        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=logf, preexec_fn=prepare
            )
        finally:
            os.close(logf)
            if pipe_r is not None and isinstance(out, int) and out >= 0:
                os.close(out)
        self.children[proc.pid] = proc
        if ready:
            deadline = time.monotonic() + ready_timeout
            while True:
                with open(log, "rb") as f:
                    f.seek(start_size)
                    text = f.read().decode(errors="replace")
                if ready in text:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    if pipe_r is not None:
                        os.close(pipe_r)
                    tail = text.strip()[-800:] or "(no output)"
                    raise AgentError(f"{argv[0]} did not start: {tail}")
                time.sleep(0.01)
        pidfd = os.pidfd_open(proc.pid)
        os.set_inheritable(pidfd, False)
        self._fds.append(pidfd)
        if pipe_r is not None:
            self._fds.append(pipe_r)
        return {"pid": proc.pid, "start": start_time(proc.pid)}


def _enter(netns: str, create: bool) -> bool:
    """Join network namespace `netns` (creating it if asked); True if we created it."""
    if not netns:
        return False
    from pyroute2 import netns as nsmod

    created = False
    if netns not in nsmod.listnetns():
        if not create:
            raise AgentError(f"network namespace {netns!r} does not exist")
        nsmod.create(netns)
        created = True
    nsmod.setns(netns, flags=0)
    return created


def main() -> None:
    fd, netns, create = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon's Ctrl-C is not ours
    try:
        created = _enter(netns, create)
        agent = Agent(sock, netns, created)
    except Exception as e:
        socket.send_fds(sock, [json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()], [])
        sys.exit(1)
    hello = {
        "pid": os.getpid(),
        "netns": netns,
        "created": created,
        "inode": os.stat("/proc/self/ns/net").st_ino,
        "libnftables": agent.libnft is not None,
    }
    socket.send_fds(sock, [json.dumps({"ok": hello}).encode()], [])
    try:
        agent.serve()
    finally:
        agent.shutdown()


if __name__ == "__main__":
    main()

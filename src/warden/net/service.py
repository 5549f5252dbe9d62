"""Networks' life cycle in the daemon: build what the fleet asks for, wire guests, tear down.

One NetService per daemon. It owns the helper in the [host] network namespace (agent.py), the
state file (state.py) and the processes it starts there (a dnsmasq per network, always-on
captures), and it is the only writer of warden's nftables tables. Every change goes through
`self.lock`, so the ruleset written to the kernel always matches `state`:

    fleet applied     fleet_changed(): allocate addresses and marks, build missing bridges,
                      (re)start dnsmasq whose hosts changed, tear down networks nobody uses
    guest boots       guest_up() (BootHook.before_boot): taps opened and handed to the kernel,
                      the guest's rules added, honeypot capture started before the first frame
    guest gone        guest_down() (BootHook.after_exit): its rules removed, captures ended
    daemon stops      with guests still running: everything stays (they keep their network);
                      with none running: everything warden built is removed
    daemon starts     state.json read; guests that died meanwhile are forgotten; dnsmasq and
                      captures found again by pid and start time, restarted if gone
"""

import asyncio
import contextlib
import ipaddress
import logging
import os
import select
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warden import persona
from warden.daemon import machine as m
from warden.daemon.context import BootExtras
from warden.errors import Conflict, NotFound, SpecError, WardenError
from warden.host import cgroup
from warden.net import capture, dnsmasq, names, plan, procs, rules
from warden.net import state as statemod
from warden.net.client import AgentClient
from warden.net.errors import NetError
from warden.net.plan import GuestPlan, NetPlan
from warden.spec.fleet import Fleet
from warden.tasks import spawn

if TYPE_CHECKING:
    from warden.daemon.core import Daemon
    from warden.daemon.supervisor import Supervisor

log = logging.getLogger("warden.net")

STOP_GRACE = 5.0
RESTART_DELAY = 1.0


def _where(netns: str) -> str:
    return f"network namespace {netns!r}" if netns else "the host's own network namespace"


def _wait_fd(fd: int, timeout: float) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


class NetService:
    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon
        self.instance = daemon.layout.instance
        self.dir = daemon.layout.home / "net"
        self.state_path = self.dir / "state.json"
        self.state = statemod.State()
        self.agent: AgentClient | None = None
        self.lock = asyncio.Lock()
        self.dirty = False
        self.last_error = ""
        self.br_netfilter: bool | None = None
        self._pidfds: dict[str, int] = {}  # proc key -> pidfd being watched
        self._stopping = False
        self._loaded = False

    @property
    def ctx(self) -> Any:
        return self.daemon.c

    # ---- life cycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Read what the last daemon built (state.json). The daemon calls this before it checks
        a fleet file, so that a refused `warden up` is refused before any network is built."""
        try:
            self.state = statemod.load(self.state_path)
        except (ValueError, KeyError, TypeError) as e:
            self.ctx.event(None, "net-state-unreadable", error=str(e))
            self.state = statemod.State()
        self._loaded = True

    async def start(self) -> None:
        if not self._loaded:
            self.load()
        if self._wanted(self.ctx.fleet) or self.state.networks or self.state.live:
            self.dirty = True
            await self.reconcile()

    async def stop(self) -> None:
        self._stopping = True
        async with self.lock:
            try:
                if not self._guests_alive():
                    await self._teardown_all()
            except WardenError as e:
                self.ctx.event(None, "net-teardown-failed", error=str(e))
            finally:
                for key in list(self._pidfds):
                    self._unwatch(key)
                self._close_agent()

    def fleet_changed(self) -> None:
        self.dirty = True
        spawn(self.reconcile(), "net-reconcile")

    def _wanted(self, fleet: Fleet) -> bool:
        return bool(fleet.networks) or any(mm.nics for mm in fleet.machines)

    def _guests_alive(self) -> bool:
        """Is any guest with a NIC running or about to (it needs its network)?"""
        if self.state.live:
            return True
        return any(s.spec.nics and s.machine.state in m.LIVE for s in self.daemon.sups.values())

    def _save(self) -> None:
        statemod.save(self.state_path, self.state)

    # ---- the helper ---------------------------------------------------------------------------
    def _close_agent(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None

    async def _ensure_agent(self, netns: str, create: bool = True) -> AgentClient:
        if self.agent is not None and self.agent.alive() and self.agent.netns == netns:
            return self.agent
        self._close_agent()
        client = AgentClient(netns, create, self.dir / "agent.log")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, client.start)
        self.agent = client
        if client.hello.get("created"):
            self.state.netns = {"name": netns, "created": True}
            self.ctx.event(None, "netns-created", netns=netns)
            self._save()
        return client

    def _probe_agent(self, netns: str) -> AgentClient | None:
        """For checks at apply time (blocking): the running helper if it is in `netns`, else a
        new one if that namespace exists (never created by a check), else None."""
        if self.agent is not None and self.agent.alive() and self.agent.netns == netns:
            return self.agent
        if netns and not Path("/run/netns", netns).exists():
            return None
        return AgentClient(netns, False, self.dir / "agent.log").start()

    # ---- checks before a fleet is applied ----------------------------------------------------
    def check_fleet(self, new: Fleet) -> None:
        """Refuse a fleet the host cannot carry out; raises before anything changes."""
        if not self._wanted(new):
            return
        src = new.source
        for tool, pkg in (("nft", "nftables"), ("dnsmasq", "dnsmasq-base")):
            if shutil.which(tool) is None:
                what = "nftables" if tool == "nft" else tool
                raise NetError(
                    f"{src}: the fleet has networks but {what} is missing (no `{tool}` in "
                    f"PATH {os.environ.get('PATH', '')}): apt-get install {pkg}; nothing applied"
                )
        if any(mm.honeypot and mm.nics for mm in new.machines) and shutil.which("tcpdump") is None:
            raise NetError(
                f"{src}: honeypot guests are captured but tcpdump is missing: "
                "apt-get install tcpdump; nothing applied"
            )
        for mm in new.machines:
            ips = [n.ip for n in mm.nics if n.ip]
            dup = {ip for ip in ips if ips.count(ip) > 1}
            if dup:
                raise SpecError(
                    f"{src}: machine {mm.name!r}: nic ip {sorted(dup)[0]} is given to two of "
                    "its NICs; each NIC needs its own address"
                )
        plan.allocate(new, self.state.addresses)  # a full subnet fails here
        self._check_live_guests(new)
        agent = self._probe_agent(new.host.netns)
        if agent is None:
            return  # the namespace does not exist yet: nothing in it can conflict
        ok = False
        try:
            self._check_host(new, agent)
            ok = True
        finally:
            if agent is not self.agent:
                if ok and self.agent is None and not self.lock.locked():
                    self.agent = agent  # the reconcile after this apply will need it
                else:
                    agent.close()  # a refused fleet leaves no helper behind either

    def _check_live_guests(self, new: Fleet) -> None:
        live = self.state.live
        if not live:
            return
        cur = self.state.netns.get("name", "")
        if new.host.netns != cur:
            raise Conflict(
                f"{new.source}: [host] netns changes from {cur!r} to {new.host.netns!r} while "
                f"guests use networks there ({', '.join(sorted(live))}); stop them first"
            )
        nets = {n.name: n for n in new.networks}
        for g in self.state.live_guests():
            if new.machine(g.name) is None:
                continue  # it is being removed: its network goes when it has stopped
            for nic in g.nics:
                built = self.state.networks.get(nic.network, {})
                n = nets.get(nic.network)
                if n is None or n.subnet != built.get("subnet") or n.nat != built.get("nat"):
                    raise Conflict(
                        f"{new.source}: network {nic.network!r} would change or go while "
                        f"{g.name} runs on it; stop {g.name} first"
                    )

    def _check_host(self, new: Fleet, agent: AgentClient) -> None:
        where = _where(new.host.netns)
        try:
            listing = agent.call("nft", args=["list", "tables"])
        except NetError as e:
            raise NetError(f"{new.source}: nftables does not work in {where}: {e}") from None
        for item in (listing or {}).get("nftables", []):
            table = item.get("table")
            if table and table.get("name") == names.TABLE:
                chains = agent.call("nft", args=["list", "table", table["family"], names.TABLE])
                others = rules.owners(chains) - {names.owner_chain(self.instance)}
                if others:
                    raise Conflict(
                        f"{new.source}: {where} already holds the nftables tables of another "
                        f"warden home ({', '.join(sorted(others))}); give this fleet its own "
                        "[host] netns"
                    )
        ours = names.alias_prefix(self.instance)
        links = agent.call("links")
        by_name = {link["name"]: link for link in links}
        for n in new.networks:
            br = by_name.get(names.bridge(n.name))
            if br is not None and br["alias"] != names.bridge_alias(self.instance, n.name):
                raise Conflict(
                    f"{new.source}: network {n.name!r}: interface {br['name']} already exists "
                    f"in {where} and is not this warden's (alias {br['alias']!r})"
                )
        own_ifaces = {link["name"] for link in links if link["alias"].startswith(ours)}
        for ifname, addr, plen in agent.call("addresses"):
            if ifname in own_ifaces:
                continue
            have = ipaddress.IPv4Interface(f"{addr}/{plen}").network
            for n in new.networks:
                if have.overlaps(ipaddress.IPv4Network(n.subnet)):
                    raise SpecError(
                        f"{new.source}: network {n.name!r}: subnet {n.subnet} overlaps "
                        f"{addr}/{plen} on {ifname} in {where}; choose another subnet"
                    )
        installed = {(f.proto, f.host_port) for g in self.state.live_guests() for f in g.forwards}
        for mm in new.machines:
            for f in mm.forwards:
                if (f.proto, f.host_port) in installed:
                    continue
                if not agent.call("port_free", proto=f.proto, port=f.host_port)["free"]:
                    raise Conflict(
                        f"{new.source}: machine {mm.name!r}: forward {f}: {f.proto} port "
                        f"{f.host_port} is already bound in {where} (a service listens "
                        "there); choose another host port"
                    )

    # ---- reconcile -----------------------------------------------------------------------------
    async def reconcile(self) -> None:
        async with self.lock:
            try:
                await self._reconcile_locked()
            except WardenError as e:
                self.last_error = str(e)
                self.ctx.event(None, "net-failed", error=str(e))
                log.warning("networks: %s", e)

    async def _reconcile_locked(self) -> None:
        self.dirty = False
        fleet: Fleet = self.ctx.fleet
        self._forget_dead_guests()
        netns = fleet.host.netns
        if self.state.netns.get("name", "") != netns and self.state.networks:
            if self.state.live:
                raise NetError(
                    f"[host] netns changed to {netns!r} but guests still run in "
                    f"{self.state.netns.get('name')!r}; stop them and apply again"
                )
            await self._teardown_all()
        if not self._wanted(fleet) and not self.state.live:
            await self._teardown_all()
            return
        agent = await self._ensure_agent(netns)
        if self.state.netns.get("name", "") != netns:
            self.state.netns = {"name": netns, "created": bool(agent.hello.get("created"))}
        self.state.addresses = plan.allocate(fleet, self.state.addresses)
        self.state.marks = plan.assign_marks(fleet, self.state.marks)
        self.state.cut = [n for n in self.state.cut if fleet.machine(n) or n in self.state.live]
        wanted = {n.name: NetPlan.of(n) for n in fleet.networks}
        in_use = {nic.network for g in self.state.live_guests() for nic in g.nics}
        for name, built in list(self.state.networks.items()):
            w = wanted.get(name)
            same = w is not None and (w.subnet, w.nat) == (built["subnet"], built["nat"])
            if not same and name not in in_use:
                await self._teardown_network(agent, name)
        if wanted:
            await agent.acall("sysctl", path="net/ipv4/ip_forward", value="1")
            self.br_netfilter = (
                await agent.acall("sysctl", path="net/bridge/bridge-nf-call-iptables")
            ) is not None
        for name, net in wanted.items():
            have = self.state.networks.get(name)
            if have is not None and (have["subnet"], have["nat"]) != (net.subnet, net.nat):
                continue  # still used by a running guest with the old definition
            await self._build_network(agent, net, fleet)
        await self._apply_rules()
        self._save()
        self.last_error = ""

    def _forget_dead_guests(self) -> None:
        for name in list(self.state.live):
            sup = self.daemon.sups.get(name)
            if sup is None or sup.machine.state not in m.LIVE:
                del self.state.live[name]
                self._stop_proc_prefix(f"cap:{name}:")
                self._remove_group(names.capture_cgroup(name))

    async def _apply_rules(self) -> None:
        assert self.agent is not None
        nets = [
            NetPlan(name, b["subnet"], b["nat"]) for name, b in sorted(self.state.networks.items())
        ]
        cmds = rules.build(self.instance, nets, self.state.live_guests(), set(self.state.cut))
        await self.agent.acall("nft", cmds=cmds)

    def _mac(self, fleet: Fleet, machine: str, nic: int) -> str:
        """A disguised machine's NICs carry its persona's MACs (a real NIC vendor's OUI)."""
        p = persona.fleet_of(self.daemon.layout, fleet).get(machine)
        if p is not None and nic < len(p.nics):
            return p.nics[nic].mac
        return names.mac(self.instance, machine, nic)

    def _hosts(self, fleet: Fleet, net: str) -> list[dnsmasq.Host]:
        out = []
        for mm in fleet.machines:
            addrs = self.state.addresses.get(mm.name, [])
            for i, nic in enumerate(mm.nics):
                if nic.network == net and i < len(addrs):
                    out.append(dnsmasq.Host(self._mac(fleet, mm.name, i), addrs[i], mm.name))
        return out

    async def _build_network(self, agent: AgentClient, net: NetPlan, fleet: Fleet) -> None:
        res = await agent.acall(
            "bridge",
            name=net.bridge,
            alias=names.bridge_alias(self.instance, net.name),
            mac=names.mac(self.instance, f"net:{net.name}", 0),
            address=net.gateway,
            prefix=net.prefix,
        )
        hosts = [[h.mac, h.ip, h.name] for h in self._hosts(fleet, net.name)]
        built = self.state.networks.get(net.name)
        self.state.networks[net.name] = {"subnet": net.subnet, "nat": net.nat, "hosts": hosts}
        key = f"dns:{net.name}"
        running = self._proc_alive(key)
        if running and built is not None and built.get("hosts") == hosts:
            self._watch_existing(key)
            return
        if running:
            await self._stop_proc(key)
        await self._start_dnsmasq(agent, net, hosts)
        if res.get("created"):
            self.ctx.event(None, "net-up", network=net.name, subnet=net.subnet, bridge=net.bridge)

    async def _start_dnsmasq(
        self, agent: AgentClient, net: NetPlan, hosts: list[list[str]]
    ) -> None:
        binary = shutil.which("dnsmasq")
        if binary is None:
            raise NetError("dnsmasq is missing: apt-get install dnsmasq-base")
        argv = dnsmasq.argv(binary, net, [dnsmasq.Host(*h) for h in hosts], upstream=net.nat)
        group = self._group(names.network_cgroup(net.name))
        res, fds = await agent.acall_fds(
            "spawn",
            argv=argv,
            procs=[str(p) for p in group.procs_files()],
            log=str(self.dir / f"dnsmasq-{net.name}.log"),
            ready="started, version",
        )
        self._adopt(f"dns:{net.name}", res, fds)

    async def _teardown_network(self, agent: AgentClient | None, name: str) -> None:
        await self._stop_proc(f"dns:{name}")
        self._remove_group(names.network_cgroup(name))
        if agent is not None:
            await agent.acall(
                "delete_link",
                name=names.bridge(name),
                alias_prefix=names.alias_prefix(self.instance),
            )
        self.state.networks.pop(name, None)
        self.ctx.event(None, "net-down", network=name)

    async def _teardown_all(self) -> None:
        """Remove everything warden built (no guest may be running on it)."""
        st = self.state
        if not (st.networks or st.live or st.procs or st.netns.get("created") or self.agent):
            return
        for name in list(self.state.live):
            self._stop_proc_prefix(f"cap:{name}:")
            self._remove_group(names.capture_cgroup(name))
        self.state.live.clear()
        netns = self.state.netns.get("name", "")
        agent: AgentClient | None = None
        if self.state.networks or self.agent is not None:
            try:  # never create the namespace to empty it: if it is gone, so is all in it
                agent = await self._ensure_agent(netns, create=False)
            except NetError as e:
                if self.state.networks:
                    raise
                log.info("no helper for teardown: %s", e)
        if agent is not None:
            await agent.acall("nft", cmds=rules.remove())
        for name in list(self.state.networks):
            await self._teardown_network(agent, name)
        for key in list(self.state.procs):
            await self._stop_proc(key)
        self._close_agent()
        if self.state.netns.get("created") and netns:
            from pyroute2 import netns as nsmod

            with contextlib.suppress(OSError):
                nsmod.remove(netns)
            self.ctx.event(None, "netns-removed", netns=netns)
        self.state.netns = {"name": "", "created": False}
        self._save()

    # ---- processes (dnsmasq, captures) --------------------------------------------------------
    def _group(self, name: str) -> cgroup.Cgroup:
        g = cgroup.Cgroup(self.ctx.hierarchy, self.instance, name)
        g.create()
        return g

    def _remove_group(self, name: str) -> None:
        g = cgroup.Cgroup(self.ctx.hierarchy, self.instance, name)
        if not g.exists():
            return
        if g.populated():
            g.kill()
            g.wait_empty(5)
        g.remove()

    def _proc_alive(self, key: str) -> bool:
        p = self.state.procs.get(key)
        return p is not None and procs.alive(int(p["pid"]), p.get("start"))

    def _adopt(self, key: str, res: dict[str, Any], fds: list[int]) -> None:
        """A process the helper just started: keep its pid and watch its pidfd (fds[0])."""
        self.state.procs[key] = {"pid": res["pid"], "start": res["start"]}
        self._unwatch(key)
        self._watch(key, fds[0])
        for fd in fds[1:]:
            os.close(fd)
        self._save()

    def _watch_existing(self, key: str) -> None:
        if key in self._pidfds:
            return
        p = self.state.procs[key]
        try:
            fd = os.pidfd_open(int(p["pid"]))
        except ProcessLookupError:
            return
        if procs.start_time(int(p["pid"])) != p.get("start"):
            os.close(fd)
            return
        self._watch(key, fd)

    def _watch(self, key: str, pidfd: int) -> None:
        self._pidfds[key] = pidfd
        asyncio.get_running_loop().add_reader(pidfd, self._proc_exited, key)

    def _unwatch(self, key: str) -> None:
        fd = self._pidfds.pop(key, None)
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _proc_exited(self, key: str) -> None:
        self._unwatch(key)
        self.state.procs.pop(key, None)
        if self._stopping:
            return
        self._save()
        kind, _, rest = key.partition(":")
        self.ctx.event(rest.split(":")[0] if kind == "cap" else None, f"{kind}-exited", key=key)
        if kind == "dns":
            spawn(self._restart_later(), f"net-restart:{key}")

    async def _restart_later(self) -> None:
        await asyncio.sleep(RESTART_DELAY)
        if not self._stopping:
            self.dirty = True
            await self.reconcile()

    async def _stop_proc(self, key: str) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE, a process we started (by pidfd)."""
        self._unwatch(key)
        p = self.state.procs.pop(key, None)
        if p is None or not procs.alive(int(p["pid"]), p.get("start")):
            return
        try:
            fd = os.pidfd_open(int(p["pid"]))
        except ProcessLookupError:
            return
        try:
            if procs.start_time(int(p["pid"])) != p.get("start"):
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGTERM)
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, _wait_fd, fd, STOP_GRACE):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                await loop.run_in_executor(None, _wait_fd, fd, STOP_GRACE)
        finally:
            os.close(fd)

    def _stop_proc_prefix(self, prefix: str) -> None:
        for key in [k for k in self.state.procs if k.startswith(prefix)]:
            self._unwatch(key)
            p = self.state.procs.pop(key)
            if procs.alive(int(p["pid"]), p.get("start")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(p["pid"]), signal.SIGTERM)

    # ---- guests -------------------------------------------------------------------------------
    async def guest_up(self, sup: "Supervisor", extras: BootExtras) -> None:
        spec = sup.spec
        if not spec.nics:
            return
        async with self.lock:
            if self.dirty or self.agent is None or not self.agent.alive():
                await self._reconcile_locked()
            agent = self.agent
            assert agent is not None
            fleet: Fleet = self.ctx.fleet
            where = _where(fleet.host.netns)
            for nic in spec.nics:
                if nic.network not in self.state.networks:
                    raise NetError(
                        f"{spec.name}: network {nic.network!r} is not up in {where}"
                        + (f": {self.last_error}" if self.last_error else "")
                    )
            for f in spec.forwards:
                free = await agent.acall("port_free", proto=f.proto, port=f.host_port)
                if not free["free"]:
                    raise NetError(
                        f"{spec.name}: forward {f}: {f.proto} port {f.host_port} is already "
                        f"bound in {where}; free it or choose another host port"
                    )
            fleet = self.daemon.c.fleet
            g = plan.guest(
                self.instance,
                spec,
                self.state.addresses[spec.name],
                self.state.marks[spec.name],
                [self._mac(fleet, spec.name, i) for i in range(len(spec.nics))],
            )
            for p in g.nics:
                _, fds = await agent.acall_fds(
                    "tap",
                    name=p.tap,
                    alias=names.tap_alias(self.instance, spec.name, p.index),
                    bridge=names.bridge(p.network),
                )
                extras.fds.append(fds[0])  # closed by the supervisor once the kernel has it
                extras.kernel_args.append(plan.kernel_arg(p, fds[0]))
            self.state.live[spec.name] = statemod.guest_to_json(g)
            extras.cleanup.append(self._cleanup_failed_boot(spec.name))
            await self._apply_rules()
            if spec.honeypot:
                await self._start_captures(agent, sup, g)
            nets = {n: NetPlan(n, b["subnet"], b["nat"]) for n, b in self.state.networks.items()}
            extras.network.update(plan.seed_network(g, nets))
            self._save()

    def _cleanup_failed_boot(self, name: str) -> Callable[[], None]:
        def cleanup() -> None:
            # The boot failed after guest_up: forget the guest (its taps vanish with their
            # fds). Runs on the event loop; the helper call is short.
            self.state.live.pop(name, None)
            self._stop_proc_prefix(f"cap:{name}:")
            if self.agent is not None and self.agent.alive():
                nets = [
                    NetPlan(n, b["subnet"], b["nat"])
                    for n, b in sorted(self.state.networks.items())
                ]
                cmds = rules.build(
                    self.instance, nets, self.state.live_guests(), set(self.state.cut)
                )
                self.agent.call("nft", cmds=cmds)
            self._save()

        return cleanup

    async def _start_captures(self, agent: AgentClient, sup: "Supervisor", g: GuestPlan) -> None:
        binary = shutil.which("tcpdump")
        if binary is None:
            raise NetError(
                f"{g.name} is a honeypot but tcpdump is missing: apt-get install tcpdump"
            )
        quota: int = self.ctx.fleet.logs.quota
        directory = sup.files.logs / "pcap"
        directory.mkdir(parents=True, exist_ok=True)
        boot = sup.boot + 1  # the supervisor counts this boot after the hooks
        removed = capture.prune(directory, quota // 2, boot)
        if removed:
            self.ctx.event(g.name, "capture-pruned", files=len(removed))
        size = capture.ring(quota, len(g.nics))
        group = self._group(names.capture_cgroup(g.name))
        for nic in g.nics:
            out = directory / capture.base_name(boot, nic.index)
            argv = capture.tcpdump_argv(binary, nic.tap, str(out), ring_size=size)
            res, fds = await agent.acall_fds(
                "spawn",
                argv=argv,
                procs=[str(p) for p in group.procs_files()],
                log=str(directory / "tcpdump.log"),
                ready="listening on",
            )
            self._adopt(f"cap:{g.name}:{nic.index}", res, fds)
            self.ctx.event(g.name, "capture-started", nic=nic.index, file=str(out))

    async def guest_down(self, sup: "Supervisor") -> None:
        name = sup.name
        async with self.lock:
            raw = self.state.live.pop(name, None)
            if raw is None:
                return
            g = statemod.guest_from_json(raw)
            for key in [k for k in self.state.procs if k.startswith(f"cap:{name}:")]:
                await self._stop_proc(key)  # normally gone already: its tap vanished
            self._remove_group(names.capture_cgroup(name))
            try:
                agent = await self._ensure_agent(self.state.netns.get("name", ""), create=False)
                for tap in g.taps:  # non-persistent taps vanish with the kernel's fd
                    if await agent.acall(
                        "delete_link", name=tap, alias_prefix=names.alias_prefix(self.instance)
                    ):
                        self.ctx.event(name, "tap-left-behind", tap=tap)
                # Rules without the guest; networks the fleet dropped go if now unused.
                await self._reconcile_locked()
            finally:
                self._save()

    # ---- control ------------------------------------------------------------------------------
    def _machine(self, name: str) -> "Supervisor":
        sup = self.daemon.sup(name)
        if not sup.spec.nics:
            raise Conflict(f"{name} has no NIC (nics = [...] in the fleet file)")
        return sup

    async def set_cut(self, name: str, cut: bool) -> dict[str, Any]:
        self._machine(name)
        async with self.lock:
            was = name in self.state.cut
            if cut and not was:
                self.state.cut.append(name)
            elif not cut and was:
                self.state.cut.remove(name)
            raw = self.state.live.get(name)
            if raw is not None and cut != was:
                assert self.agent is not None
                taps = statemod.guest_from_json(raw).taps
                try:
                    await self.agent.acall(
                        "nft", cmds=rules.cut_element("add" if cut else "delete", taps)
                    )
                except NetError:
                    # put the state back: the kernel's ruleset did not change
                    if cut:
                        self.state.cut.remove(name)
                    else:
                        self.state.cut.append(name)
                    raise
            self._save()
        self.ctx.event(name, "net-cut" if cut else "net-restore", running=raw is not None)
        return {"name": name, "cut": cut, "running": raw is not None, "changed": cut != was}

    async def ls(self) -> dict[str, Any]:
        fleet: Fleet = self.ctx.fleet
        stats: dict[str, dict[str, Any]] = {}
        if self.agent is not None and self.agent.alive():
            with contextlib.suppress(NetError):
                stats = {link["name"]: link for link in await self.agent.acall("links")}
        networks = []
        for n in fleet.networks:
            p = NetPlan.of(n)
            dns = self.state.procs.get(f"dns:{n.name}")
            networks.append(
                {
                    "name": n.name,
                    "subnet": n.subnet,
                    "gateway": p.gateway,
                    "nat": n.nat,
                    "bridge": p.bridge,
                    "up": n.name in self.state.networks and p.bridge in stats,
                    "dnsmasq": dns["pid"] if dns else None,
                }
            )
        guests = []
        for mm in fleet.machines:
            if not mm.nics:
                continue
            sup = self.daemon.sups.get(mm.name)
            addrs = self.state.addresses.get(mm.name, [])
            raw = self.state.live.get(mm.name)
            nics = []
            for i, nic in enumerate(mm.nics):
                tap = names.tap(mm.name, i)
                link = stats.get(tap) if raw is not None else None
                nics.append(
                    {
                        "nic": i,
                        "network": nic.network,
                        "ip": addrs[i] if i < len(addrs) else "",
                        "dhcp": not nic.ip,
                        "mac": self._mac(fleet, mm.name, i),
                        "tap": tap if link is not None else None,
                        "rx_bytes": link["rx_bytes"] if link else None,
                        "tx_bytes": link["tx_bytes"] if link else None,
                    }
                )
            guests.append(
                {
                    "name": mm.name,
                    "state": str(sup.machine.state) if sup else "absent",
                    "egress": mm.egress,
                    "forwards": [str(f) for f in mm.forwards],
                    "cut": mm.name in self.state.cut,
                    "wired": raw is not None,
                    "capture": sorted(
                        k for k in self.state.procs if k.startswith(f"cap:{mm.name}:")
                    ),
                    "nics": nics,
                }
            )
        return {
            "netns": fleet.host.netns,
            "netns_created": bool(self.state.netns.get("created")),
            "br_netfilter": self.br_netfilter,
            "error": self.last_error,
            "networks": networks,
            "guests": guests,
        }

    async def open_capture(
        self, name: str, nic: int, count: int | None
    ) -> tuple[str, int, int, dict[str, Any]]:
        """Start an on-demand capture: (tap, pidfd, pipe fd of the pcap stream, spawn info)."""
        sup = self._machine(name)
        async with self.lock:
            raw = self.state.live.get(name)
            if raw is None or self.agent is None:
                raise Conflict(f"{name} is {sup.machine.state}: only a running guest has taps")
            g = statemod.guest_from_json(raw)
            if not 0 <= nic < len(g.nics):
                raise NotFound(f"{name} has no NIC {nic} (it has {len(g.nics)})")
            binary = shutil.which("tcpdump")
            if binary is None:
                raise NetError("tcpdump is missing: apt-get install tcpdump")
            tap = g.nics[nic].tap
            group = self._group(names.capture_cgroup(name))
            self.dir.mkdir(parents=True, exist_ok=True)
            res, fds = await self.agent.acall_fds(
                "spawn",
                argv=capture.tcpdump_argv(binary, tap, "-", count=count),
                procs=[str(p) for p in group.procs_files()],
                log=str(self.dir / "capture.log"),
                stdout="pipe",
                ready="listening on",
                die_with_agent=True,
            )
        self.ctx.event(name, "capture-started", nic=nic, tap=tap, on_demand=True)
        return tap, fds[0], fds[1], res

    def close_capture(self, name: str) -> None:
        g = cgroup.Cgroup(self.ctx.hierarchy, self.instance, names.capture_cgroup(name))
        if g.exists() and not g.populated() and name not in self.state.live:
            g.remove()

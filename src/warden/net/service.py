"""Networks' life cycle in the daemon: build what the fleet asks for, wire guests, tear down.

One NetService per daemon. It owns the helper in the [host] network namespace (agent.py), the
state file (state.py) and the processes it starts there (a dnsmasq per network, always-on
captures), and it is the only writer of warden's nftables tables. Every change goes through
`self.lock`, so the ruleset written to the kernel always matches `state`:

    fleet applied     fleet_changed(): allocate addresses and marks, build missing bridges,
                      (re)start dnsmasq whose hosts changed, tear down networks nobody uses
    guest boots       guest_up() (before_boot): taps opened and handed to the kernel, the
                      guest's rules added, honeypot capture started before the first frame
    guest gone        guest_down() (after_exit): its rules removed, captures ended
    daemon stops      with guests still running: everything stays (they keep their network);
                      with none running: everything warden built is removed
    daemon starts     state.json read; guests that died meanwhile are forgotten; dnsmasq and
                      captures found again by pid and start time, restarted if gone
"""

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warden import persona
from warden.daemon import machine as m
from warden.daemon.seam import BootExtras, Core, Guest
from warden.errors import WardenError
from warden.host import cgroup
from warden.net import capture, checks, dnsmasq, names, plan, rules
from warden.net import state as statemod
from warden.net.client import AgentClient
from warden.net.control import Control
from warden.net.errors import NetError
from warden.net.plan import GuestPlan, NetPlan
from warden.net.watch import Watch, alive
from warden.spec.fleet import Fleet
from warden.tasks import spawn

log = logging.getLogger("warden.net")

RESTART_DELAY = 1.0
# How the service gets its helper: AgentClient(netns, create, log file), not yet started.
# Tests give a fake here (tests/net/test_service_driver.py).
AgentFactory = Callable[[str, bool, Path], AgentClient]


class NetService(Control):
    def __init__(self, core: Core, agent_factory: AgentFactory = AgentClient):
        self.core = core
        self.instance = core.layout.instance
        self.dir = core.layout.home / "net"
        self.state_path = self.dir / "state.json"
        self.state = statemod.State()
        self.agent: AgentClient | None = None
        self.new_agent = agent_factory
        self.lock = asyncio.Lock()
        self.dirty = False
        self.last_error = ""
        self.br_netfilter: bool | None = None
        self.procs = Watch(self._proc_exited)
        self._stopping = False
        self._loaded = False

    # ---- life cycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Read what the last daemon built (state.json). The daemon calls this before it checks
        a fleet file, so that a refused `warden up` is refused before any network is built."""
        try:
            self.state = statemod.load(self.state_path)
        except (ValueError, KeyError, TypeError) as e:
            self.core.event(None, "net-state-unreadable", error=str(e))
            self.state = statemod.State()
        self._loaded = True

    async def start(self) -> None:
        if not self._loaded:
            self.load()
        if checks.wanted(self.core.fleet) or self.state.networks or self.state.live:
            self.dirty = True
            await self.reconcile()

    async def stop(self) -> None:
        self._stopping = True
        async with self.lock:
            try:
                if not self._guests_alive():
                    await self._teardown_all()
            except WardenError as e:
                self.core.event(None, "net-teardown-failed", error=str(e))
            finally:
                self.procs.unwatch_all()
                await self._close_agent()

    def fleet_changed(self) -> None:
        self.dirty = True
        spawn(self.reconcile(), "net-reconcile")

    def _guests_alive(self) -> bool:
        """Is any guest with a NIC running or about to (it needs its network)?"""
        if self.state.live:
            return True
        return any(g.spec.nics and g.state in m.LIVE for g in self.core.guests)

    def _save(self) -> None:
        statemod.save(self.state_path, self.state)

    # ---- the helper ---------------------------------------------------------------------------
    async def _close_agent(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            await asyncio.get_running_loop().run_in_executor(None, agent.close)  # waits for it

    def _agent_in(self, netns: str) -> AgentClient | None:
        """The running helper, if it runs in `netns`."""
        a = self.agent
        return a if a is not None and a.alive() and a.netns == netns else None

    async def _ensure_agent(self, netns: str, create: bool = True) -> AgentClient:
        running = self._agent_in(netns)
        if running is not None:
            return running
        await self._close_agent()
        client = self.new_agent(netns, create, self.dir / "agent.log")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, client.start)
        self.agent = client
        if client.hello.get("created"):
            self.state.netns = {"name": netns, "created": True}
            self.core.event(None, "netns-created", netns=netns)
            self._save()
        return client

    def _probe_agent(self, netns: str) -> AgentClient | None:
        """For checks at apply time (blocking: run off the loop): a new helper in `netns` if
        that namespace exists (never created by a check), else None."""
        if netns and not Path("/run/netns", netns).exists():
            return None
        return self.new_agent(netns, False, self.dir / "agent.log").start()

    # ---- checks before a fleet is applied ----------------------------------------------------
    async def check_fleet(self, new: Fleet) -> None:
        """Refuse a fleet the host cannot carry out; raises before anything changes. The
        helper's answers are awaited (a helper that does not answer fails the check after
        its timeout): the loop serves everything else meanwhile."""
        if not checks.wanted(new):
            return
        checks.check_tools(new)
        checks.check_addresses(new)
        plan.allocate(new, self.state.addresses)  # a full subnet fails here
        checks.check_live_guests(new, self.state)
        loop = asyncio.get_running_loop()
        agent = self._agent_in(new.host.netns)
        if agent is None:
            agent = await loop.run_in_executor(None, self._probe_agent, new.host.netns)
            if agent is None:
                return  # the namespace does not exist yet: nothing in it can conflict
        ok = False
        try:
            checks.check_host(new, self.instance, await self._host_facts(new, agent))
            ok = True
        finally:
            if agent is not self.agent:
                if ok and self.agent is None and not self.lock.locked():
                    self.agent = agent  # the reconcile after this apply will need it
                else:
                    # a refused fleet leaves no helper behind either
                    await loop.run_in_executor(None, agent.close)

    async def _host_facts(self, new: Fleet, agent: AgentClient) -> checks.HostFacts:
        """What the helper says of the namespace the fleet's networks would live in."""
        facts = checks.HostFacts()
        try:
            listing = await agent.acall("nft", args=["list", "tables"])
        except NetError as e:
            at = checks.where(new.host.netns)
            raise NetError(f"{new.source}: nftables does not work in {at}: {e}") from None
        for item in (listing or {}).get("nftables", []):
            table = item.get("table")
            if table and table.get("name") == names.TABLE:
                args = ["list", "table", table["family"], names.TABLE]
                facts.chains.append(await agent.acall("nft", args=args))
        facts.links = await agent.acall("links")
        facts.addresses = await agent.acall("addresses")
        for proto, port in checks.ports_to_probe(new, self.state):
            if not (await agent.acall("port_free", proto=proto, port=port))["free"]:
                facts.busy_ports.add((proto, port))
        return facts

    # ---- reconcile -----------------------------------------------------------------------------
    async def reconcile(self) -> None:
        async with self.lock:
            try:
                await self._reconcile_locked()
            except WardenError as e:
                self.last_error = str(e)
                self.core.event(None, "net-failed", error=str(e))
                log.warning("networks: %s", e)

    async def _reconcile_locked(self) -> None:
        self.dirty = False
        fleet: Fleet = self.core.fleet
        await self._forget_dead_guests()
        netns = fleet.host.netns
        if self.state.netns.get("name", "") != netns and self.state.networks:
            if self.state.live:
                raise NetError(
                    f"[host] netns changed to {netns!r} but guests still run in "
                    f"{self.state.netns.get('name')!r}; stop them and apply again"
                )
            await self._teardown_all()
        if not checks.wanted(fleet) and not self.state.live:
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

    async def _forget_dead_guests(self) -> None:
        for name in list(self.state.live):
            guest = self.core.guests.get(name)
            if guest is None or guest.state not in m.LIVE:
                del self.state.live[name]
                self.procs.stop_prefix(self.state.procs, f"cap:{name}:")
                await self._remove_group(names.capture_cgroup(name))

    async def _apply_rules(self) -> None:
        assert self.agent is not None
        nets = [
            NetPlan(name, b["subnet"], b["nat"]) for name, b in sorted(self.state.networks.items())
        ]
        cmds = rules.build(self.instance, nets, self.state.live_guests(), set(self.state.cut))
        await self.agent.acall("nft", cmds=cmds)

    def _mac(self, fleet: Fleet, machine: str, nic: int) -> str:
        """A disguised machine's NICs carry its persona's MACs (a real NIC vendor's OUI)."""
        p = persona.fleet_of(self.core.layout, fleet).get(machine)
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
        running = alive(self.state.procs.get(key))
        if running and built is not None and built.get("hosts") == hosts:
            self.procs.watch_existing(self.state.procs, key)
            return
        if running:
            await self.procs.stop(self.state.procs, key)
        await self._start_dnsmasq(agent, net, hosts)
        if res.get("created"):
            self.core.event(None, "net-up", network=net.name, subnet=net.subnet, bridge=net.bridge)

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
        await self.procs.stop(self.state.procs, f"dns:{name}")
        await self._remove_group(names.network_cgroup(name))
        if agent is not None:
            await agent.acall(
                "delete_link",
                name=names.bridge(name),
                alias_prefix=names.alias_prefix(self.instance),
            )
        self.state.networks.pop(name, None)
        self.core.event(None, "net-down", network=name)

    async def _teardown_all(self) -> None:
        """Remove everything warden built (no guest may be running on it)."""
        st = self.state
        if not (st.networks or st.live or st.procs or st.netns.get("created") or self.agent):
            return
        for name in list(self.state.live):
            self.procs.stop_prefix(self.state.procs, f"cap:{name}:")
            await self._remove_group(names.capture_cgroup(name))
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
            await self.procs.stop(self.state.procs, key)
        await self._close_agent()
        if self.state.netns.get("created") and netns:
            from pyroute2 import netns as nsmod

            loop = asyncio.get_running_loop()
            with contextlib.suppress(OSError):
                await loop.run_in_executor(None, nsmod.remove, netns)
            self.core.event(None, "netns-removed", netns=netns)
        self.state.netns = {"name": "", "created": False}
        self._save()

    # ---- processes (dnsmasq, captures) --------------------------------------------------------
    def _group(self, name: str) -> cgroup.Cgroup:
        g = cgroup.Cgroup(self.core.hierarchy, self.instance, name)
        g.create()
        return g

    async def _remove_group(self, name: str) -> None:
        g = cgroup.Cgroup(self.core.hierarchy, self.instance, name)
        if not g.exists():
            return
        if g.populated():
            g.kill()
            await g.emptied(5)
        g.remove()

    def _adopt(self, key: str, res: dict[str, Any], fds: list[int]) -> None:
        """A process the helper just started: kept in state.json and watched."""
        self.procs.adopt(self.state.procs, key, res, fds)
        self._save()

    def _proc_exited(self, key: str) -> None:
        self.state.procs.pop(key, None)
        if self._stopping:
            return
        self._save()
        kind, _, rest = key.partition(":")
        self.core.event(rest.split(":")[0] if kind == "cap" else None, f"{kind}-exited", key=key)
        if kind == "dns":
            spawn(self._restart_later(), f"net-restart:{key}")

    async def _restart_later(self) -> None:
        await asyncio.sleep(RESTART_DELAY)
        if not self._stopping:
            self.dirty = True
            await self.reconcile()

    # ---- guests -------------------------------------------------------------------------------
    async def guest_up(self, sup: Guest, extras: BootExtras) -> None:
        spec = sup.spec
        if not spec.nics:
            return
        async with self.lock:
            if self.dirty or self.agent is None or not self.agent.alive():
                await self._reconcile_locked()
            agent = self.agent
            assert agent is not None
            fleet: Fleet = self.core.fleet
            where = checks.where(fleet.host.netns)
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
            # fds) at once; the ruleset without it is written by a task, under the lock.
            self.state.live.pop(name, None)
            self.procs.stop_prefix(self.state.procs, f"cap:{name}:")
            self._save()
            spawn(self._rules_without(name), f"net-forget:{name}")

        return cleanup

    async def _rules_without(self, name: str) -> None:
        async with self.lock:
            if name in self.state.live or self.agent is None or not self.agent.alive():
                return  # booted again meanwhile (its rules are in), or no helper to tell
            try:
                await self._apply_rules()
            except NetError as e:
                self.core.event(name, "net-failed", error=str(e))

    async def _start_captures(self, agent: AgentClient, sup: Guest, g: GuestPlan) -> None:
        binary = shutil.which("tcpdump")
        if binary is None:
            raise NetError(
                f"{g.name} is a honeypot but tcpdump is missing: apt-get install tcpdump"
            )
        quota: int = self.core.fleet.logs.quota
        directory = sup.files.logs / "pcap"
        directory.mkdir(parents=True, exist_ok=True)
        boot = sup.boot + 1  # the supervisor counts this boot after the hooks
        removed = capture.prune(directory, quota // 2, boot)
        if removed:
            self.core.event(g.name, "capture-pruned", files=len(removed))
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
            self.core.event(g.name, "capture-started", nic=nic.index, file=str(out))

    async def guest_down(self, sup: Guest) -> None:
        name = sup.name
        async with self.lock:
            raw = self.state.live.pop(name, None)
            if raw is None:
                return
            g = statemod.guest_from_json(raw)
            for key in [k for k in self.state.procs if k.startswith(f"cap:{name}:")]:
                await self.procs.stop(self.state.procs, key)  # normally gone: its tap vanished
            await self._remove_group(names.capture_cgroup(name))
            try:
                agent = await self._ensure_agent(self.state.netns.get("name", ""), create=False)
                for tap in g.taps:  # non-persistent taps vanish with the kernel's fd
                    if await agent.acall(
                        "delete_link", name=tap, alias_prefix=names.alias_prefix(self.instance)
                    ):
                        self.core.event(name, "tap-left-behind", tap=tap)
                # Rules without the guest; networks the fleet dropped go if now unused.
                await self._reconcile_locked()
            finally:
                self._save()

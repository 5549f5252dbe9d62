"""What the API asks of the network feature (net/service.py drives the networks): cut or
restore a guest's network, the networks' status, and live captures of a guest's NIC.
A part of NetService; every change goes through its lock, as the service's own do.
"""

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warden.daemon.seam import Core, Guest
from warden.errors import Conflict, NotFound
from warden.host import cgroup
from warden.net import capture, names, rules
from warden.net import state as statemod
from warden.net.client import AgentClient
from warden.net.errors import NetError
from warden.net.ondemand import CaptureStream
from warden.net.status import status
from warden.spec.fleet import Fleet


class Control:
    """NetService's control commands; NetService (net/service.py) holds the state."""

    core: Core
    instance: str
    dir: Path
    state: statemod.State
    agent: AgentClient | None
    lock: asyncio.Lock
    last_error: str
    br_netfilter: bool | None

    if TYPE_CHECKING:  # NetService's, used here

        def _save(self) -> None: ...

        def _mac(self, fleet: Fleet, machine: str, nic: int) -> str: ...

        def _group(self, name: str) -> cgroup.Cgroup: ...

    def _machine(self, name: str) -> Guest:
        sup = self.core.guests.require(name)
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
        self.core.event(name, "net-cut" if cut else "net-restore", running=raw is not None)
        return {"name": name, "cut": cut, "running": raw is not None, "changed": cut != was}

    async def ls(self) -> dict[str, Any]:
        stats: dict[str, dict[str, Any]] = {}
        if self.agent is not None and self.agent.alive():
            with contextlib.suppress(NetError):
                stats = {link["name"]: link for link in await self.agent.acall("links")}
        fleet = self.core.fleet
        states = {g.name: str(g.state) for g in self.core.guests}
        macs = {
            mm.name: [self._mac(fleet, mm.name, i) for i in range(len(mm.nics))]
            for mm in fleet.machines
        }
        return status(
            self.instance,
            fleet,
            self.state,
            stats,
            states,
            macs,
            self.br_netfilter,
            self.last_error,
        )

    async def open_capture(self, name: str, nic: int, count: int | None) -> CaptureStream:
        """Start an on-demand capture of a running guest's NIC: its pcap stream."""
        sup = self._machine(name)
        async with self.lock:
            raw = self.state.live.get(name)
            if raw is None or self.agent is None:
                raise Conflict(f"{name} is {sup.state}: only a running guest has taps")
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
        self.core.event(name, "capture-started", nic=nic, tap=tap, on_demand=True)
        stream = CaptureStream(
            tap, int(res["pid"]), fds[0], fds[1], lambda: self.close_capture(name)
        )
        await stream.open()
        return stream

    def close_capture(self, name: str) -> None:
        g = cgroup.Cgroup(self.core.hierarchy, self.instance, names.capture_cgroup(name))
        if g.exists() and not g.populated() and name not in self.state.live:
            g.remove()

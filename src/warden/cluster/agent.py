"""The cluster feature: this host's daemon as a member of a cluster over etcd.

A Feature on the seam (warden.daemon.seam). At start it joins: a lease, its host record, the
fence process (warden.cluster.fence). Then two tasks:

- renew: keeps the lease alive (every TTL/10, at least 0.5 s) and, after each answered
  renewal sent at monotonic time t, moves the fence's deadline to t + TTL - margin. When the
  lease is found expired, the fence has killed the owned guests: the host forgets them and
  joins again with a new lease.
- work (every 0.5 s): the cluster's keys from this host's copy (warden.cluster.cache: a
  watch, a full read every 10 s); the leader (warden.cluster.reconcile)
  writes assignments; every host (warden.cluster.hostplan) claims the owner records of the
  machines assigned to it, stops and releases the others, and applies the part of the fleet
  it owns to its own daemon (Core.control.apply), which starts and stops the guests.

What a boot needs (before_boot): the owner record is this host's, and the disk lock
(STORAGE/disks/NAME.lock) is free; its descriptor goes to the kernel, which holds the lock as
long as it lives.
"""

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from warden.cluster import hostplan, keys
from warden.cluster import reconcile as rc
from warden.cluster.cache import Cache
from warden.cluster.etcd import Etcd, EtcdUnavailable
from warden.cluster.keys import Assignment, ClusterFormatError, HostInfo, Owner
from warden.cluster.placement import HostView, Want
from warden.daemon.machine import LIVE
from warden.daemon.seam import BootExtras, Core, Feature, Guest
from warden.disk import create as disk_create
from warden.errors import Conflict, WardenError
from warden.spec import fleet as fleetmod
from warden.tasks import spawn

log = logging.getLogger("warden.cluster")

TICK = 0.5
SOURCE = "cluster:"  # the source of every fleet this feature applies
STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class ClusterConfig:
    urls: str
    host: str
    ttl: int = 10
    budget: int = 0  # 0: MemTotal minus 1 GiB
    labels: dict[str, str] = field(default_factory=dict)
    grace: float = hostplan.GRACE

    @property
    def margin(self) -> float:
        """How long before the lease can expire the fence kills (docs/formats/cluster.md)."""
        return max(self.ttl / 3, 2.0)


def default_budget() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(0, int(line.split()[1]) * 1024 - (1 << 30))
    return 0


@dataclass
class View:
    """One read of the cluster's keys, decoded (bad values skipped, logged once a round)."""

    fleet_text: str | None = None
    fleet_source: str = ""
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    assigned: dict[str, Assignment] = field(default_factory=dict)
    owners: dict[str, tuple[Owner, bytes]] = field(default_factory=dict)
    drains: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    moves: dict[str, str] = field(default_factory=dict)
    leader: str = ""
    problems: list[str] = field(default_factory=list)


def read_view(entries: dict[str, Any]) -> View:
    v = View()
    for key, e in entries.items():
        try:
            if key == keys.FLEET:
                v.fleet_text, v.fleet_source = keys.fleet_from_bytes(e.value)
            elif key == keys.LEADER:
                v.leader = keys.target_from_bytes(key, e.value)
            elif key.startswith(keys.HOSTS):
                h = HostInfo.from_bytes(key, e.value)
                v.hosts[h.name] = h
            elif key.startswith(keys.ASSIGN):
                v.assigned[key[len(keys.ASSIGN) :]] = Assignment.from_bytes(key, e.value)
            elif key.startswith(keys.OWN):
                v.owners[key[len(keys.OWN) :]] = (Owner.from_bytes(key, e.value), e.value)
            elif key.startswith(keys.KNOWN):
                v.known.add(keys.check_host_name(key[len(keys.KNOWN) :]))
            elif key.startswith(keys.DRAIN):
                v.drains.add(key[len(keys.DRAIN) :])
            elif key.startswith(keys.MOVE):
                v.moves[key[len(keys.MOVE) :]] = keys.target_from_bytes(key, e.value)
        except (ClusterFormatError, WardenError) as err:
            v.problems.append(str(err))
    return v


def wants(fleet: fleetmod.Fleet) -> list[Want]:
    return [Want(m.name, m.memory, m.host, m.host_labels, m.spread) for m in fleet.machines]


def host_fleet(text: str, names: set[str]) -> str:
    """The cluster's fleet file with only the machines in `names`: what this host applies."""
    doc = tomllib.loads(text)
    doc["machine"] = [m for m in doc.get("machine", []) if m.get("name") in names]
    return tomli_w.dumps(doc)


class Fence:
    """The fence process (warden.cluster.fence) and the pipe to it."""

    def __init__(self) -> None:
        # Its own session: a Ctrl-C or SIGSTOP meant for the daemon's group does not reach it.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "warden.cluster.fence"],
            stdin=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            log.error("the fence process is gone (exit %s)", self.proc.poll())

    def close(self) -> None:
        self.send({"exit": True})
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class ClusterFeature(Feature):
    name = "cluster"

    def __init__(self, core: Core, config: ClusterConfig):
        self.core = core
        self.config = config
        self.me = keys.check_host_name(config.host)
        self.budget = config.budget or default_budget()
        self.etcd = Etcd(config.urls)
        self.lease: int | None = None
        self.fence: Fence | None = None
        self.memory = hostplan.HostMemory()
        self.owned: dict[str, bytes] = {}  # machine -> the owner record's value we wrote
        self.released: set[str] = set()  # given up, until claimed again
        self.applied: str | None = None  # the host fleet text last applied
        self.storage = ""
        self.view = View()
        self.cache = Cache(self.etcd, keys.PREFIX)
        self.tasks: list[asyncio.Task[None]] = []
        self.deadline = 0.0  # the fence's deadline (monotonic), as last armed

    # ---- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.fence = Fence()
        await self._join()
        self.tasks = [
            spawn(self._renew_loop(), "cluster-renew"),
            spawn(self._work_loop(), "cluster-work"),
        ]
        self.core.event(None, "cluster-joined", host=self.me, urls=self.config.urls)

    async def stop(self) -> None:
        # Leave cleanly: no more placing or claiming, but the lease is renewed (and the fence
        # re-armed) until every owned guest is stopped and given up, all at once; then the
        # lease is revoked (others place the machines now) and the fence told to exit.
        renew, *others = self.tasks
        for t in others:
            t.cancel()
        for t in others:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await asyncio.gather(
            *(self._leave(name) for name in list(self.owned)), return_exceptions=True
        )
        renew.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renew
        if self.lease is not None:
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(self.lease)
        if self.fence is not None:
            self.fence.close()
        await self.cache.close()
        await self.etcd.close()

    async def _leave(self, name: str) -> None:
        guest = self.core.guests.get(name)
        if guest is not None and guest.state in LIVE:
            with contextlib.suppress(WardenError, TimeoutError):
                await self.core.control.stop(name, STOP_TIMEOUT)
        raw = self.owned.pop(name, None)
        if raw is not None:
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.delete_if(keys.OWN + name, raw)

    async def _join(self) -> None:
        self.lease = await self.etcd.grant(self.config.ttl)
        self.owned.clear()
        await self._put_host()
        await self.etcd.put(keys.KNOWN + self.me, b"{}")
        self._arm(time.monotonic())

    async def _put_host(self) -> None:
        info = HostInfo(
            name=self.me,
            budget=self.budget,
            free=self.budget - self._committed(),
            labels=dict(self.config.labels),
            ttl=self.config.ttl,
            pid=os.getpid(),
        )
        await self.etcd.put(keys.HOSTS + self.me, info.to_bytes(), lease=self.lease)

    def _committed(self) -> int:
        return sum(g.spec.memory for g in self.core.guests if g.name in self.owned)

    def _arm(self, sent_at: float) -> None:
        """Tell the fence the new deadline: a renewal sent at `sent_at` was answered."""
        if self.fence is None:
            return
        # Every guest group of this home, also one launched after this message.
        parent = self.core.hierarchy.unified / f"warden-{self.core.layout.instance}"
        deadline = sent_at + self.config.ttl - self.config.margin
        self.deadline = deadline
        self.fence.send({"deadline": deadline, "parent": str(parent)})

    # ---- the lease --------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        every = max(0.5, self.config.ttl / 10)
        while True:
            await asyncio.sleep(every)
            sent = time.monotonic()
            try:
                assert self.lease is not None
                left = await self.etcd.keepalive(self.lease)
            except EtcdUnavailable as e:
                log.warning("lease not renewed: %s", e)
                continue
            if left > 0:
                self._arm(sent)
                continue
            await self._lease_lost()

    async def _lease_lost(self) -> None:
        """The lease expired: the fence has killed (or is killing) the owned guests."""
        lost = sorted(self.owned)
        self.core.event(None, "cluster-lease-lost", host=self.me, machines=",".join(lost))
        self.owned.clear()
        self.released.update(lost)  # the copy may show their records a moment longer
        for name in lost:
            guest = self.core.guests.get(name)
            if guest is not None and guest.state in LIVE:
                with contextlib.suppress(WardenError, TimeoutError):
                    await self.core.control.kill(name)
        try:
            await self._join()
        except EtcdUnavailable as e:
            log.warning("cannot join again yet: %s", e)

    # ---- the work ---------------------------------------------------------------------------
    async def _work_loop(self) -> None:
        while True:
            try:
                await self._round()
            except EtcdUnavailable as e:
                log.warning("cluster round skipped: %s", e)
            except Exception:
                log.exception("cluster round failed")
            await asyncio.sleep(TICK)

    async def _round(self) -> None:
        self.view = view = read_view(await self.cache.read())
        for p in view.problems:
            log.warning("ignored: %s", p)
        if view.fleet_text is None or self.lease is None:
            return
        fleet = fleetmod.parse(view.fleet_text, view.fleet_source)
        self.storage = fleet.cluster.storage
        if self.me not in view.hosts:
            return  # our lease is gone; the renew task joins again
        if view.leader == "" and await self.etcd.create(
            keys.LEADER, keys.encode({"host": self.me}), lease=self.lease
        ):
            self.core.event(None, "cluster-leader", host=self.me)
            view.leader = self.me
        if view.leader == self.me:
            # The leader decides on a fresh read (etcd's reads are linearizable): its copy
            # may lag its own last writes, and deciding on it would reassign twice.
            fresh = read_view(await self.etcd.prefix(keys.PREFIX))
            if fresh.fleet_text is not None:
                await self._lead(fleetmod.parse(fresh.fleet_text, fresh.fleet_source), fresh)
        await self._host(fleet, view)

    async def _lead(self, fleet: fleetmod.Fleet, view: View) -> None:
        hosts = [
            HostView(h.name, h.budget, h.labels, draining=h.name in view.drains)
            for h in view.hosts.values()
        ]
        for action in rc.reconcile(wants(fleet), hosts, view.assigned, view.moves):
            if isinstance(action, rc.Assign):
                await self.etcd.put(keys.ASSIGN + action.name, action.assignment.to_bytes())
                view.assigned[action.name] = action.assignment
                self.core.event(
                    action.name,
                    "cluster-assigned",
                    host=action.assignment.host,
                    why=action.assignment.why,
                    rev=action.assignment.rev,
                )
            elif isinstance(action, rc.Drop):
                await self.etcd.delete(keys.ASSIGN + action.name)
                view.assigned.pop(action.name, None)
            elif isinstance(action, rc.Consume):
                await self.etcd.delete(keys.MOVE + action.name)
            elif isinstance(action, rc.Refuse):
                self.core.event(action.name, "cluster-refused", why=action.why)

    async def _host(self, fleet: fleetmod.Fleet, view: View) -> None:
        mine = {n for n, a in view.assigned.items() if a.host == self.me}
        owners = {n: o.host for n, (o, _) in view.owners.items()}
        # No "forget what the copy does not show as ours": the copy may not show a claim made
        # a moment ago. A lost lease is found by the renew task (_lease_lost).
        claimed = []
        for action in hostplan.plan(
            self.me, mine, owners, self.memory, time.monotonic(), self.config.grace
        ):
            name = action.name
            if isinstance(action, hostplan.Release):
                if name in self.released:
                    continue  # done; the copy has not seen the record go yet
                self.owned.setdefault(name, view.owners[name][1])
                await self._release(name)
            elif await self._claim(fleet, name):
                claimed.append(name)
        # A record of ours that this host does not know of (a claim whose answer was lost),
        # never one it gave up: the copy may still show a record deleted a moment ago.
        for name, (owner, raw) in view.owners.items():
            if owner.host == self.me and name not in self.released:
                self.owned.setdefault(name, raw)
        await self._apply(view, set(self.owned))
        for name in claimed:
            # Known here from an earlier stay (stopped, or refused while it was not ours):
            # the apply added nothing, so it is started here, as a new machine would be.
            guest = self.core.guests.get(name)
            if guest is not None and guest.state not in LIVE and guest.spec.autostart:
                try:
                    self.core.control.start(name)
                except WardenError as e:
                    self.core.event(name, "cluster-start-failed", error=str(e))
        await self._report(view)

    async def _claim(self, fleet: fleetmod.Fleet, name: str) -> bool:
        spec = fleet.machine(name)
        if spec is None:
            return False
        try:
            self._prepare_disk(spec)
        except WardenError as e:
            self.core.event(name, "cluster-refused", why=str(e))
            return False
        value = Owner(self.me, "claimed", time.time()).to_bytes()
        if await self.etcd.create(keys.OWN + name, value, lease=self.lease):
            self.owned[name] = value
            self.released.discard(name)
            self.core.event(name, "cluster-claimed", host=self.me)
            return True
        return False

    def _prepare_disk(self, spec: fleetmod.Machine) -> None:
        """With [cluster] storage, the machine's COW disk lives there (made over its image on
        the first claim anywhere) and this host's machine folder links to it."""
        if not self.storage:
            return
        if "/" not in spec.image:
            raise WardenError(
                f"{spec.name}: image {spec.image!r} is a name; with [cluster] storage every "
                "host must reach the image at the same path: give its path"
            )
        disks = Path(self.storage) / "disks"
        disks.mkdir(parents=True, exist_ok=True)
        shared = disks / f"{spec.name}.cow"
        if not shared.exists():
            disk_create.create(shared, Path(spec.image))
        root = self.core.layout.machine(spec.name)
        root.mkdir(parents=True, exist_ok=True)
        local = root / "disk.cow"
        if local.exists() and os.path.samefile(local, shared):
            return
        local.unlink(missing_ok=True)
        try:
            # A hard link: the jail accepts only a regular file (no symlink a guest could
            # swap); the storage must be on the filesystem of WARDEN_HOME for now.
            os.link(shared, local)
        except OSError as e:
            raise WardenError(
                f"{spec.name}: cannot link {shared} into {root}: {e.strerror} (the cluster "
                "storage must be on the same filesystem as WARDEN_HOME for now)"
            ) from None

    async def _release(self, name: str) -> None:
        """Stop the guest (cleanly), take it out of this host's fleet, give up the record."""
        guest = self.core.guests.get(name)
        if guest is not None and guest.state in LIVE:
            await self.core.control.stop(name, STOP_TIMEOUT)
        raw = self.owned.pop(name, None)
        await self._apply(self.view, set(self.owned))
        if raw is not None:
            try:
                await self.etcd.delete_if(keys.OWN + name, raw)
            except EtcdUnavailable:
                self.owned[name] = raw  # the record stays ours: the next round tries again
                raise
        self.released.add(name)
        self.core.event(name, "cluster-released", host=self.me)

    async def _apply(self, view: View, names: set[str]) -> None:
        if view.fleet_text is None:
            return
        text = host_fleet(view.fleet_text, names)
        if text == self.applied:
            return
        try:
            await self.core.control.apply(text, SOURCE + view.fleet_source)
        except (WardenError, Conflict) as e:
            self.core.event(None, "cluster-apply-failed", error=str(e))
            return
        self.applied = text

    async def _report(self, view: View) -> None:
        """Each owned machine's state in its owner record (for `ls`), and our free memory."""
        for name, raw in list(self.owned.items()):
            guest = self.core.guests.get(name)
            state = str(guest.state) if guest is not None else "claimed"
            old = Owner.from_bytes(name, raw)
            if old.state == state:
                continue
            new = Owner(self.me, state, old.since).to_bytes()
            if await self.etcd.replace_if(keys.OWN + name, raw, new, self.lease):
                self.owned[name] = new
        info = view.hosts.get(self.me)
        if info is not None and info.free != self.budget - self._committed():
            await self._put_host()

    # ---- hooks ------------------------------------------------------------------------------
    async def check_fleet(self, fleet: fleetmod.Fleet) -> None:
        """On a cluster host only the cluster's fleet is applied (by this feature): a local
        `warden apply` would start or drop guests etcd has not given this host."""
        if not fleet.source.startswith(SOURCE):
            raise Conflict(
                f"{fleet.source}: this daemon is host {self.me} of a cluster; apply fleets to "
                f"the cluster: warden --cluster {self.config.urls} apply FILE"
            )

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        """A boot only while this host holds the owner record under its current lease and
        its fence has not fired: asked of etcd, not of what this daemon remembers (it may
        just have been continued after a SIGSTOP, with a restart timer due)."""
        refused = (
            f"{guest.name}: this host ({self.me}) does not own it in the cluster now; "
            "it boots where the cluster assigns it"
        )
        if guest.name not in self.owned or time.monotonic() >= self.deadline:
            raise Conflict(refused)
        try:
            record = await self.etcd.get(keys.OWN + guest.name)
        except EtcdUnavailable as e:
            raise Conflict(f"{refused} ({e})") from None
        if record is None or record.lease != self.lease:
            raise Conflict(refused)
        if not self.storage:
            return
        path = Path(self.storage) / "disks" / f"{guest.name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(
                f"{guest.name}: its disk is in use by another kernel ({path} is locked); "
                "refusing to open it twice"
            ) from None
        extras.fds.append(fd)  # the kernel holds the lock as long as it lives

"""The honeypot kernel in the daemon: channels for each boot, re-attached across restarts.

For a machine with `tty_log = true` and/or `disguise = PROFILE` (on the honeypot kernel, or a
kernel given by path that has its parameters):
- at apply: `check_fleet` refuses a missing or unpatched kernel, a malformed profile, a jail-
  less honeypot, a tty log without session logs (warden.honeypot.checks);
- before each boot (`prepare`): the channels (warden.honeypot.channels) are made, the
  disguise rule set is sent (it waits in the socket for the kernel), the kernel gets
  `tty_log_fd=`/`disguise_fd=` and the fds;
- once launched (`launched`): the tty log is read into `tty-BOOT.wlog`, the state file is
  written, the kernel's counters are polled;
- when the kernel is gone (`exited`): the rest is read, the log closed, the state removed;
- a re-applied fleet (`fleet_changed`) puts a changed profile in force in running guests;
- the daemon leaving (`stop`) and coming back (`start`): channels taken back from the kernel.
"""

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warden import persona, proc, tasks
from warden.daemon import machine as m
from warden.daemon.seam import BootExtras, Core, Guest
from warden.errors import NotFound, WardenError
from warden.honeypot import channels as ch
from warden.honeypot.checks import (
    NO_DISGUISE,
    check_machine,
    kernel_parameters,
    profile_ref,
    wants_honeypot,
)
from warden.honeypot.disguise_server import NOBODY, RECV_MAX, DisguiseServer, FilterBounds
from warden.honeypot.guest import PotGuest
from warden.honeypot.ingest import TtyLogIngest
from warden.honeypot.profile import DisguiseError, Profile, load_profile
from warden.paths import Layout
from warden.sessionlog import codec as sl
from warden.sessionlog import store as logstore
from warden.sessionlog.ttylog import RECORD_HEADER
from warden.spec.fleet import Fleet
from warden.uml import kernel as ukernel
from warden.uml.mconsole import proc_text

log = logging.getLogger("warden.honeypot")
STALE_MAX = 4096  # stale disguise messages dropped at re-attach
SEED_DROP_WAIT = 180.0  # seconds a persona guest has to read its seed disk


def last_stored_seq(layout: Layout, machine: str, boot: int) -> int | None:
    """The kernel sequence number of the last tty-log record stored for this boot."""
    for ref in reversed(logstore.find(layout, machine, "tty", boot, archived=False)):
        last: int | None = None
        try:
            with logstore.reading(ref, None) as reader:
                for r in reader:
                    if r.type == sl.TTYLOG and len(r.payload) >= RECORD_HEADER.size:
                        last = RECORD_HEADER.unpack_from(r.payload)[3]
        except (WardenError, OSError, EOFError) as e:
            log.warning("%s: %s", ref.path, e)
        if last is not None:
            return last
    return None


class HoneypotService:
    def __init__(self, core: Core):
        self.core = core
        self.guests: dict[str, PotGuest] = {}
        self._booting: dict[str, PotGuest] = {}
        self._personas: set[str] = set()  # machines whose boot shows a persona

    # ---- apply -------------------------------------------------------------------------------
    def check_fleet(self, new: Fleet) -> None:
        for spec in new.machines:
            if wants_honeypot(spec):
                check_machine(spec, new, self.core.layout)

    def fleet_changed(self) -> None:
        fleet: Fleet = self.core.fleet
        for name, pot in list(self.guests.items()):
            spec = fleet.machine(name)
            if spec is None:
                continue
            if pot.disguise is None:
                if spec.disguise:
                    self.core.event(
                        name,
                        "disguise-next-boot",
                        profile=spec.disguise,
                        reason="this boot has no disguise channel; the profile takes "
                        "effect at the guest's next boot",
                    )
                continue
            ref = profile_ref(spec, fleet)
            try:
                profile = load_profile(ref) if ref else NO_DISGUISE
            except DisguiseError as e:  # changed on disk since check_fleet
                self.core.event(name, "disguise-refused", profile=ref, error=str(e))
                continue
            pot.set_profile(self._with_persona(pot.guest, profile), ref)

    # ---- a boot ------------------------------------------------------------------------------
    async def prepare(self, sup: Guest, extras: BootExtras) -> None:
        spec = sup.spec
        if not wants_honeypot(spec):
            return
        profile = check_machine(spec, self.core.fleet, self.core.layout)
        state = ch.PotState(boot=0, pid=0, pid_start=None, profile=spec.disguise)
        pot = PotGuest(sup, self.core, state)
        made: list[ch.Channel] = []
        extras.cleanup.append(self._abandon(pot, made))
        if spec.tty_log:
            tty = ch.ttylog_channel()
            made.append(tty)
            pot.tty_sock = tty.host
            pot.tty_status = "waiting"
            state.ttylog = ch.ChannelState(tty.kernel_fd, tty.spare_fd, tty.inode)
            extras.fds += tty.kernel_fds()
            extras.kernel_args.append(f"tty_log_fd={tty.kernel_fd}")
        if profile is not None:
            dsg = ch.disguise_channel()
            made.append(dsg)
            state.disguise = ch.ChannelState(dsg.kernel_fd, dsg.spare_fd, dsg.inode)
            extras.fds += dsg.kernel_fds()
            extras.kernel_args.append(f"disguise_fd={dsg.kernel_fd}")
            cmdline = self._persona(sup, extras)
            if cmdline:
                profile = profile.with_cmdline(cmdline)
            pot.disguise = self._server(sup, profile, dsg.host)
            await pot.disguise.start()  # the rule set waits for the kernel in the socket
        self._booting[sup.name] = pot

    def _persona_of(self, sup: Guest) -> persona.Persona | None:
        """The machine's persona if its kernel can show one (kernel/0010), with the command
        line naming its root filesystem's UUID; None otherwise."""
        k = ukernel.resolve(self.core.layout, sup.spec.kernel)
        if "persona" not in kernel_parameters(k.path):
            return None
        p = persona.fleet_of(self.core.layout, self.core.fleet).get(sup.name)
        if p is None:
            return None
        # the root filesystem's UUID, for the command line (the base image warden recorded: a
        # COW header's own path is the jail's, never trusted)
        root_uuid = persona.ext4_uuid(Path(sup.base)) if sup.base else ""
        return dataclasses.replace(p, cmdline=persona.boot_cmdline(root_uuid))

    def _with_persona(self, sup: Guest, profile: Profile) -> Profile:
        try:
            p = self._persona_of(sup)
        except (WardenError, OSError):
            return profile
        return profile if p is None else profile.with_cmdline(p.cmdline)

    def _persona(self, sup: Guest, extras: BootExtras) -> str:
        """A disguised guest on a kernel with kernel/0010-uml-persona.patch shows its persona:
        the kernel reads it from a memfd at boot; its disks are sdX, so root is /dev/sda; the
        seed gives it the persona's hostname; the net service gives its NICs the persona's
        MACs (warden.persona.fleet_of, the same answer)."""
        p = self._persona_of(sup)
        if p is None:
            return ""
        fd = persona.memfd(persona.kernel_text(p))
        extras.fds.append(fd)  # closed by the supervisor once the kernel has it
        extras.kernel_args += [f"persona_fd={fd}", "root=/dev/sda"]
        extras.hostname = p.hostname
        self._personas.add(sup.name)
        return p.cmdline

    def _server(self, sup: Guest, profile: Profile, sock: socket.socket) -> DisguiseServer:
        """A disguise server whose filter programs run as the guest's uid in its cgroups, and
        whose flood reports (one a window) become the guest's events."""
        uid = sup.uid if sup.uid is not None else NOBODY
        procs = tuple(str(p) for p in sup.cgroup.procs_files()) if sup.cgroup.exists() else ()
        name = sup.name

        def report(kind: str, fields: dict[str, Any]) -> None:
            self.core.event(name, kind, **fields)

        return DisguiseServer(profile, sock, name, FilterBounds(uid, uid, procs), report)

    def _abandon(self, pot: PotGuest, made: list[ch.Channel]) -> Callable[[], None]:
        """For a launch that failed: close our ends (the supervisor closes the kernel's)."""
        name = pot.name

        def cleanup() -> None:
            if self._booting.get(name) is pot:
                del self._booting[name]
            server = pot.disguise
            for c in made:
                if server is not None and c.host is server.sock:
                    # a started server reads its end: stop() removes the reader, then closes
                    tasks.spawn(server.stop(), f"honeypot {name} abandon disguise")
                else:
                    with contextlib.suppress(OSError):
                        c.close_host()

        return cleanup

    async def launched(self, sup: Guest, pid: int) -> None:
        pot = self._booting.pop(sup.name, None)
        if pot is None:
            return
        pot.state.boot, pot.state.pid, pot.state.pid_start = sup.boot, pid, sup.pid_start
        self.guests[sup.name] = pot
        pot.save()
        if pot.tty_sock is not None:
            pot.start_tty(
                pot.tty_sock, self.core.logs(sup.name, "tty", sup.boot, False), TtyLogIngest()
            )
        if pot.disguise is not None:
            pot.watch_ack(pot.disguise.generation, pot.disguise.profile)
        if sup.name in self._personas:
            self._personas.discard(sup.name)
            pot.spawn(self._drop_seed_disk(pot), "seed disk")

    async def _drop_seed_disk(self, pot: PotGuest) -> None:
        """A physical server has no 1 MiB disk: once the guest has read its seed (its hostname
        is the one the seed gives), unplug the seed disk (ubd1) through the mconsole. The
        guest's udev may still hold it open for a moment (EBUSY): try again."""
        sup = pot.guest
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEED_DROP_WAIT
        while loop.time() < deadline and sup.state in m.LIVE:
            await asyncio.sleep(0.5)
            try:
                name = proc_text(await sup.request("proc sys/kernel/hostname", 2.0)).strip()
                if name != sup.guest_hostname:
                    continue
                await sup.request("remove ubd1", 2.0)
            except (WardenError, OSError):
                continue  # not up yet, or the disk is busy
            pot.note("seed-disk-removed", True)
            return
        pot.note("seed-disk-kept", True, reason=f"not removable within {SEED_DROP_WAIT:g}s")

    async def exited(self, sup: Guest) -> None:
        pot = self.guests.pop(sup.name, None) or self._booting.pop(sup.name, None)
        if pot is None:
            return
        await pot.finish("kernel ended")
        ch.remove_state(pot.dir)

    # ---- the daemon comes and goes -------------------------------------------------------------
    async def start(self) -> None:
        for sup in list(self.core.guests):
            try:
                await self._reattach(sup)
            except Exception:
                log.exception("%s: re-attaching its honeypot channels", sup.name)

    async def _reattach(self, sup: Guest) -> None:
        mdir = self.core.layout.machine(sup.name)
        try:
            state = ch.read_state(mdir)
        except ValueError as e:
            self.core.event(sup.name, "honeypot-reattach-failed", error=str(e))
            ch.remove_state(mdir)
            return
        live = sup.state in m.LIVE and sup.pid is not None
        if state is None:
            if live and wants_honeypot(sup.spec):
                self.core.event(
                    sup.name,
                    "honeypot-reattach-failed",
                    error="no honeypot.json: the previous daemon died before it wrote it; this "
                    "boot's tty log and disguise channel are not reachable any more",
                )
            return
        same = (
            live
            and state.pid == sup.pid
            and state.boot == sup.boot
            and proc.running(state.pid, state.pid_start)
        )
        if not same:
            # The guest ended while no daemon ran: what its kernel sent after the last stored
            # record died with its sockets. The session-log writer closes the file itself.
            if state.ttylog is not None:
                last = await asyncio.get_running_loop().run_in_executor(
                    None, last_stored_seq, self.core.layout, sup.name, state.boot
                )
                self.core.event(
                    sup.name,
                    "ttylog-unread",
                    boot=state.boot,
                    last_seq=last,
                    reason="the guest ended while no daemon ran: records its kernel wrote "
                    f"after record {last} were never read",
                )
            ch.remove_state(mdir)
            return
        pot = PotGuest(sup, self.core, state)
        if state.disguise is not None:
            await self._reattach_disguise(pot, state.disguise)
        if state.ttylog is not None:
            await self._reattach_tty(pot, state.ttylog)
        self.guests[sup.name] = pot
        pot.save()

    async def _reattach_tty(self, pot: PotGuest, cs: ch.ChannelState) -> None:
        sup = pot.guest
        last = await asyncio.get_running_loop().run_in_executor(
            None, last_stored_seq, self.core.layout, sup.name, pot.state.boot
        )
        try:
            sock = ch.take_fd(pot.state.pid, cs.spare_fd, cs.inode)
        except (WardenError, OSError) as e:
            pot.tty_status = "closed"
            pot.tty_problem = f"could not take the tty log back from the kernel: {e}"
            self.core.event(sup.name, "ttylog-reattach-failed", error=pot.tty_problem)
            return
        logf = self.core.logs(sup.name, "tty", pot.state.boot, True)
        pot.start_tty(sock, logf, TtyLogIngest(last_seq=last, header_seen=True))
        pot.note("ttylog-reattached", False, last_stored_seq=last)
        pot.spawn(pot.poll(), "ttylog poll at re-attach")

    async def _reattach_disguise(self, pot: PotGuest, cs: ch.ChannelState) -> None:
        sup = pot.guest
        ref = profile_ref(sup.spec, self.core.fleet)
        try:
            profile: Profile = load_profile(ref) if ref else NO_DISGUISE
            sock = ch.take_fd(pot.state.pid, cs.spare_fd, cs.inode)
        except (WardenError, OSError) as e:
            self.core.event(
                sup.name,
                "disguise-reattach-failed",
                error=f"{e}; the kernel keeps its last rule set and serves filters their fallback",
            )
            return
        # What the kernel sent while no daemon ran: filter requests its readers stopped waiting
        # for long ago (they got the fallback) and acks. Answering them would run filters for
        # nobody.
        # At most what the socket buffer can hold: a kernel that keeps sending cannot keep
        # this loop (the daemon's) here.
        stale = 0
        while stale < STALE_MAX:
            try:
                if not sock.recv(RECV_MAX):
                    break
                stale += 1
            except BlockingIOError:
                break
        server = self._server(sup, self._with_persona(sup, profile), sock)
        server.generation = pot.state.generation
        pot.disguise = server
        await server.start()
        pot.state.profile = ref
        self.core.event(
            sup.name,
            "disguise-reattached",
            boot=pot.state.boot,
            profile=profile.name,
            generation=server.generation,
            stale_messages=stale,
        )
        pot.watch_ack(server.generation, profile)

    async def stop(self) -> None:
        for name, pot in list(self.guests.items()):
            with contextlib.suppress(Exception):
                await pot.detach()
            del self.guests[name]

    # ---- the API -----------------------------------------------------------------------------
    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is not None:
            if name not in self.core.guests:
                raise NotFound(f"no machine named {name!r} (warden ls lists them)")
            pot = self.guests.get(name)
            if pot is None:
                raise NotFound(
                    f"{name} runs no honeypot channels (not running, or no tty_log/disguise)"
                )
            return [self._status(pot)]
        return [self._status(p) for _, p in sorted(self.guests.items())]

    def _status(self, pot: PotGuest) -> dict[str, Any]:
        """The guest's channels, and the persona it shows (if its disguise has one)."""
        out = pot.status()
        p = None
        with contextlib.suppress(WardenError, OSError):
            p = self._persona_of(pot.guest) if pot.disguise is not None else None
        if p is not None:
            out["persona"] = {
                "hostname": p.hostname,
                "product": f"{p.dmi['sys_vendor']} {p.dmi['product_name']}",
                "serial": p.dmi["product_serial"],
                "disk": f"{p.disk.model} {p.disk.serial}",
                "macs": [n.mac for n in p.nics],
            }
        return out

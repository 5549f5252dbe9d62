"""Drives one guest: performs the actions its state machine (daemon/machine.py) asks for.

Everything here runs on the daemon's event loop; nothing blocks it for long (the launcher is a
separate process, mconsole requests are datagrams with timeouts, writing the seed disk runs in
an executor). Per guest the daemon holds: a pidfd, the two FIFO ends of each line, the notify
and mconsole reply sockets while the kernel runs: a handful of fds and no thread.
"""

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from warden import proc
from warden.daemon import bootplan, kernelout, listing
from warden.daemon import machine as m
from warden.daemon.context import Context
from warden.daemon.files import KernelLineFds, MachineFiles, open_kernel_ends
from warden.daemon.lines import Line
from warden.daemon.notify import NotifyChannel
from warden.daemon.seam import BootExtras
from warden.disk import backing, snapshot
from warden.disk import create as disk_create
from warden.errors import Conflict, WardenError
from warden.guestinput import NotifyBudget
from warden.host import cgroup
from warden.images import seed as seedmod
from warden.spec.fleet import Machine as Spec
from warden.store import MachineRow
from warden.tasks import spawn
from warden.uml import cow, kernel, mconsole, xstate

log = logging.getLogger("warden.supervisor")

PANIC_GRACE = 3.0
# The kernel's last words on its console (kernel/reboot.c): how this boot is about to end.
REBOOT_MARK = b"reboot: Restarting system"
HALT_MARKS = (b"reboot: System halted", b"reboot: Power down")


class Supervisor:
    def __init__(self, ctx: Context, spec: Spec):
        self.ctx = ctx
        self.spec = spec
        self.name = spec.name
        self.files = MachineFiles(ctx.layout.machine(spec.name), spec.name)
        self.machine = m.Machine(spec.name, restart=spec.restart)
        self.lines: dict[str, Line] = {}
        self._sync_lines()
        self.cgroup = cgroup.Cgroup(ctx.hierarchy, ctx.layout.instance, spec.name)
        self.boot = 0
        self.started_at: float | None = None
        self.base: str | None = None
        self.uid: int | None = None
        self.cpus: str | None = None  # set by the cpu feature (seam.Guest)
        self.pid_start: int | None = None
        self.kernel_path: Path | None = None
        self.guest_hostname = self.name  # what the seed names the guest (a persona's, or this)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._pidfd: int | None = None
        self.mconsole: mconsole.AsyncClient | None = None
        self.mconsole_intr: mconsole.AsyncClient | None = None
        self.notify = NotifyChannel(self._from_kernel, self._dispatch_notify, self._flood_event)
        self._panicked_boot: int | None = None
        self._changed = asyncio.Condition()
        self._rebooting = False
        self._halted = False

    # ---- what features see of it (seam.Guest) ----------------------------------------------
    @property
    def state(self) -> m.State:
        return self.machine.state

    @property
    def pause_reason(self) -> str:
        return self.machine.pause_reason

    @property
    def pid(self) -> int | None:
        return self.machine.pid

    # ---- spec and persistence -------------------------------------------------------------
    def _sync_lines(self) -> None:
        for name in self.spec.lines:
            if name not in self.lines:
                self.lines[name] = Line(self.name, name, self.files)

    def update_spec(self, spec: Spec) -> None:
        """A re-applied fleet file changed this machine; it takes effect at the next boot."""
        self.spec = spec
        self.machine.restart = spec.restart
        if self.machine.state not in m.LIVE:
            self._sync_lines()

    def restore(self, row: MachineRow) -> None:
        self.machine.state = m.State(row.state)
        self.machine.desired = row.desired
        self.machine.pid = row.pid
        self.machine.last_exit = row.last_exit
        self.boot = row.boot
        self.started_at = row.started_at
        self.base = row.base
        self.uid = row.uid
        self.pid_start = row.pid_start
        # A snapshot that an earlier daemon was killed in the middle of (kill -9) is only a
        # hidden staging directory: this daemon's start is when it is known to be dead.
        snapshot.sweep(self.files.cow)

    def row(self) -> MachineRow:
        return listing.row_of(self)

    def info(self) -> dict[str, Any]:
        """What `warden ls` shows (kept cheap: no I/O)."""
        return listing.info_of(self)

    # ---- events and actions ---------------------------------------------------------------
    def post(self, event: m.Event) -> None:
        actions = self.machine.handle(event, time.time())
        for action in actions:
            self._perform(action)

    def _perform(self, action: m.Action) -> None:
        match action:
            case m.Launch():
                spawn(self._launch(), f"launch:{self.name}")
            case m.Mconsole(command=command):
                spawn(self._fire_mconsole(command), f"mconsole:{self.name}:{command}")
            case m.KillGroup():
                self._kill_group()
            case m.Freeze():
                self.cgroup.freeze()
            case m.Thaw():
                self.cgroup.thaw()
            case m.StartTimer(timer=timer, seconds=seconds):
                self._cancel_timer(timer)
                loop = asyncio.get_running_loop()
                self._timers[timer] = loop.call_later(seconds, self._timer_fired, timer)
            case m.CancelTimer(timer=timer):
                self._cancel_timer(timer)
            case m.Dequeue():
                self.ctx.boots.leave(self.name)
            case m.Persist(kind=kind, detail=detail):
                self._persist(kind, detail)
                spawn(self._notify_changed(), f"changed:{self.name}")

    def _persist(self, kind: str, detail: tuple[tuple[str, str], ...]) -> None:
        """Write the machine's row and the event. A write that fails (WARDEN_HOME full) is
        logged and the transition goes on: the actions after it (the launch, the timers that
        end every transitional state) must run, or the guest stays "starting" with nothing to
        come. The next Persist writes the whole row again."""
        try:
            self.ctx.store.put_machine(self.row())
            self.ctx.event(self.name, kind, state=str(self.machine.state), **dict(detail))
        except sqlite3.Error as e:
            log.warning("%s: %s: the state could not be saved: %s", self.name, kind, e)

    def _timer_fired(self, timer: str) -> None:
        self._timers.pop(timer, None)
        try:
            self.post(m.Timeout(timer))
        except WardenError as e:
            log.warning("%s: timer %s: %s", self.name, timer, e)

    def _cancel_timer(self, timer: str) -> None:
        handle = self._timers.pop(timer, None)
        if handle is not None:
            handle.cancel()

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_state(self, states: tuple[m.State, ...], timeout: float) -> m.State:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: self.machine.state in states)
        return self.machine.state

    def _kill_group(self) -> None:
        if self.cgroup.exists():
            self.cgroup.kill()
        elif self.machine.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.machine.pid, 9)

    async def _fire_mconsole(self, command: str) -> None:
        try:
            await self.request(command)
        except WardenError as e:
            # The stop timers escalate anyway; record why the polite way failed.
            self.ctx.event(self.name, "mconsole-failed", command=command, error=str(e))

    async def request(self, command: str, timeout: float | None = None) -> str:
        if self.mconsole is None or self.machine.state not in m.LIVE:
            raise Conflict(f"{self.name} is {self.machine.state}: its mconsole is not listening")
        return await self.mconsole.request(command, timeout)

    async def request_intr(self, command: str, timeout: float | None = None) -> str:
        """For commands the guest answers in its interrupt handler (`oomplug`): a client of
        their own, because a client serializes its requests, and a `proc` or `config` the
        guest's work queue has not served yet (it may be waiting for memory) would hold
        them back."""
        if self.mconsole_intr is None or self.machine.state not in m.LIVE:
            raise Conflict(f"{self.name} is {self.machine.state}: its mconsole is not listening")
        return await self.mconsole_intr.request(command, timeout)

    # ---- create, reset, destroy -----------------------------------------------------------
    def create(self) -> None:
        """The machine's files, and its COW disk over the current build of its image."""
        if self.machine.state is not m.State.ABSENT:
            return
        base = self.ctx.images.resolve(self.spec.image)
        self.files.create(self.spec.lines)
        try:
            if not self.files.cow.exists():
                disk_create.create(self.files.cow, base)
        except WardenError:
            self.files.destroy()  # nothing half-created
            raise
        self.base = str(base)
        for a in self.machine.created():
            self._perform(a)

    def reset(self) -> None:
        """Drop the COW disk: the guest boots pristine, from the image's current build."""
        if self.machine.state in m.LIVE:
            raise Conflict(f"{self.name} is {self.machine.state}; stop it before a reset")
        if self.machine.state is m.State.ABSENT:
            raise Conflict(f"{self.name} is not created yet: it has no disk to reset")
        base = self.ctx.images.resolve(self.spec.image)
        self.files.cow.unlink(missing_ok=True)
        disk_create.create(self.files.cow, base)
        self.base = str(base)
        self.ctx.store.put_machine(self.row())
        self.ctx.event(self.name, "reset", state=str(self.machine.state), base=str(base))

    def destroy(self) -> None:
        for a in self.machine.destroyed():
            self._perform(a)
        self.cgroup.remove()
        self._archive_logs()
        self.files.destroy()
        self.base = None
        self.boot = 0
        self.ctx.store.delete_machine(self.name)

    def _archive_logs(self) -> None:
        """Session logs are evidence: destroying a guest keeps them under archive/."""
        logs = self.files.logs
        if logs.exists() and any(logs.iterdir()):
            dest = self.ctx.layout.home / "archive" / f"{self.name}-{int(time.time())}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            logs.rename(dest)

    # ---- launching ------------------------------------------------------------------------
    def base_for_boot(self) -> Path:
        """The base image this boot uses: the one warden recorded at create or reset (self.base,
        kept in warden.db), never the file the COW header names, which the guest can rewrite.
        Only the header is read, and its size and mtime must match that base, as the kernel
        checks them: on a mismatch the kernel would fall back to the file the header names (or
        panic), so the start is refused here, naming both files and the way out."""
        if not self.files.cow.exists():
            base = self.ctx.images.resolve(self.spec.image)
            disk_create.create(self.files.cow, base)
            self.base = str(base)
            return base
        if not self.base:
            raise WardenError(
                f"{self.name}: no base image is recorded for its disk {self.files.cow}; "
                f"`warden reset {self.name}` makes a new disk over the image's current build"
            )
        header, _ = cow.read_header(self.files.cow)
        recorded = backing.Recorded(self.name, Path(self.base))
        return backing.require_header(self.files.cow, header, recorded=recorded)

    async def _admitted(self) -> bool:
        """A boot slot (daemon/admission.py), waiting for it if others boot; False: the boot
        was stopped or killed while it waited."""
        t0 = time.monotonic()
        if not await self.ctx.boots.admit(self.name, lambda why: self.post(m.Queued(why))):
            return False
        if self.machine.queued:
            self.post(m.Admitted(time.monotonic() - t0))
        return True

    async def _launch(self) -> None:
        if not await self._admitted():
            return
        spec = self.spec
        loop = asyncio.get_running_loop()
        kernel_fds: list[KernelLineFds] = []
        extras = BootExtras()
        kout: kernelout.KernelOutFds | None = None
        launched = False
        try:
            k = kernel.resolve(self.ctx.layout, spec.kernel)
            self.kernel_path = k.path
            shim = await loop.run_in_executor(None, kernel.xstate_shim, self.ctx.layout)

            def prepare_files() -> Path:  # reads the COW header (or makes the disk), mkfifo
                base = self.base_for_boot()
                self.files.create(spec.lines)
                return base

            base = await loop.run_in_executor(None, prepare_files)
            self._sync_lines()
            if self.cgroup.exists() and self.cgroup.populated():
                raise Conflict(
                    f"{self.name}: processes of an earlier boot are still in {self.cgroup.path} "
                    f"(pids {self.cgroup.pids()}); kill them with `warden kill {self.name}`"
                )
            self.cgroup.create()
            for feature in self.ctx.features:
                await feature.before_boot(self, extras)

            self.guest_hostname = extras.hostname or self.name

            def write_seed() -> None:  # reads /proc/cpuinfo and the kernel's meta.json, writes
                fpu_safe = xstate.guest_needs_fpu_safe(k.path)
                seed = bootplan.seed_for(spec, extras.network, fpu_safe, self.guest_hostname)
                seedmod.write(self.files.seed, seed)

            await loop.run_in_executor(None, write_seed)
            self.boot += 1
            self.base = str(base)
            self._bind_sockets()
            for line in spec.lines:
                kernel_fds.append(open_kernel_ends(self.files, line))
            # stdout/stderr: a FIFO the log service copies into logs/kernel-BOOT.log under a
            # budget (daemon/kernelout.py); the kernel keeps its spare read end.
            kout = kernelout.open_kernel_ends(self.files)
            inputs = bootplan.KernelInputs(
                kernel=k.path,
                shim=shim,
                base=base,
                lines=kernel_fds,
                out=kout,
                cgroup_procs=self.cgroup.procs_files(),
            )
            plan = bootplan.launch_plan(spec, self.files, extras, inputs)
            pid = await self.ctx.launcher.launch(
                self.name, plan, bootplan.passed_fds(extras, inputs)
            )
            launched = True
            self.pid_start = proc.start_time(pid)
            self.started_at = time.time()
            self._watch_exit(pid)
            for name, relay in self.lines.items():
                if name in spec.lines:
                    relay.on_output = [self._watch_last_words]
                    relay.open_boot(self.ctx.logs(self.name, name, self.boot, False))
            self.post(m.Launched(pid))
            for feature in self.ctx.features:
                await feature.after_launch(self, pid)
        except Exception as e:
            if not isinstance(e, WardenError | OSError):
                log.exception("%s: launch", self.name)
            if not launched:
                self._close_sockets()
                self._kill_group()
                await self.cgroup.emptied(5)
                await loop.run_in_executor(None, self.cgroup.remove)
                for fn in extras.cleanup:
                    with contextlib.suppress(Exception):
                        fn()
                self.ctx.boots.leave(self.name)
                self.post(m.LaunchFailed(str(e) or type(e).__name__))
            else:
                log.exception("%s: after launch", self.name)
        finally:
            for f in kernel_fds:
                f.close()
            extras.close_fds()
            if kout is not None:
                kout.close()

    def _bind_sockets(self) -> None:
        self._close_sockets()
        self.notify.open(self.files.notify)
        # Bound by a relative name: UML replies to it from its working directory, ctl/, which
        # a jailed kernel can still reach when its root cannot
        # (docs/decisions/2026-11-29-cgroups-and-jails.md, "Jails").
        self.mconsole = mconsole.AsyncClient(
            self.files.mconsole, self.files.reply, relative_reply=True, accept=self._from_kernel
        )
        self.mconsole_intr = mconsole.AsyncClient(
            self.files.mconsole,
            self.files.reply_intr,
            relative_reply=True,
            accept=self._from_kernel,
        )
        # The kernel must be able to send to both: a jailed kernel runs as the guest's uid and
        # gid, which the jail hook made ctl/'s group (root:GID 1770); an unjailed one as root
        # (ctl/ root:root 0700). Never world-writable: another guest's uid could flood them.
        group = os.stat(self.files.ctl).st_gid
        for sock in (self.files.notify, self.files.reply, self.files.reply_intr):
            os.chown(sock, 0, group)
            os.chmod(sock, 0o660 if group else 0o600)
        self.notify.watch()

    def _close_sockets(self) -> None:
        self.notify.close()
        if self.mconsole is not None:
            self.mconsole.close()
            self.mconsole = None
        if self.mconsole_intr is not None:
            self.mconsole_intr.close()
            self.mconsole_intr = None

    def _from_kernel(self, pid: int, uid: int) -> bool:
        """Whether a datagram on our sockets comes from this guest's kernel: its process once
        the pid is known, before that (a launch in progress) a process of the guest's uid (or
        root). Whoever else can reach the sockets is ignored."""
        if self.machine.pid is not None:
            return pid == self.machine.pid
        return uid in (0, os.geteuid(), self.uid)

    # ---- the notify socket: a flood source (daemon/notify.py reads it within its budget) ---
    def _dispatch_notify(
        self, item: mconsole.Notify | mconsole.Refused, now: float, budget: NotifyBudget
    ) -> None:
        if isinstance(item, mconsole.Refused):
            budget.tally.add(now, item.reason, item.size, item.problem)
        elif item.type is mconsole.NotifyType.USER_NOTIFY:
            if budget.user.admit(now, len(item.data)):
                self.ctx.guest_event(self.name, "guest-notify", type=item.type.name, text=item.text)
        elif item.type is mconsole.NotifyType.PANIC:
            # Never refused by the rate (the guest's first panic counts), once a boot.
            if self._panicked_boot == self.boot:
                budget.tally.add(now, "repeated-panic", len(item.data))
            else:
                self._panicked(item.text)
        elif not budget.control.admit(now, len(item.data)):
            pass  # counted in the tally: a kernel comes up once in a while, not often
        elif item.type is mconsole.NotifyType.SOCKET:
            self._kernel_up()
        elif any(f.notified(self, item) for f in self.ctx.features):
            # a feature's own notify (warden's kernel's MEMORY hint): the feature bounds
            # what it does with a flood of them (the balancer's RESCUE_GAP)
            pass
        else:
            self.ctx.guest_event(self.name, "guest-notify", type=item.type.name, text=item.text)

    def _flood_event(self, kind: str, counts: dict[str, Any]) -> None:
        self.ctx.event(self.name, kind, **counts)

    def _kernel_up(self) -> None:
        self.ctx.boots.up(self.name, self.cgroup.path)  # its slot goes when the boot settles
        was = self.machine.state
        self.post(m.KernelUp())
        # Hooks run when the kernel comes up (STARTING -> RUNNING) or comes back after a
        # reboot; a SOCKET notification in any other state starts nothing.
        if self.machine.state is m.State.RUNNING and was in (m.State.STARTING, m.State.RUNNING):
            for feature in self.ctx.features:
                spawn(feature.on_up(self), f"on-up:{feature.name}:{self.name}")

    def _panicked(self, message: str) -> None:
        self._panicked_boot = self.boot
        self.post(m.Panic(message))
        # The kernel is dead either way; with the shim it exits by itself at once,
        # without it (a static kernel) it may spin: do not wait long for it.
        asyncio.get_running_loop().call_later(PANIC_GRACE, self._kill_after_panic, self.boot)

    def _kill_after_panic(self, boot: int) -> None:
        # Only the boot that panicked: a start right after the panic is a new boot.
        if boot == self.boot and self.machine.pid is not None and self.machine.state in m.LIVE:
            self._kill_group()

    def _watch_last_words(self, data: bytes) -> None:
        """Remember the kernel's last words. Anything printed after them means they were not
        the last (a file on the console that holds the words, say): forget them."""
        if b"reboot: " not in data:
            if data.strip():
                self._rebooting = self._halted = False
            return
        self._rebooting = REBOOT_MARK in data
        self._halted = any(mark in data for mark in HALT_MARKS)

    # ---- exit -----------------------------------------------------------------------------
    def _watch_exit(self, pid: int) -> None:
        self._pidfd = os.pidfd_open(pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._exited)

    def _exited(self) -> None:
        assert self._pidfd is not None
        loop = asyncio.get_running_loop()
        status: int | None = None
        signo: int | None = None
        try:
            res = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            res = None  # not our child (started by an earlier daemon): no status to collect
        else:
            if res is None:
                return  # spurious wake-up
            if res.si_code == os.CLD_EXITED:
                status = res.si_status
            else:
                signo = res.si_status
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        spawn(self._after_exit(status, signo), f"exit:{self.name}")

    async def _after_exit(self, status: int | None, signo: int | None) -> None:
        self.ctx.boots.leave(self.name)
        # The kernel is gone; its pid namespace takes the rest of the guest with it, but make
        # sure (a jail-less guest on an old kernel, a process that escaped the namespace).
        if self.cgroup.exists() and self.cgroup.populated():
            self.cgroup.kill()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.cgroup.wait_empty, 10.0)
        # rmdir in the cgroup file system waits for the kernel to let the group go (RCU):
        # tens of milliseconds on a busy host, off the loop
        await loop.run_in_executor(None, self.cgroup.remove)
        for line in self.lines.values():
            if line.open:
                line.close_boot(self._exit_reason(status, signo))
        self._close_sockets()
        for feature in self.ctx.features:
            try:
                await feature.after_exit(self)
            except Exception:
                log.exception("%s: feature %s after exit", self.name, feature.name)
        rebooting, self._rebooting = self._rebooting, False
        halted, self._halted = self._halted, False
        self.pid_start = None
        self.post(m.Exited(status, signo, rebooting=rebooting, halted=halted))

    @staticmethod
    def _exit_reason(status: int | None, signo: int | None) -> str:
        if signo is not None:
            return f"kernel ended by signal {signo}"
        if status is not None:
            return f"kernel exited with status {status}"
        return "kernel ended"

    # ---- the daemon restarts ---------------------------------------------------------------
    async def reattach(self) -> bool:
        """Called by a new daemon for a guest the database says was live. True if it runs."""
        pid = self.machine.pid
        alive = (
            pid is not None
            and self.pid_start is not None
            and proc.start_time(pid) == self.pid_start
            and pid in self.cgroup.pids()
        )
        if not alive:
            if self.machine.state in m.LIVE:
                # It ended while no daemon ran: its exit status is lost.
                self.machine.pid = None
                if self.cgroup.exists() and self.cgroup.populated():
                    self.cgroup.kill()
                await self.cgroup.emptied(5)
                await asyncio.get_running_loop().run_in_executor(None, self.cgroup.remove)
                self.post(m.Exited(None, None))
            return False
        assert pid is not None
        self._bind_sockets()
        self._watch_exit(pid)
        for name, line in self.lines.items():
            if name in self.spec.lines:
                line.on_output = [self._watch_last_words]
                line.open_boot(self.ctx.logs(self.name, name, self.boot, True), reattach=True)
        self.post(m.Reattached(pid))
        spawn(self._go_after_reattach(), f"go:{self.name}")
        return True

    async def _go_after_reattach(self) -> None:
        """A snapshot stops the kernel over its mconsole and sends `go` after the copy: a
        daemon killed in between leaves the guest frozen, and nothing else would ever resume
        it. `go` to a kernel that is not stopped only answers "Not stopped" (an error)."""
        try:
            await self.request("go", timeout=5)
        except WardenError:
            return  # not stopped (the usual answer), or not answering: nothing to resume
        self.ctx.event(self.name, "resumed", reason="its kernel had been left stopped")

    def detach(self) -> None:
        """The daemon is leaving and the guest stays: release our ends only."""
        for t in list(self._timers):
            self._cancel_timer(t)
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        for line in self.lines.values():
            if line.open:
                line.detach_daemon()
            line.drop_all("the daemon is shutting down")
        self._close_sockets()

"""The one seam between the daemon's core and its features (console, jail, net, memory, ...).

A feature is a class that implements `Feature`: the daemon calls the same hooks on every
feature, in the order the composition root (warden.app.compose) lists them. It sees the
guests and the daemon's services only through `Core` and `Guest`, which the core implements
(daemon/context.py, daemon/supervisor.py): a feature never holds the Daemon, never reaches a
supervisor's internals, and never imports another feature.

Life cycle, as the daemon calls it (docs/architecture.md, "The path of a boot"):

    load()              once, before any fleet is checked: read what a previous daemon saved
    check_fleet(fleet)  before a fleet file is applied: raise WardenError to refuse it (no
                        change has been made); runs off the loop or awaits: it must not block
    start()             once, after every guest that outlived the previous daemon is
                        re-attached; in list order (stop() in reverse)
    fleet_changed()     a fleet file was applied (the core's fleet is the new one)
    check_start(guest)  `warden start` (or up): raise WardenError to refuse it before anything
                        changes (memory admission). Restarts by the restart policy skip it.
    before_boot(guest, extras)   add fds, kernel arguments, env, a jail plan to one boot, and
                        register in extras.cleanup what to undo if the launch fails; raise
                        WardenError to refuse the boot
    after_launch(guest, pid)     the kernel process exists (it is not up yet)
    on_up(guest)        the kernel answers its mconsole (also after a reboot)
    after_exit(guest)   the kernel and every process of the guest are gone
    notified(guest, note)  a notification from the guest's kernel of a type the core does not
                        handle itself (warden's kernel's MEMORY hint from its OOM hook): True
                        if the feature took it (else it becomes a guest-notify event). Called
                        from the socket's reader at whatever rate the guest sends: no await,
                        bounded work (the balancer rate-limits its rescues)
    flush()             what the feature writes into guests' folders is on disk (before the
                        daemon archives a folder a killed daemon left behind)

`Feature` is a Protocol with do-nothing bodies: a feature subclasses it and writes the hooks it
needs; the daemon calls every hook on every feature (no probing with hasattr).
"""

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from warden.daemon.files import MachineFiles
from warden.daemon.lines import Line, LineLog
from warden.daemon.machine import State
from warden.host.cgroup import Cgroup, Hierarchy
from warden.paths import Layout
from warden.spec.fleet import Fleet, Machine
from warden.store import Store
from warden.uml.mconsole import Notify


@dataclass
class BootExtras:
    """What features add to one boot. fds are passed to the kernel and closed after launch."""

    fds: list[int] = field(default_factory=list)
    kernel_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    network: dict[str, str] = field(default_factory=dict)  # seed network.env
    jail: dict[str, Any] | None = None  # warden.host.jail plan, set by the jail feature
    # Host path -> the path the kernel sees it at (a jail bind-mounts files elsewhere).
    paths: dict[str, str] = field(default_factory=dict)
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    hostname: str = ""  # the guest's hostname if not the machine's name (a honeypot persona)

    def view(self, path: Path) -> Path:
        """Where the kernel sees host file `path` (itself, unless a feature remapped it)."""
        return Path(self.paths.get(str(path), str(path)))

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class Guest(Protocol):
    """What a feature sees of one guest, and the one thing it may set (its uid)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> Machine: ...
    @property
    def files(self) -> MachineFiles: ...
    @property
    def state(self) -> State: ...
    @property
    def pause_reason(self) -> str:
        """While paused: who paused it ("admin", "storage"); "" otherwise."""

    @property
    def pid(self) -> int | None:
        """The kernel's pid while it runs."""

    @property
    def pid_start(self) -> int | None:
        """The kernel's start time (warden.proc): tells a reused pid apart."""

    @property
    def boot(self) -> int:
        """Boots so far; during before_boot, the number of the boot before this one."""

    @property
    def base(self) -> str | None:
        """The base image of its COW disk."""

    @property
    def guest_hostname(self) -> str:
        """The hostname the seed gave the guest this boot (its name, or a persona's)."""

    @property
    def kernel_path(self) -> Path | None: ...
    @property
    def cgroup(self) -> Cgroup: ...
    @property
    def lines(self) -> Mapping[str, Line]: ...

    # The guest's own uid, given by the jail feature in before_boot (None: it runs as root).
    uid: int | None
    # The host CPUs its cpuset allows ("1", "0-1"), given by the cpu feature (None: not placed).
    cpus: str | None

    def base_for_boot(self) -> Path:
        """The base image the coming boot uses, checked against its COW header."""

    async def request(self, command: str, timeout: float | None = None) -> str:
        """An mconsole command; Conflict when the guest is not live, MconsoleError when it
        refuses or does not answer within `timeout`."""

    async def request_intr(self, command: str, timeout: float | None = None) -> str:
        """A command the guest answers in its interrupt handler (`oomplug`), on a client of
        its own (ctl/reply-intr): never queued behind a `proc` or `config` the guest's work
        queue has not served yet."""


class Guests(Protocol):
    """The daemon's guests, by name, read-only."""

    def get(self, name: str) -> Guest | None: ...
    def require(self, name: str) -> Guest:
        """The guest named `name`; NotFound, naming it, if there is none."""

    def __iter__(self) -> Iterator[Guest]: ...
    def __contains__(self, name: object) -> bool: ...


class Control(Protocol):
    """What a feature may ask the core to do to a guest, with the checks the API's requests
    get (the forensics feature recycles a guest: kill, reset, start)."""

    def start(self, name: str) -> None:
        """As `warden start NAME` without waiting: admission, files, the start."""

    async def stop(self, name: str, timeout: float = 30.0, wait: bool = True) -> None:
        """As `warden stop NAME`: ctrl-alt-del (given `timeout` s), then halt, then kill;
        awaited unless `wait` is False."""

    async def kill(self, name: str, wait: bool = True) -> None: ...

    async def apply(self, text: str, source: str) -> dict[str, Any]:
        """Apply a fleet file as `warden apply --prune` does (the cluster feature applies the
        part of the cluster's fleet this host owns); SpecError or Conflict refuse it."""

    def reset(self, name: str) -> None:
        """A new COW disk over the image's current build (the guest must be stopped)."""

    async def wait_state(self, name: str, states: tuple[State, ...], timeout: float) -> State:
        """Until the guest is in one of `states`; TimeoutError after `timeout` seconds."""

    def pause(self, name: str, reason: str) -> None:
        """Freeze a running guest (as `warden pause`), saying who paused it; Conflict if it is
        not running."""

    def resume(self, name: str) -> None:
        """Thaw a paused guest (as `warden resume`); Conflict if it is not paused."""


class LogFactory(Protocol):
    def __call__(self, machine: str, line: str, boot: int, reattach: bool) -> LineLog: ...


class Core(Protocol):
    """What the core offers every feature."""

    @property
    def layout(self) -> Layout: ...
    @property
    def hierarchy(self) -> Hierarchy: ...
    @property
    def fleet(self) -> Fleet:
        """The fleet in force (fleet_changed says when it changes)."""

    @property
    def guests(self) -> Guests: ...
    @property
    def logs(self) -> LogFactory:
        """The log of one terminal line (or of a honeypot's tty log) for one boot."""

    @property
    def control(self) -> Control: ...
    @property
    def store(self) -> Store:
        """The daemon's database, to read (events for a timeline); features write events
        through `event`."""

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        """An event the daemon decided on: always stored, and sent to watchers."""

    def guest_event(self, machine: str, kind: str, **detail: Any) -> None:
        """An event a guest can cause at will: stored within the guest's event budget."""


class Feature(Protocol):
    """A feature of the daemon (see the module docstring for when each hook runs)."""

    name: str

    def load(self) -> None:
        return None

    async def check_fleet(self, fleet: Fleet) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def fleet_changed(self) -> None:
        return None

    def check_start(self, guest: Guest) -> None:
        return None

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        return None

    async def after_launch(self, guest: Guest, pid: int) -> None:
        return None

    async def on_up(self, guest: Guest) -> None:
        return None

    async def after_exit(self, guest: Guest) -> None:
        return None

    def notified(self, guest: Guest, note: Notify) -> bool:
        return False

    async def flush(self) -> None:
        """Wait until what this feature writes into guests' folders is on disk (the console:
        session logs written, closed ones compressed), before the daemon moves a folder away."""
        return None

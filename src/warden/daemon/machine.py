"""The life cycle of one guest, as a pure state machine: events in, actions out.

No I/O happens here. The supervisor (daemon/supervisor.py) feeds events (a start request, the
kernel's pid, the mconsole notify, a timer, the exit status) and performs the actions returned
(launch, send an mconsole command, kill the cgroup, arm a timer, persist). Tests drive it with
scripted events (tests/daemon/test_machine.py).

States:
    absent    defined in the fleet file, no files on disk yet (never created or destroyed)
    stopped   files exist, no kernel runs; `last_exit` says how the last boot ended
    starting  asked to start: waiting for a boot slot (`queued`, daemon/admission.py: boots run
              at a concurrency the host's CPUs can take), or the kernel was launched and
              the mconsole notify that it is up has not come yet
    running   the kernel answers its mconsole
    stopping  asked to stop: ctrl-alt-del sent, then halt, then cgroup.kill, each on a timer
    paused    every process frozen (cgroup.freeze)
    crashed   the kernel ended without being asked to (panic, signal, failed start)

Stop escalation (defaults): cad -> 30 s -> halt -> 10 s -> cgroup.kill -> 5 s -> reported.
Restart policy ("no" | "on-failure" | "always"): applied when the kernel ends while the admin
wants it running; delays back off 1, 2, 4 ... 60 s and reset after 60 s of healthy running.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from warden.errors import Conflict


class State(StrEnum):
    ABSENT = "absent"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"
    CRASHED = "crashed"


LIVE = (State.STARTING, State.RUNNING, State.STOPPING, State.PAUSED)


# ---- events -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Launched:
    pid: int


@dataclass(frozen=True)
class LaunchFailed:
    error: str


@dataclass(frozen=True)
class KernelUp:
    """mconsole notify SOCKET: the kernel answers its management console."""


@dataclass(frozen=True)
class Panic:
    message: str


@dataclass(frozen=True)
class Stop:
    cad_timeout: float = 30.0
    halt_timeout: float = 10.0


@dataclass(frozen=True)
class Kill:
    pass


@dataclass(frozen=True)
class Pause:
    """`reason`: who paused it, "admin" (warden pause) or "storage" (WARDEN_HOME ran low: the
    storage feature resumes it when space returns; an admin's pause it never undoes)."""

    reason: str = "admin"


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Exited:
    """The kernel process is gone. `status`/`signal` are None when unknown (not our child)."""

    status: int | None
    signal: int | None
    rebooting: bool = False  # the guest asked for a reboot (seen on its console)
    halted: bool = False  # its kernel said it halted or powered off (seen on its console)


@dataclass(frozen=True)
class Timeout:
    timer: str


@dataclass(frozen=True)
class Queued:
    """The boot waits for a slot (too many boots at once for the host's CPUs)."""

    reason: str


@dataclass(frozen=True)
class Admitted:
    """The boot got its slot: the launch goes on, and its boot timeout starts now."""

    waited: float


@dataclass(frozen=True)
class Reattached:
    """A new daemon found the kernel still running."""

    pid: int


Event = (
    Start
    | Launched
    | LaunchFailed
    | KernelUp
    | Panic
    | Stop
    | Kill
    | Pause
    | Resume
    | Exited
    | Timeout
    | Reattached
    | Queued
    | Admitted
)


# ---- actions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    pass


@dataclass(frozen=True)
class Mconsole:
    command: str


@dataclass(frozen=True)
class KillGroup:
    pass


@dataclass(frozen=True)
class Freeze:
    pass


@dataclass(frozen=True)
class Thaw:
    pass


@dataclass(frozen=True)
class StartTimer:
    timer: str
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    timer: str


@dataclass(frozen=True)
class Persist:
    """State changed: write the machine's row and an event with this `kind` and detail."""

    kind: str
    detail: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Dequeue:
    """A queued boot is called off (stopped or killed before its turn): give up its place."""


Action = (
    Launch | Mconsole | KillGroup | Freeze | Thaw | StartTimer | CancelTimer | Persist | Dequeue
)

BOOT_TIMEOUT = 120.0
REATTACH_CAD_TIMEOUT = 30.0  # a stop resumed by a new daemon: the defaults of `warden stop`
REATTACH_HALT_TIMEOUT = 10.0
KILL_GRACE = 5.0
RESTART_MAX_DELAY = 60.0
HEALTHY_AFTER = 60.0


@dataclass
class Machine:
    name: str
    restart: str = "no"
    state: State = State.ABSENT
    desired: str = "stopped"  # what the admin last asked for: "running" or "stopped"
    pid: int | None = None
    last_exit: dict[str, object] | None = None
    restarts: int = 0  # consecutive automatic restarts (for the back-off)
    _stop_phase: str = ""  # "", "cad", "halt", "kill"
    _panic: str = ""
    _up_since: float | None = None
    _launch_error: str = ""
    _halt_timeout: float = 10.0
    queued: str = ""  # why the boot waits for a slot ("" : it does not wait)
    history: list[str] = field(default_factory=list)  # for tests and `warden events`
    pause_reason: str = ""  # while paused: Pause.reason

    # -- helpers
    def _to(self, state: State, kind: str, **detail: object) -> list[Action]:
        self.state = state
        if state is not State.PAUSED:
            self.pause_reason = ""
        self.history.append(f"{state}:{kind}")
        return [Persist(kind, tuple((k, str(v)) for k, v in detail.items()))]

    def created(self) -> list[Action]:
        if self.state is State.ABSENT:
            return self._to(State.STOPPED, "created")
        return []

    def destroyed(self) -> list[Action]:
        if self.state in LIVE:
            raise Conflict(f"{self.name} is {self.state}; stop or kill it before destroying it")
        self.desired = "stopped"
        return self._to(State.ABSENT, "destroyed")

    # -- the transition function
    def handle(self, event: Event, now: float) -> list[Action]:
        match event:
            case Start():
                return self._start(now)
            case Launched(pid=pid):
                self.pid = pid
                return [Persist("launched", (("pid", str(pid)),))]
            case LaunchFailed(error=error):
                return self._launch_failed(error)
            case KernelUp():
                return self._kernel_up(now)
            case Panic(message=message):
                self._panic = message
                return [Persist("panic", (("message", message),))]
            case Stop():
                return self._stop(event)
            case Kill():
                return self._kill()
            case Pause(reason=reason):
                return self._pause(reason)
            case Resume():
                return self._resume()
            case Exited():
                return self._exited(event, now)
            case Timeout(timer=timer):
                return self._timeout(timer, now)
            case Queued(reason=reason):
                return self._queued(reason)
            case Admitted(waited=waited):
                return self._admitted(waited)
            case Reattached(pid=pid):
                self.pid = pid
                self._up_since = now
                if self.state is State.STOPPING:
                    return self._resume_stop(pid)
                if self.state not in (State.RUNNING, State.PAUSED):
                    self.desired = "running"
                    return self._to(State.RUNNING, "reattached", pid=pid)
                return [Persist("reattached", (("pid", str(pid)),))]
        raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover

    def _start(self, now: float) -> list[Action]:
        if self.state in LIVE:
            raise Conflict(f"{self.name} is already {self.state}")
        self.desired = "running"
        self._stop_phase = ""
        self._panic = ""
        self._launch_error = ""
        self.queued = ""
        self.pid = None
        return [
            CancelTimer("restart"),
            *self._to(State.STARTING, "starting"),
            Launch(),
            StartTimer("boot", BOOT_TIMEOUT),
        ]

    def _queued(self, reason: str) -> list[Action]:
        # The boot timeout is for a boot that runs: it starts again when the slot is given, so
        # that no boot times out because others are booting (issue 19).
        if self.state is not State.STARTING or self.pid is not None:
            return []
        self.queued = reason
        return [CancelTimer("boot"), Persist("queued", (("reason", reason),))]

    def _admitted(self, waited: float) -> list[Action]:
        if not self.queued:
            return []
        self.queued = ""
        return [
            StartTimer("boot", BOOT_TIMEOUT),
            Persist("admitted", (("waited", f"{waited:.1f}s"),)),
        ]

    def _called_off(self, kind: str) -> list[Action]:
        """Stop or kill of a boot still queued: nothing runs, so it is stopped at once."""
        self.queued = ""
        self.desired = "stopped"
        self.last_exit = {"reason": f"{kind} while its boot was queued"}
        return [
            CancelTimer("restart"),
            CancelTimer("boot"),
            Dequeue(),
            *self._to(State.STOPPED, kind, reason=self.last_exit["reason"]),
        ]

    def _launch_failed(self, error: str) -> list[Action]:
        # A start that cannot even exec is a configuration problem: retrying will not help.
        self._launch_error = error
        self.queued = ""
        self.desired = "stopped"
        self.last_exit = {"reason": "launch failed", "error": error}
        return [CancelTimer("boot"), *self._to(State.CRASHED, "launch-failed", error=error)]

    def _kernel_up(self, now: float) -> list[Action]:
        self._up_since = now
        if self.state is State.STARTING:
            return [CancelTimer("boot"), *self._to(State.RUNNING, "up", pid=self.pid)]
        if self.state is State.RUNNING:
            # UML re-execs itself when the guest reboots: same process, a second notify.
            return [Persist("rebooted", (("pid", str(self.pid)),))]
        return []

    def _stop(self, ev: Stop) -> list[Action]:
        if self.state not in LIVE:
            raise Conflict(f"{self.name} is {self.state}, not running")
        if self.queued:
            return self._called_off("stopped")
        self.desired = "stopped"
        actions: list[Action] = [CancelTimer("restart")]
        if self.state is State.PAUSED:
            actions.append(Thaw())
        if self.state is State.STARTING:
            # No mconsole yet: nothing can shut it down cleanly.
            self._stop_phase = "kill"
            return [
                *actions,
                *self._to(State.STOPPING, "stopping"),
                KillGroup(),
                StartTimer("kill", KILL_GRACE),
            ]
        self._stop_phase = "cad"
        self._halt_timeout = ev.halt_timeout
        return [
            *actions,
            *self._to(State.STOPPING, "stopping"),
            Mconsole("cad"),
            StartTimer("stop", ev.cad_timeout),
        ]

    def _resume_stop(self, pid: int) -> list[Action]:
        """A daemon died while stopping this guest; its timers died with it. The stop goes on
        from the polite step: ctrl-alt-del again is harmless to a guest already shutting
        down, and the escalation (halt, then kill) is armed again."""
        self.desired = "stopped"
        self._stop_phase = "cad"
        self._halt_timeout = REATTACH_HALT_TIMEOUT
        return [
            Persist("reattached", (("pid", str(pid)), ("stop", "resumed"))),
            Mconsole("cad"),
            StartTimer("stop", REATTACH_CAD_TIMEOUT),
        ]

    def _kill(self) -> list[Action]:
        if self.state not in LIVE:
            raise Conflict(f"{self.name} is {self.state}, not running")
        if self.queued:
            return self._called_off("killed")
        self.desired = "stopped"
        self._stop_phase = "kill"
        return [
            CancelTimer("restart"),
            CancelTimer("stop"),
            CancelTimer("boot"),
            *self._to(State.STOPPING, "killing"),
            KillGroup(),
            StartTimer("kill", KILL_GRACE),
        ]

    def _pause(self, reason: str) -> list[Action]:
        if self.state is State.PAUSED and reason != self.pause_reason:
            # Already frozen: the reason changes (an admin's pause of a guest the storage watch
            # holds is the admin's from now on: space coming back does not resume it).
            self.pause_reason = reason
            return [Persist("paused", (("reason", reason),))]
        if self.state is not State.RUNNING:
            raise Conflict(f"{self.name} is {self.state}; only a running guest can be paused")
        actions = [Freeze(), *self._to(State.PAUSED, "paused", reason=reason)]
        self.pause_reason = reason
        return actions

    def _resume(self) -> list[Action]:
        if self.state is not State.PAUSED:
            raise Conflict(f"{self.name} is {self.state}, not paused")
        detail = {"paused_by": self.pause_reason} if self.pause_reason else {}
        return [Thaw(), *self._to(State.RUNNING, "resumed", **detail)]

    def _timeout(self, timer: str, now: float) -> list[Action]:
        if timer == "restart":
            if self.desired == "running" and self.state in (State.STOPPED, State.CRASHED):
                return self._start(now)
            return []
        if timer == "boot" and self.state is State.STARTING:
            self._stop_phase = "kill"
            self.last_exit = {"reason": "boot timeout"}
            return [Persist("boot-timeout"), KillGroup(), StartTimer("kill", KILL_GRACE)]
        if timer == "stop" and self.state is State.STOPPING and self._stop_phase == "cad":
            self._stop_phase = "halt"
            return [
                Persist("stop-escalated", (("to", "halt"),)),
                Mconsole("halt"),
                StartTimer("stop", self._halt_timeout),
            ]
        if timer == "stop" and self.state is State.STOPPING and self._stop_phase == "halt":
            self._stop_phase = "kill"
            return [
                Persist("stop-escalated", (("to", "kill"),)),
                KillGroup(),
                StartTimer("kill", KILL_GRACE),
            ]
        if timer == "kill" and self.state in LIVE:
            # cgroup.kill did not empty the group in time: say so, try again.
            return [Persist("kill-slow"), KillGroup(), StartTimer("kill", KILL_GRACE)]
        return []

    def _exited(self, ev: Exited, now: float) -> list[Action]:
        if self.state not in LIVE:
            return []
        phase = self._stop_phase
        cancel: list[Action] = [CancelTimer("boot"), CancelTimer("stop"), CancelTimer("kill")]
        exit_info: dict[str, object] = {"status": ev.status, "signal": ev.signal}
        healthy = self._up_since is not None and now - self._up_since >= HEALTHY_AFTER
        if healthy:
            self.restarts = 0
        self._up_since = None
        self.pid = None
        if self._panic and (ev.halted or ev.rebooting):
            # The kernel had halted (its disks synced and unmounted) when it faulted: UML 6.1's
            # exit path can run a pending timer or I/O signal on the host's own stack, which
            # faults (docs/decisions/2026-12-07-halt-fault.md). Not a crash; said, not hidden.
            exit_info["after_halt"] = self._panic
            self._panic = ""
        if phase == "kill" and self.last_exit == {"reason": "boot timeout"}:
            exit_info["reason"] = "boot timeout"
            state, kind = State.CRASHED, "crashed"
        elif phase == "kill":
            exit_info["reason"] = "killed"
            state, kind = State.STOPPED, "killed"
        elif phase in ("cad", "halt"):
            exit_info["reason"] = "stopped" if phase == "cad" else "halted after timeout"
            if self._panic:
                # Asked to stop, and it stopped, but its kernel panicked on the way down
                # before it halted: keep what it said, the operator will want it.
                exit_info["message"] = self._panic
            state, kind = State.STOPPED, "stopped"
        elif self.state is State.STOPPING:
            # Read back from the database: the daemon that was stopping it died, and the guest
            # ended before another one came. It was asked to stop, and it stopped.
            exit_info["reason"] = "stopped while no daemon ran"
            state, kind = State.STOPPED, "stopped"
        elif self._panic:
            exit_info["reason"] = "panic"
            exit_info["message"] = self._panic
            state, kind = State.CRASHED, "crashed"
        elif ev.rebooting:
            exit_info["reason"] = "guest rebooted"
            state, kind = State.STOPPED, "rebooting"
        elif ev.halted or (ev.status == 0 and ev.signal is None):
            exit_info["reason"] = "guest powered off"
            self.desired = "stopped"
            state, kind = State.STOPPED, "powered-off"
        elif ev.status is None and ev.signal is None:
            exit_info["reason"] = "exited while no daemon ran"
            state, kind = State.CRASHED, "crashed"
        else:
            exit_info["reason"] = (
                f"killed by signal {ev.signal}" if ev.signal else f"exit status {ev.status}"
            )
            state, kind = State.CRASHED, "crashed"
        self._stop_phase = ""
        self.last_exit = exit_info
        actions = cancel + self._to(state, kind, **{k: v for k, v in exit_info.items() if v})
        if ev.rebooting and self.desired == "running":
            return actions + self._start(now)
        wants = self.desired == "running" and (
            self.restart == "always" or (self.restart == "on-failure" and state is State.CRASHED)
        )
        if wants:
            delay = min(RESTART_MAX_DELAY, float(2**self.restarts))
            self.restarts += 1
            actions += [
                Persist("restart-scheduled", (("in", f"{delay:g}s"),)),
                StartTimer("restart", delay),
            ]
        return actions

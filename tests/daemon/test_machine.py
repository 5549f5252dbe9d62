"""The life-cycle state machine, driven by scripted events (no I/O)."""

import pytest

from warden.daemon import machine as m
from warden.errors import Conflict


def kinds(actions: list[m.Action]) -> list[str]:
    out = []
    for a in actions:
        match a:
            case m.Persist(kind=k):
                out.append(f"persist:{k}")
            case m.Mconsole(command=c):
                out.append(f"mconsole:{c}")
            case m.StartTimer(timer=t, seconds=s):
                out.append(f"timer:{t}:{s:g}")
            case m.CancelTimer(timer=t):
                out.append(f"cancel:{t}")
            case _:
                out.append(type(a).__name__)
    return out


def running(restart: str = "no", t: float = 0.0) -> m.Machine:
    mm = m.Machine("g", restart=restart)
    mm.created()
    mm.handle(m.Start(), t)
    mm.handle(m.Launched(42), t)
    mm.handle(m.KernelUp(), t)
    assert mm.state is m.State.RUNNING
    return mm


def test_start_launches_and_arms_boot_timer() -> None:
    mm = m.Machine("g")
    mm.created()
    acts = mm.handle(m.Start(), 0)
    assert kinds(acts) == ["cancel:restart", "persist:starting", "Launch", "timer:boot:120"]
    assert kinds(mm.handle(m.KernelUp(), 1)) == ["cancel:boot", "persist:up"]
    assert mm.state is m.State.RUNNING and mm.desired == "running"


def test_start_twice_is_a_conflict() -> None:
    mm = running()
    with pytest.raises(Conflict, match="already running"):
        mm.handle(m.Start(), 1)


def test_stop_escalates_cad_halt_kill() -> None:
    mm = running()
    assert kinds(mm.handle(m.Stop(cad_timeout=30, halt_timeout=10), 1)) == [
        "cancel:restart",
        "persist:stopping",
        "mconsole:cad",
        "timer:stop:30",
    ]
    assert kinds(mm.handle(m.Timeout("stop"), 31)) == [
        "persist:stop-escalated",
        "mconsole:halt",
        "timer:stop:10",
    ]
    assert kinds(mm.handle(m.Timeout("stop"), 41)) == [
        "persist:stop-escalated",
        "KillGroup",
        "timer:kill:5",
    ]
    mm.handle(m.Exited(None, 9), 42)
    assert mm.state is m.State.STOPPED and mm.last_exit == {
        "status": None,
        "signal": 9,
        "reason": "killed",
    }


def test_clean_stop() -> None:
    mm = running()
    mm.handle(m.Stop(), 1)
    mm.handle(m.Exited(0, None), 3)
    assert mm.state is m.State.STOPPED and mm.last_exit["reason"] == "stopped"  # type: ignore[index]


def test_a_panic_on_the_way_down_is_a_stop_that_keeps_the_message() -> None:
    mm = running()
    mm.handle(m.Stop(), 1)
    mm.handle(m.Panic("Attempted to kill init!"), 2)
    mm.handle(m.Exited(134, None), 3)
    assert mm.state is m.State.STOPPED and mm.last_exit == {
        "status": 134,
        "signal": None,
        "reason": "stopped",
        "message": "Attempted to kill init!",
    }


def test_guest_poweroff_is_not_restarted_even_with_always() -> None:
    mm = running(restart="always")
    acts = mm.handle(m.Exited(0, None), 5)
    assert mm.state is m.State.STOPPED and "timer:restart:1" not in kinds(acts)
    assert mm.desired == "stopped"


def test_crash_restarts_with_backoff_and_resets_after_healthy_run() -> None:
    mm = running(restart="on-failure")
    delays = []
    t = 0.0
    for _ in range(4):
        acts = mm.handle(m.Exited(None, 9), t)
        assert mm.state is m.State.CRASHED
        delays += [a.seconds for a in acts if isinstance(a, m.StartTimer) and a.timer == "restart"]
        mm.handle(m.Timeout("restart"), t)
        mm.handle(m.KernelUp(), t + 1)
        t += 2
    assert delays == [1, 2, 4, 8]
    # After a minute of healthy running the back-off starts over.
    acts = mm.handle(m.Exited(None, 9), t + 100)
    assert [a.seconds for a in acts if isinstance(a, m.StartTimer)] == [1]


def test_no_restart_policy_leaves_it_crashed() -> None:
    mm = running(restart="no")
    acts = mm.handle(m.Exited(1, None), 5)
    assert mm.state is m.State.CRASHED and not [a for a in acts if isinstance(a, m.StartTimer)]
    assert mm.last_exit["reason"] == "exit status 1"  # type: ignore[index]


def test_panic_is_reported_as_such() -> None:
    mm = running()
    mm.handle(m.Panic("Kernel panic - not syncing: oops"), 2)
    mm.handle(m.Exited(134, None), 2.1)
    assert mm.state is m.State.CRASHED
    assert mm.last_exit["reason"] == "panic"  # type: ignore[index]
    assert "oops" in str(mm.last_exit["message"])  # type: ignore[index]


FAULT = "Kernel mode fault at addr 0x308, ip 0x600835b6"  # UML 6.1's exit path, seen in CI


def test_a_fault_after_the_kernel_halted_is_a_poweroff_not_a_crash() -> None:
    mm = running(restart="always")
    mm.handle(m.Panic(FAULT), 2)
    acts = mm.handle(m.Exited(134, None, halted=True), 2.1)
    assert mm.state is m.State.STOPPED and mm.desired == "stopped"
    assert mm.last_exit == {
        "status": 134,
        "signal": None,
        "reason": "guest powered off",
        "after_halt": FAULT,
    }
    assert "Launch" not in kinds(acts) and not any(
        k.startswith("timer:restart") for k in kinds(acts)
    )


def test_a_fault_after_a_reboot_line_still_reboots() -> None:
    mm = running(restart="no")
    mm.handle(m.Panic(FAULT), 2)
    acts = mm.handle(m.Exited(134, None, rebooting=True), 2.1)
    assert mm.state is m.State.STARTING and "Launch" in kinds(acts)
    assert mm.last_exit["reason"] == "guest rebooted"  # type: ignore[index]
    assert mm.last_exit["after_halt"] == FAULT  # type: ignore[index]


def test_a_fault_after_halt_in_a_stop_is_a_clean_stop() -> None:
    mm = running()
    mm.handle(m.Stop(), 1)
    mm.handle(m.Panic(FAULT), 2)
    mm.handle(m.Exited(134, None, halted=True), 3)
    assert mm.state is m.State.STOPPED
    assert mm.last_exit["reason"] == "stopped" and "message" not in mm.last_exit  # type: ignore[index,operator]
    assert mm.last_exit["after_halt"] == FAULT  # type: ignore[index]


def test_guest_reboot_restarts_regardless_of_policy() -> None:
    mm = running(restart="no")
    acts = mm.handle(m.Exited(1, None, rebooting=True), 5)
    assert mm.state is m.State.STARTING and "Launch" in kinds(acts)


def test_launch_failure_is_not_retried() -> None:
    mm = m.Machine("g", restart="always")
    mm.created()
    mm.handle(m.Start(), 0)
    acts = mm.handle(m.LaunchFailed("no kernel"), 0)
    assert mm.state is m.State.CRASHED and mm.desired == "stopped"
    assert "Launch" not in kinds(acts)


def test_boot_timeout_kills_and_reports() -> None:
    mm = m.Machine("g")
    mm.created()
    mm.handle(m.Start(), 0)
    mm.handle(m.Launched(7), 0)
    assert "KillGroup" in kinds(mm.handle(m.Timeout("boot"), 120))
    mm.handle(m.Exited(None, 9), 121)
    assert mm.state is m.State.CRASHED and mm.last_exit["reason"] == "boot timeout"  # type: ignore[index]


def test_pause_resume_and_stop_while_paused() -> None:
    mm = running()
    assert kinds(mm.handle(m.Pause(), 1)) == ["Freeze", "persist:paused"]
    with pytest.raises(Conflict):
        mm.handle(m.Pause(), 1)
    acts = mm.handle(m.Stop(), 2)
    assert kinds(acts)[:2] == ["cancel:restart", "Thaw"]


def test_a_pause_says_who_paused_and_an_admin_pause_takes_over_a_storage_pause() -> None:
    mm = running()
    acts = mm.handle(m.Pause("storage"), 1)
    assert kinds(acts) == ["Freeze", "persist:paused"]
    assert acts[-1] == m.Persist("paused", (("reason", "storage"),))
    assert mm.pause_reason == "storage"
    # Already frozen: no second Freeze, the reason is the admin's from now on.
    assert kinds(mm.handle(m.Pause("admin"), 2)) == ["persist:paused"]
    assert mm.pause_reason == "admin"
    with pytest.raises(Conflict):
        mm.handle(m.Pause("admin"), 3)
    acts = mm.handle(m.Resume(), 4)
    assert kinds(acts) == ["Thaw", "persist:resumed"]
    assert acts[-1] == m.Persist("resumed", (("paused_by", "admin"),))
    assert mm.pause_reason == "" and mm.state is m.State.RUNNING


def test_leaving_paused_any_way_clears_the_reason() -> None:
    mm = running()
    mm.handle(m.Pause("storage"), 1)
    mm.handle(m.Kill(), 2)
    assert mm.state is m.State.STOPPING and mm.pause_reason == ""


def test_exit_while_no_daemon_ran() -> None:
    mm = running()
    mm.handle(m.Exited(None, None), 9)
    assert mm.state is m.State.CRASHED
    assert mm.last_exit["reason"] == "exited while no daemon ran"  # type: ignore[index]


def test_destroy_requires_stopped() -> None:
    mm = running()
    with pytest.raises(Conflict, match="stop or kill it before destroying"):
        mm.destroyed()
    mm.handle(m.Kill(), 1)
    mm.handle(m.Exited(None, 9), 1)
    mm.destroyed()
    assert mm.state is m.State.ABSENT


def starting() -> m.Machine:
    mm = m.Machine("g")
    mm.created()
    mm.handle(m.Start(), 0)
    return mm


def test_a_queued_boot_has_no_boot_timeout_until_it_is_admitted() -> None:
    mm = starting()
    assert kinds(mm.handle(m.Queued("boot queued: 1 of 1"), 1)) == [
        "cancel:boot",
        "persist:queued",
    ]
    assert mm.state is m.State.STARTING and mm.queued == "boot queued: 1 of 1"
    # the old boot timer (cancelled in the supervisor) firing late does nothing either way:
    # the timeout that counts is armed at admission
    assert kinds(mm.handle(m.Admitted(waited=300.0), 301)) == [
        "timer:boot:120",
        "persist:admitted",
    ]
    assert mm.queued == ""
    assert kinds(mm.handle(m.Admitted(waited=1.0), 302)) == []  # only once
    mm.handle(m.Launched(7), 302)
    assert kinds(mm.handle(m.KernelUp(), 303)) == ["cancel:boot", "persist:up"]


def test_queued_is_ignored_once_the_kernel_was_launched() -> None:
    mm = starting()
    mm.handle(m.Launched(7), 1)
    assert mm.handle(m.Queued("late"), 2) == [] and mm.queued == ""


@pytest.mark.parametrize(("event", "kind"), [(m.Kill(), "killed"), (m.Stop(), "stopped")])
def test_a_queued_boot_stopped_or_killed_is_called_off_at_once(event: m.Event, kind: str) -> None:
    mm = starting()
    mm.handle(m.Queued("boot queued"), 1)
    acts = mm.handle(event, 2)
    assert kinds(acts) == ["cancel:restart", "cancel:boot", "Dequeue", f"persist:{kind}"]
    assert mm.state is m.State.STOPPED and mm.desired == "stopped"
    assert mm.last_exit == {"reason": f"{kind} while its boot was queued"}
    assert mm.queued == ""
    # a start later is a fresh boot
    assert "Launch" in kinds(mm.handle(m.Start(), 3))

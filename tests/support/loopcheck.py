"""Driver tests run their event loop here: asyncio debug mode with slow_callback_duration 0.05 s,
and every callback timed. A callback that computes for SLOW_CPU seconds, or is blocked for
SLOW_BLOCKED seconds (a socket wait, a sleep, a join: the blocking calls these drivers could
make wait for seconds, up to 60 s socket timeouts and 5 s cgroup waits), fails the test, which
names it (for a task's step: the task, and where it stands).

asyncio's own warning counts wall time, and on this shared 2-core machine (load 10-15 while
other helpers boot guests and build images) a callback that does nothing wrong is sometimes
descheduled for a few hundred milliseconds, or waits 0.05-0.15 s for the disk in a stat() or a
page fault. So each callback's wall time is split with the thread's scheduler statistics
(/proc/thread-self/schedstat: time on a CPU, time waiting for one); what is left is time the
thread was blocked, which preemption never adds to, and disk contention only to a point.
"""

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

SLOW = 0.05  # asyncio's slow_callback_duration, and the CPU one callback may take
SLOW_BLOCKED = 0.25  # seconds one callback may be blocked (see the module)
SCHEDSTAT = "/proc/thread-self/schedstat"  # "on-CPU ns, runqueue-wait ns, timeslices"


def _sched() -> tuple[float, float]:
    with open(SCHEDSTAT) as f:
        on_cpu, waiting, _ = f.read().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def _what(handle: asyncio.events.Handle) -> str:
    """The callback, or for a task's step the task (its coroutine and where it stands now)."""
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    return repr(owner) if isinstance(owner, asyncio.Task) else repr(handle)


@contextmanager
def timed_callbacks() -> Iterator[list[str]]:
    """Every asyncio callback run inside the block is timed; the slow ones are listed."""
    slow: list[str] = []
    real = asyncio.events.Handle._run

    def run(handle: asyncio.events.Handle) -> None:
        wall0 = time.monotonic()
        cpu0, wait0 = _sched()
        try:
            real(handle)
        finally:
            cpu1, wait1 = _sched()
            wall = time.monotonic() - wall0
            cpu, waited = cpu1 - cpu0, wait1 - wait0
            blocked = wall - cpu - waited
            if cpu > SLOW or blocked > SLOW_BLOCKED:
                slow.append(
                    f"{_what(handle)}: {wall:.3f} s ({cpu:.3f} s on a CPU, {blocked:.3f} s "
                    f"blocked, {waited:.3f} s waiting for a CPU)"
                )

    asyncio.events.Handle._run = run  # type: ignore[method-assign]
    try:
        yield slow
    finally:
        asyncio.events.Handle._run = real  # type: ignore[method-assign]


def run_driver(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `main` under asyncio debug; fail if any callback held the loop (see the module)."""

    async def debugged() -> None:
        asyncio.get_running_loop().slow_callback_duration = SLOW
        await main()

    # The heap the earlier tests of a full run left behind is frozen first: a full collection
    # of it (0.08-0.15 s of CPU after ~300 tests) would otherwise land in whichever callback
    # happens to run then and fail a driver that blocked nothing. The driver's own garbage is
    # still collected, inside the timed callbacks.
    gc.collect()
    gc.freeze()
    try:
        with timed_callbacks() as slow:
            asyncio.run(debugged(), debug=True)
    finally:
        gc.unfreeze()
    assert not slow, "callbacks held the event loop:\n" + "\n".join(slow[:5])


class Ticker:
    """Counts the 10 ms sleeps the loop gets through while the block runs: proof that it went
    on serving other tasks while the code under test waited."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1

    async def __aenter__(self) -> "Ticker":
        self._task = asyncio.get_running_loop().create_task(self._tick())  # noqa: TID251
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

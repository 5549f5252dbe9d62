"""The driver tests' loop check (tests/support/loopcheck.py) catches what it says it does."""

import asyncio
import time

import pytest

from tests.support.loopcheck import SLOW, SLOW_BLOCKED, run_driver


def test_a_blocking_call_on_the_loop_fails_a_driver_test() -> None:
    async def main() -> None:
        time.sleep(SLOW_BLOCKED + 0.05)  # as a socket wait or a cgroup poll on the loop would

    with pytest.raises(AssertionError, match="held the event loop"):
        run_driver(main)


def test_a_callback_that_computes_too_long_fails_a_driver_test() -> None:
    async def main() -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < SLOW * 2:
            pass

    with pytest.raises(AssertionError, match="on a CPU"):
        run_driver(main)


def test_waiting_off_the_loop_passes() -> None:
    async def main() -> None:
        await asyncio.sleep(SLOW * 2)
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, SLOW * 2)

    run_driver(main)

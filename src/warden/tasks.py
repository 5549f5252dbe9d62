"""Owned asyncio tasks: every background task has a name, a reference and a reaper.

`asyncio.create_task` is banned by the linter outside this module: a task nobody holds can be
garbage-collected mid-flight, and a task whose exception nobody reads fails silently. `spawn`
keeps the task in a set until it ends and logs any exception with the task's name.
"""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("warden.tasks")
T = TypeVar("T")

_tasks: set["asyncio.Task[Any]"] = set()


def _reap(task: "asyncio.Task[Any]") -> None:
    _tasks.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed", task.get_name(), exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], name: str) -> "asyncio.Task[T]":
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _tasks.add(task)
    task.add_done_callback(_reap)
    return task


async def cancel(task: "asyncio.Task[Any] | None") -> None:
    """Cancel `task` and wait until it has really ended."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:  # already logged by _reap
        pass


def running() -> list[str]:
    return sorted(t.get_name() for t in _tasks if not t.done())

"""Empty jails for guest kernels (issue 4). The launcher calls enter_and_exec."""

from collections.abc import Callable
from typing import Any


def enter_and_exec(
    plan: Any, prepare_stdio: Callable[[Any], None], report: Callable[[dict[str, object]], None]
) -> None:
    raise NotImplementedError("jails are not built yet")

"""Empty jails for guest kernels (issue 4). Called by the launcher; never by the daemon."""

from typing import Any


def namespace_flags(plan: Any) -> int:
    raise NotImplementedError("jails are not built yet")


def prepare_parent(plan: Any) -> None:
    raise NotImplementedError("jails are not built yet")


def enter(plan: Any) -> None:
    raise NotImplementedError("jails are not built yet")

"""The launcher: a fresh process that turns itself into a guest's kernel.

The daemon never changes its own cgroup, namespaces or credentials (forking a threaded asyncio
process and then doing that is fragile); it starts `python -m warden.host.launch` with a plan
on stdin and the fds to hand over, and this module does the host-side set-up and execs the
kernel. Protocol with the daemon:

    stdin           the plan, JSON (LaunchPlan.to_json), then EOF
    STATUS_FD (3)   close-on-exec pipe: one JSON line {"pid": N} once the kernel's pid is
                    known, or {"error": "..."} on failure; EOF without an error means the
                    exec happened.

With a jail (warden.host.jail) the kernel runs in new namespaces and is a child of this
process, which exits once it is started: the kernel is then reparented to the daemon, a child
subreaper, so the daemon still collects its exit status.
"""

import json
import os
import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_FD = 3


@dataclass
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    keep_fds: list[int]  # fds passed to the kernel, same numbers in the kernel
    log_fd: int  # becomes the kernel's stdout and stderr
    cgroup_procs: list[str]  # cgroup.procs files to join before anything else
    cwd: str = "/"
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    jail: dict[str, Any] | None = None  # warden.host.jail.JailPlan as a dict, or None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "LaunchPlan":
        raw = json.loads(text)
        raw["rlimits"] = {k: tuple(v) for k, v in raw.get("rlimits", {}).items()}
        return cls(**raw)


def _report(obj: dict[str, object]) -> None:
    try:
        os.write(STATUS_FD, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _set_rlimits(limits: dict[str, tuple[int, int]]) -> None:
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (soft, hard))


def _prepare_stdio(plan: LaunchPlan) -> None:
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(plan.log_fd, 1)
    os.dup2(plan.log_fd, 2)
    if plan.log_fd not in (1, 2) and plan.log_fd not in plan.keep_fds:
        os.close(plan.log_fd)
    for fd in plan.keep_fds:
        os.set_inheritable(fd, True)


def run(plan: LaunchPlan) -> None:
    from warden.host import cgroup

    cgroup.join(plan.cgroup_procs)
    os.setsid()
    _set_rlimits(plan.rlimits)
    if plan.jail is not None:
        import warden.host.jail as jail

        jail.enter_and_exec(plan, _prepare_stdio, _report)
        return  # not reached: enter_and_exec execs or exits
    _prepare_stdio(plan)
    os.chdir(plan.cwd)
    _report({"pid": os.getpid()})
    os.execve(plan.argv[0], plan.argv, plan.env)


def main() -> None:
    os.set_inheritable(STATUS_FD, False)
    try:
        plan = LaunchPlan.from_json(sys.stdin.read())
        run(plan)
    except Exception as e:  # the daemon shows this text as the start failure
        _report({"error": f"{type(e).__name__}: {e}"})
        os._exit(1)


if __name__ == "__main__":
    main()

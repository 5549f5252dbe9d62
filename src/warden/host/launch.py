"""The launcher: a fresh process that turns itself into a guest's kernel.

The daemon never changes its own cgroup, namespaces or credentials (forking a threaded asyncio
process and then doing that is fragile); it starts `python -m warden.host.launch` with a plan
on stdin and the fds to hand over, and this module does the host-side set-up and execs the
kernel. Protocol with the daemon:

    argv            python -m warden.host.launch STATUS_FD
    stdin           the plan, JSON (LaunchPlan.to_json), then EOF
    STATUS_FD       close-on-exec pipe: one JSON line {"pid": N} once the kernel's pid is
                    known, or {"error": "..."} on failure; EOF without an error means the
                    exec happened.

The kernel always runs as pid 1 of a new pid namespace: when it dies, the host kernel kills
every process of the guest with it (UML leaves orphans behind otherwise), and nothing of the
guest is ever re-parented to the daemon but the kernel itself. unshare(CLONE_NEWPID) applies to
children only, so the launcher forks; the child execs the kernel and the launcher exits, which
re-parents the kernel to the daemon, a child subreaper, so the daemon still collects its exit
status. With a jail (warden.host.jail) the child also enters the other namespaces.
"""

import json
import os
import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_FD = -1  # set from argv by main()


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


def _child(plan: LaunchPlan) -> None:
    """pid 1 of the new namespace: becomes the kernel (never returns)."""
    try:
        os.setsid()
        if plan.jail is not None:
            import warden.host.jail as jail

            jail.enter(plan)
        _set_rlimits(plan.rlimits)
        _prepare_stdio(plan)
        os.chdir(plan.cwd)
        if plan.jail is not None:
            import warden.host.jail as jail_

            jail_.seal(plan, STATUS_FD)  # fds, credentials, seccomp: the last steps
        os.execve(plan.argv[0], plan.argv, plan.env)
    except BaseException as e:
        _report({"error": f"{type(e).__name__}: {e}"})
    os._exit(127)


def run(plan: LaunchPlan) -> None:
    from warden.host import cgroup, ns

    cgroup.join(plan.cgroup_procs)
    flags = ns.CLONE_NEWPID
    if plan.jail is not None:
        import warden.host.jail as jail

        flags |= jail.namespace_flags(plan)
        jail.prepare_parent(plan)
    ns.unshare(flags)
    pid = os.fork()
    if pid == 0:
        _child(plan)
    _report({"pid": pid})


def main() -> None:
    global STATUS_FD
    STATUS_FD = int(sys.argv[1])
    os.set_inheritable(STATUS_FD, False)
    try:
        plan = LaunchPlan.from_json(sys.stdin.read())
        run(plan)
    except Exception as e:  # the daemon shows this text as the start failure
        _report({"error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()

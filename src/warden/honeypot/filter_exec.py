"""Runs a disguise filter program inside its bounds; started by path, never imported.

A filter program (a profile's `filter.command`) reads content a guest's kernel sent: hostile
input. The daemon runs as root, so the program must not run as the daemon's child with the
daemon's rights. The daemon starts `python -I -S filter_exec.py BOUNDS PROGRAM ARG...`, a
fresh process (the daemon never changes its own cgroup or credentials, and a forked copy of a
threaded daemon must not run Python before exec), which

1. joins the guest's cgroups (the guest's memory and pids limits cover the program, and
   `warden kill` ends it with the guest),
2. sets resource limits (address space, CPU time, files, no core dumps),
3. drops to the guest's uid and gid with no supplementary groups and no new privileges,
4. execs the program: its stdin, stdout and stderr are the ones the daemon gave.

BOUNDS is JSON: {"cgroup_procs": [path, ...], "rlimits": {"as": [soft, hard], ...},
"uid": N, "gid": N}. Only the standard library is used (-S: no site packages): the start-up
costs ~10 ms of a filter's timeout. On any failure it writes one line to stderr and exits 126.
"""

import ctypes
import json
import os
import resource
import sys

PR_SET_NO_NEW_PRIVS = 38


def main() -> None:
    try:
        bounds = json.loads(sys.argv[1])
        argv = sys.argv[2:]
        if not argv or not argv[0].startswith("/"):
            raise ValueError(f"no program to run: {argv!r}")
        for procs in bounds.get("cgroup_procs", []):
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        for name, (soft, hard) in bounds.get("rlimits", {}).items():
            resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (soft, hard))
        uid, gid = bounds.get("uid"), bounds.get("gid")
        if os.geteuid() == 0 and uid is not None and gid is not None:
            os.setgroups([])
            os.setgid(int(gid))
            os.setuid(int(uid))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        os.execv(argv[0], argv)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        sys.stderr.write(f"filter_exec: {type(e).__name__}: {e}\n")
        os._exit(126)


if __name__ == "__main__":
    main()

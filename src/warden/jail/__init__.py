"""The jail feature: a cgroup with limits for every guest, and an empty jail under a uid of
its own for those that do not say `jail = false`.

    limits.py    cgroup limits, rlimits, what the kernel binary needs, image path checks
    plan.py      one boot's jail: files checked, uid claimed, files handed over, the plan
    emptier.py   the jail emptied once the guest is up
    audit.py     `warden jail audit`: what a guest's processes can do, read from /proc
    feature.py   the Feature (warden.daemon.seam) the daemon calls

The mechanism itself, run in the launcher or a fresh process and knowing nothing of guests, is
warden.host.jail (mount namespace, binds, pivot_root, seccomp, the emptying helper).
"""

#!/usr/bin/env bash
# After the suite: no UML kernel may be left running, and no warden cgroup may remain.
# Prints what leaked (pid and command line) and fails, so a leak turns CI red.
set -u
leaks=$(pgrep -a -x linux.uml || true)
left=$(find /sys/fs/cgroup -maxdepth 3 -type d -name 'warden-*' 2>/dev/null || true)
if [ -n "$leaks" ] || [ -n "$left" ]; then
    echo "leak check: the test run left these behind:" >&2
    [ -n "$leaks" ] && echo "$leaks" >&2
    [ -n "$left" ] && echo "$left" >&2
    exit 1
fi
echo "leak check: 0 UML processes, 0 warden cgroups left"

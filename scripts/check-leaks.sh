#!/usr/bin/env bash
# After the suite: nothing the tests started may be left behind. Checks UML kernels (Debian's
# linux.uml and warden-built `linux`), warden cgroups in every hierarchy, network namespaces
# the tests made (w*), warden's helpers (net agent, dnsmasq, tcpdump started by warden, the
# cluster's fence, the tests' etcd members) and
# mounts under /tmp. Prints what leaked and fails, so a leak turns CI red.
set -u
problems=()

# Zombies are not counted: they are dead, and this machine's pid 1 reaps orphans only every
# second or so, so the last test's killed guests may still show as <defunct> for a moment.
uml=$(ps -eo pid=,stat=,comm=,args= | awk '$2 !~ /^Z/ && $3 == "linux.uml"' || true)
built=$(pgrep -a -f '^/var/(lib|cache)/warden/.*/linux |/kernels/[^ ]*/linux ' || true)
[ -n "$uml$built" ] && problems+=("UML kernels still running:"$'\n'"$uml$built")

groups=$(find /sys/fs/cgroup -maxdepth 3 -type d -name 'warden-*' 2>/dev/null || true)
[ -n "$groups" ] && problems+=("warden cgroups left:"$'\n'"$groups")

# Test network namespaces are named w<letter><digits>...; the example fleet's is warden0.
netns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^w[a-z]?[0-9]|^warden' || true)
[ -n "$netns" ] && problems+=("network namespaces left:"$'\n'"$netns")

helpers=$(pgrep -a -f 'warden\.net\.agent|tests\.support\.netpeer|warden\.cluster\.fence|etcd --name m[0-9]+ --data-dir /(dev/shm|tmp)/etcd-' || true)
[ -n "$helpers" ] && problems+=("warden helpers still running:"$'\n'"$helpers")

mounts=$(grep -E ' /tmp/(wh-|warden-)' /proc/self/mounts || true)
[ -n "$mounts" ] && problems+=("mounts left under /tmp:"$'\n'"$mounts")

if [ ${#problems[@]} -gt 0 ]; then
    echo "leak check: the test run left these behind:" >&2
    printf '%s\n' "${problems[@]}" >&2
    exit 1
fi
echo "leak check: no UML process, cgroup, network namespace, helper or mount left"

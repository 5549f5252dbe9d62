#!/usr/bin/env bash
# Installs what warden needs on a Debian 12 host and (re)builds the project's virtualenv.
# Idempotent: a second run installs nothing and returns in about a second.
# Called by `make up` and `make test`; safe to run by hand.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    say "warden manages UML guests, jails, cgroups and host networks: run this as root." >&2
    exit 1
fi

# Debian packages, by purpose. Only the missing ones are installed.
packages=(
    # the guest kernel and disk tools
    user-mode-linux uml-utilities e2fsprogs busybox-static debootstrap
    # the Python runtime the virtualenv is made from
    python3 python3-venv python3-dev
    # the small C shim loaded into linux.uml (see src/warden/uml/xstate_shim.c)
    gcc libc6-dev
    # networking, capture and the concentrator's test client
    iproute2 nftables dnsmasq-base tcpdump tshark iputils-ping openssh-client
    # the cluster's shared state (warden.cluster; tests start their own members)
    etcd-server
    # building the honeypot kernel from Debian's source
    linux-source-6.1 make bc bison flex libssl-dev libelf-dev libvdeplug-dev xz-utils
    # the web console's tests: a real browser and its WebDriver
    chromium chromium-driver
    # the jail test that holds a kernel at a chosen system call (tests/jail/test_late_initcalls.py)
    strace
    # benchmarks/snapshot.py: a home on XFS, whose reflinks make a snapshot's pause constant
    xfsprogs
)
# npm fetches the web console's browser libraries (below). A host that has npm already (e.g.
# with NodeSource's nodejs) keeps it: Debian's npm would pull Debian's nodejs over it.
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

# The virtualenv, rebuilt only when pyproject.toml changes.
stamp="$venv/.warden-stamp"
want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "building the virtualenv in $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$here[dev]"
    echo "$want" > "$stamp"
fi
# The web console's browser libraries (xterm.js, asciinema-player) from the npm registry, at the
# versions src/warden/web/assets/package-lock.json pins, into the shared cache keyed by that
# lock (warden.web.assets): a new lock is a new directory, filled aside and renamed into place.
assets="$here/src/warden/web/assets"
cache_root=${WARDEN_CACHE:-/var/cache/warden}
web_cache="$cache_root/web/$(sha256sum "$assets/package-lock.json" | cut -c1-16)"
if [ ! -f "$web_cache/.complete" ]; then
    say "fetching the web console's browser libraries with npm ci into $web_cache"
    mkdir -p "$cache_root/web"
    tmp=$(mktemp -d "$web_cache.tmp.XXXXXX")
    cp "$assets/package.json" "$assets/package-lock.json" "$tmp/"
    (cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    touch "$tmp/.complete"
    rm -rf "$web_cache"
    mv "$tmp" "$web_cache"
fi

# benchmarks/ reuse the tests' helpers (tests.support): make the repository importable.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$here" > "$site/warden-repository.pth"
say "ready ($("$venv/bin/python" --version), $(/usr/bin/linux.uml --version 2>/dev/null || echo 'no linux.uml'))"

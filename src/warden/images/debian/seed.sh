#!/bin/sh
# warden Debian image: /usr/lib/warden/seed, run by warden-seed.service early at every boot.
# Reads this guest's settings from the seed disk (/dev/ubdb, docs/formats/seed.md) and writes
# what depends on them under /run/warden (a tmpfs: nothing of it lands in the guest's
# copy-on-write disk). /etc/hostname, /etc/resolv.conf and /etc/network/interfaces point
# there. Only the password hashes live in /etc/shadow, rewritten when the seed changes them.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022
RUN=/run/warden
mkdir -p "$RUN/ssh"

say() { echo "warden-seed: $*"; }

WARDEN_HOSTNAME=localhost
WARDEN_LINES=tty0
WARDEN_ROOT_HASH=
WARDEN_ADMIN_HASH=
WARDEN_SSH_KEYS=
WARDEN_FPU_SAFE=
mnt=$RUN/seed.mnt
# /dev/ubdb on a stock kernel; /dev/sdb when the kernel shows a persona (disks are sdX there)
seed=/dev/ubdb
[ -b "$seed" ] || seed=/dev/sdb
if [ -b "$seed" ]; then
    mkdir -p "$mnt"
    if mount -t ext4 -o ro,nodev,nosuid,noexec "$seed" "$mnt"; then
        if [ -f "$mnt/seed.env" ]; then
            . "$mnt/seed.env"
        else
            say "the seed disk has no seed.env; using defaults"
        fi
        [ -f "$mnt/network.env" ] && cp "$mnt/network.env" "$RUN/network.env"
        umount "$mnt"
    else
        say "$seed is not a seed disk; using defaults"
    fi
    rmdir "$mnt"
else
    say "no seed disk (/dev/ubdb or /dev/sdb); using defaults"
fi

# Hostname (/etc/hostname is a link to $RUN/hostname; libnss-myhostname resolves it).
echo "$WARDEN_HOSTNAME" > "$RUN/hostname"
echo "$WARDEN_HOSTNAME" > /proc/sys/kernel/hostname || say "cannot set hostname $WARDEN_HOSTNAME"

# Passwords: the seed decides at every boot; an empty hash means no password ('*').
set_hash() {
    current=$(getent shadow "$1" | cut -d: -f2)
    if [ "$current" != "$2" ]; then
        usermod -p "$2" "$1" || say "cannot set the password of $1"
    fi
}
set_hash root "${WARDEN_ROOT_HASH:-*}"
set_hash admin "${WARDEN_ADMIN_HASH:-*}"

# A kernel that loses AVX-512 register state across signals (Debian's UML 6.1 on an AVX-512
# host; warden's own kernels keep it, docs/architecture.md "The xstate shim"): glibc and
# OpenSSL must not pick their AVX-512 code. systemd passes its environment to every unit it
# starts from now on; /etc/environment (a link to $RUN/environment, read by pam_env) gives it
# to logins (console, ssh, su), which start from a clean environment. The values are the
# minimal image's (its /sbin/init says why these).
: > "$RUN/environment"
if [ "$WARDEN_FPU_SAFE" = 1 ]; then
    set -- "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512ER,-AVX512PF,-AVX512VL" \
        "OPENSSL_ia32cap=:~0x5842dc230000"
    printf '%s\n' "$@" > "$RUN/environment"
    systemctl set-environment "$@" || say "cannot set the manager's environment"
fi

# Logins: without a root password, root is logged in at once on every wired line.
# /usr/lib/warden/getty reads $RUN/autologin.
rm -f "$RUN/autologin"
[ -n "$WARDEN_ROOT_HASH" ] || touch "$RUN/autologin"
for line in $WARDEN_LINES; do
    case "$line" in
        tty0) ;; # con0: console-getty.service
        ttyS[0-9]|ttyS[0-9][0-9]) systemctl --no-block start "warden-getty@$line.service" ;;
        *) say "ignoring unknown line $line" ;;
    esac
done

# SSH keys for root and admin (sshd_config.d/warden.conf names these files).
if [ -n "$WARDEN_SSH_KEYS" ]; then
    for user in root admin; do
        printf '%s\n' "$WARDEN_SSH_KEYS" > "$RUN/ssh/authorized_keys.$user"
    done
fi

# Network (docs/formats/seed.md): eth0 static from WARDEN_IP/WARDEN_GATEWAY, else DHCP; ethN
# (N >= 1, each NIC the kernel has now, still named vecN until udev renames it) static from
# WARDEN_IP_N without route or resolver, else DHCP. warden's networks are IPv4 only: IPv6 is
# switched off (no router solicitations, no MLD), as in the minimal image.
for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
    [ -w "$f" ] && echo 1 > "$f"
done
WARDEN_IP=
WARDEN_GATEWAY=
WARDEN_DNS=
[ -f "$RUN/network.env" ] && . "$RUN/network.env"
stanza() { # DEV ADDRESS/PREFIX GATEWAY
    # A static NIC present now is also `auto`: networking.service (ordered after this unit,
    # part of the boot) brings it up, so a booted system has its addresses; allow-hotplug
    # alone leaves it to ifup@DEV, started by a udev event that can come after boot
    # "finished" (seen: no address yet at `running`). DHCP stays hotplug-only: a NIC without
    # a server must not hold the boot up.
    n=${1#eth}
    if [ -n "$2" ] && { [ -e "/sys/class/net/vec$n" ] || [ -e "/sys/class/net/$1" ]; }; then
        echo "auto $1"
    fi
    echo "allow-hotplug $1"
    if [ -n "$2" ]; then
        printf 'iface %s inet static\n    address %s\n' "$1" "$2"
        [ -n "$3" ] && echo "    gateway $3"
    else
        echo "iface $1 inet dhcp"
    fi
    return 0
}
{
    echo "# written at boot by /usr/lib/warden/seed from this guest's seed disk"
    stanza eth0 "$WARDEN_IP" "$WARDEN_GATEWAY"
    n=1
    while [ -e "/sys/class/net/vec$n" ] || [ -e "/sys/class/net/eth$n" ]; do
        eval "addr=\${WARDEN_IP_$n:-}"
        stanza "eth$n" "$addr" ""
        n=$((n + 1))
    done
} > "$RUN/interfaces"
: > "$RUN/resolv.conf"
for dns in $WARDEN_DNS; do
    echo "nameserver $dns" >> "$RUN/resolv.conf"
done

say "hostname $WARDEN_HOSTNAME, lines $WARDEN_LINES, eth0 ${WARDEN_IP:-dhcp}${WARDEN_FPU_SAFE:+, no AVX-512}"

#!/bin/sh
# warden Debian image: run once in the debootstrapped tree (chroot) at build time, after
# warden copied its files in. Makes the tree a guest image: a test user, gettys and units for
# UML, nothing machine-specific (each guest makes its machine-id and SSH host keys at boot).
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C

# The test user (its password and SSH keys come from the seed at every boot).
useradd --create-home --shell /bin/bash --groups sudo --comment "warden admin" admin
# No password for either ('*', what the seed writes when it gives none): a guest's first boot
# then changes /etc/shadow only if its seed sets a password.
usermod --password '*' root
usermod --password '*' admin
# pam_env reads it at every login; Debian's installer writes one too.
[ -e /etc/default/locale ] || echo "LANG=C.UTF-8" > /etc/default/locale

# Units: warden's, and a console login (systemd starts none on UML's con0 by itself).
systemctl enable warden-seed.service warden-ssh-keygen.service console-getty.service
# Useless in a UML guest, or slow at boot: no VTs, no serial getty unless wired, no clock to
# discipline, no periodic jobs, no pstore, no remote filesystems.
masked="getty@tty1.service serial-getty@ttyS0.service getty-static.service
    systemd-timesyncd.service systemd-udev-settle.service remote-fs.target
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
    e2scrub_all.timer e2scrub_reap.service fstrim.timer
    systemd-pstore.service systemd-firstboot.service
    sys-kernel-debug.mount sys-kernel-tracing.mount"
systemctl disable --quiet $masked 2>/dev/null || true  # some are not installed
systemctl mask --quiet $masked
# warden stops a guest with ctrl-alt-del (mconsole `cad`): power off, as the minimal image does,
# instead of systemd's default reboot.
ln -sfn /lib/systemd/system/poweroff.target /etc/systemd/system/ctrl-alt-del.target

# Files whose content depends on the guest: links into /run/warden, written at every boot.
ln -sfn /run/warden/hostname /etc/hostname
ln -sfn /run/warden/resolv.conf /etc/resolv.conf
ln -sfn /run/warden/environment /etc/environment

# Nothing machine-specific in the shared image: debootstrap copied the build host's hostname
# and resolv.conf (replaced above) and the packages made a machine-id and SSH host keys.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed

# Debian's sources for the guest's own apt.
cat > /etc/apt/sources.list <<SOURCES
deb $WARDEN_MIRROR $WARDEN_SUITE main
deb $WARDEN_MIRROR $WARDEN_SUITE-updates main
deb http://deb.debian.org/debian-security $WARDEN_SUITE-security main
SOURCES

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old

#!/bin/sh
# warden Debian image: the build, run by warden.images.debian in private mount and pid
# namespaces (unshare). The tree lives on a tmpfs mounted here, so it vanishes with the
# namespace: nothing of a build stays mounted or on disk, whatever happens to it, and dpkg's
# many fsyncs cost nothing. Lines starting "warden: " are progress steps for the caller.
# Environment: WARDEN_STAGE (files/, customize.sh), WARDEN_SUITE, WARDEN_MIRROR,
# WARDEN_PACKAGES (comma-separated), WARDEN_IMAGE (the file to write),
# WARDEN_SIZE_K (its size in KiB), WARDEN_SIZE (the same for people).
set -eu
tree=$WARDEN_STAGE/tree
mkdir -p "$tree"
mount -t tmpfs -o mode=0755 warden-debian-build "$tree"

debootstrap --variant=minbase --include="$WARDEN_PACKAGES" "$WARDEN_SUITE" "$tree" "$WARDEN_MIRROR"

echo "warden: installing warden's units and the user admin"
cp -a "$WARDEN_STAGE/files/." "$tree/"
cp "$WARDEN_STAGE/customize.sh" "$tree/tmp/warden-customize.sh"
chroot "$tree" /bin/sh /tmp/warden-customize.sh
rm "$tree/tmp/warden-customize.sh"

echo "warden: making a $WARDEN_SIZE ext4 image from $(du -sm "$tree" | cut -f1)M of files"
# Inode tables and journal are initialised now: with lazy init each guest's kernel would zero
# them after its first mount, writing tens of MiB into every guest's COW file.
# No label, and /etc/fstab names the root by UUID, as Debian's installer leaves a server: the
# disk is /dev/ubda on a stock kernel and /dev/sda when the kernel shows a persona.
uuid=$(cat /proc/sys/kernel/random/uuid)
sed -i "s/@ROOT_UUID@/$uuid/" "$tree/etc/fstab"
mkfs.ext4 -q -F -U "$uuid" -E lazy_itable_init=0,lazy_journal_init=0 \
    -d "$tree" "$WARDEN_IMAGE" "${WARDEN_SIZE_K}k"

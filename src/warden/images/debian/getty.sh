#!/bin/sh
# warden Debian image: /usr/lib/warden/getty ARGS..., agetty for console-getty.service and
# warden-getty@.service. When the seed gave root no password, /usr/lib/warden/seed creates
# /run/warden/autologin and root is logged in at once (login -f); otherwise, and whenever that
# file is missing, a normal login prompt.
if [ -e /run/warden/autologin ]; then
    exec /sbin/agetty --autologin root -o '-p -f -- \u' "$@"
fi
exec /sbin/agetty -o '-p -- \u' "$@"

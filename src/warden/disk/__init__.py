"""Copy-on-write disks on the host: create, inspect, merge, rebase, snapshot and diff.

The on-disk format is docs/formats/ubd-cow.md (codec: warden.uml.cow). Every operation here
works on files only, with no daemon: the CLI (warden.cli.disk) and the daemon call the same
functions. Modules: errors (what can go wrong), hostfile (sparse copies, locks, publishing
files), backing (is this the right base image?), create, inspect, merge, rebase, snapshot,
debugfs (a batch runner for e2fsprogs' debugfs) and diff.
"""

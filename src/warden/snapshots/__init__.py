"""Disk operations on machines by name, through the daemon (which owns their mconsole).

The COW tools themselves are warden.disk (no daemon); this feature finds a machine's COW file,
pauses a running guest for the copy through its mconsole, and records events.
"""

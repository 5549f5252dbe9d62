"""Errors of the networking feature."""

from warden.errors import WardenError


class NetError(WardenError):
    """A network, tap, rule or helper could not be set up; the message says what and why."""

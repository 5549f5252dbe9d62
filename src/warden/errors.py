"""Errors meant for the person at the keyboard.

Every WardenError message names what was wrong (the file, field or value) and what would be
right. The CLI prints the message and exits 2 without a traceback; anything else is a bug.
"""


class WardenError(Exception):
    """A failure the user can act on; str(error) is the whole message."""


class SpecError(WardenError):
    """The fleet file (or a value in it) is wrong."""


class NotFound(WardenError):
    """A named guest, image, kernel or owner does not exist."""


class Conflict(WardenError):
    """The request contradicts current state (name taken, guest already running, ...)."""


class KernelError(WardenError):
    """No usable UML kernel."""


class ImageError(WardenError):
    """An image is missing, not ext4, or could not be built."""


class MconsoleError(WardenError):
    """The management console refused a command or did not answer."""


class DaemonNotRunning(WardenError):
    """The CLI found no daemon on the control socket."""


def http_status(e: WardenError) -> int:
    """The HTTP status an error is answered with (the daemon's API and the web console's)."""
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, Conflict):
        return 409
    return 400

"""Helpers for tests that drive the session-log writer thread without a daemon."""

from warden.sessionlog.writer import SessionLogWriter


def finish(w: SessionLogWriter) -> None:
    """Write and compress everything queued, then let both threads end (they must)."""
    assert w.flush(60)
    w.stop()
    w.join(30)
    w.compressor.join(30)
    assert w.thread is None and w.compressor.thread is None

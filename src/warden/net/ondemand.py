"""An on-demand capture's pcap stream (`warden net capture`, GET /v1/net/NAME/capture).

tcpdump runs in the namespace (started by the helper, its stdout a pipe handed back to the
daemon); its output is read on the event loop and handed out in chunks until `count` packets
(tcpdump exits), `duration` seconds (SIGINT: tcpdump flushes whole packets and exits) or the
client going away (SIGTERM). `close` always ends tcpdump and waits for it off the loop.
"""

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

from warden.net.watch import wait_fd

CHUNK = 1 << 16
POLL = 0.25  # how often a quiet stream looks at its deadline and its client


class CaptureStream:
    def __init__(self, tap: str, pid: int, pidfd: int, pipe: int, closed: Callable[[], None]):
        self.tap = tap
        self.pid = pid
        self._pidfd = pidfd
        self._pipe = pipe
        self._closed = closed
        self._stopped = False
        self._transport: asyncio.ReadTransport | None = None
        self._reader = asyncio.StreamReader(limit=CHUNK * 4)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._reader),
            os.fdopen(self._pipe, "rb", buffering=0),
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Tell tcpdump to end (once)."""
        if not self._stopped:
            self._stopped = True
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    async def chunks(
        self, duration: float | None, gone: Callable[[], bool]
    ) -> AsyncIterator[bytes]:
        """The pcap bytes as they come; ends at EOF, or at once when `gone()` says the client
        went away."""
        deadline = time.monotonic() + duration if duration else None
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                self.stop(signal.SIGINT)  # tcpdump flushes whole packets and exits: EOF
            if gone():
                self.stop(signal.SIGTERM)
                return
            try:
                data = await asyncio.wait_for(self._reader.read(CHUNK), POLL)
            except TimeoutError:
                continue
            if not data:
                return
            yield data

    async def close(self) -> None:
        self.stop(signal.SIGTERM)
        if self._transport is not None:
            self._transport.close()
        else:
            os.close(self._pipe)
        await asyncio.get_running_loop().run_in_executor(None, wait_fd, self._pidfd, 5.0)
        os.close(self._pidfd)
        self._closed()

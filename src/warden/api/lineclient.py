"""The CLI's end of a console attach (GET /v1/machines/NAME/lines/LINE/attach, served by
warden.api.attach): terminal bytes both ways, JSON control frames.

Apart from api/client.py so that the commands that do not attach (`warden ls`) do not load
aiohttp.
"""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from warden.errors import DaemonNotRunning, WardenError
from warden.paths import Layout


@dataclass(frozen=True)
class Output:
    data: bytes  # the guest's terminal output


@dataclass(frozen=True)
class Notice:
    text: str  # what the daemon tells the user (a takeover, the guest's boot ending)


@dataclass(frozen=True)
class Closed:
    reason: str  # the daemon ended the attach


Frame = Output | Notice | Closed


class LineSocket:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self._session = session
        self._ws = ws

    @classmethod
    async def open(
        cls, layout: Layout, name: str, line: str, query: dict[str, str]
    ) -> "LineSocket":
        connector = aiohttp.UnixConnector(path=str(layout.socket))
        session = aiohttp.ClientSession(connector=connector)
        url = f"http://warden/v1/machines/{name}/lines/{line}/attach"
        try:
            ws = await session.ws_connect(url, params=query, max_msg_size=8 << 20, heartbeat=30)
        except aiohttp.ClientConnectorError:
            await session.close()
            raise DaemonNotRunning(
                f"no warden daemon answers on {layout.socket}; start one with `warden daemon`"
            ) from None
        except aiohttp.WSServerHandshakeError as e:
            await session.close()
            raise WardenError(f"console {name}:{line}: {e.message}") from None
        return cls(session, ws)

    async def frames(self) -> AsyncIterator[Frame]:
        """What the daemon sends, until it closes the attach (a Closed frame) or the
        connection ends (no more frames)."""
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                yield Output(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                ctl = json_object(msg.data)
                if "closed" in ctl:
                    yield Closed(str(ctl["closed"]))
                    return
                yield Notice(str(ctl.get("notice", "")))
            else:
                return

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def resize(self, cols: int, rows: int) -> None:
        await self._ws.send_json({"resize": [cols, rows]})

    async def close(self) -> None:
        """Detach (if the daemon still listens) and close."""
        with contextlib.suppress(Exception):
            await self._ws.send_json({"detach": True})
        await self._ws.close()
        await self._session.close()


def json_object(text: str) -> dict[str, object]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}

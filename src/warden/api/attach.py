"""`warden console`: one websocket attached to one guest line (daemon/lines.py arbitrates).

Binary frames both ways are terminal bytes; text frames are JSON: server -> client
{"notice": "..."} or {"closed": "reason"}; client -> server {"resize": [cols, rows]} or
{"detach": true}. A client that falls CLIENT_QUEUE bytes behind is dropped by the line.
"""

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSMsgType, web

from warden.api.common import Ctx, peer_user
from warden.daemon.lines import CLIENT_QUEUE, Client
from warden.errors import Conflict, NotFound
from warden.tasks import spawn


async def attach(c: Ctx, request: web.Request) -> web.WebSocketResponse:
    sup = c.daemon.sup(request.match_info["name"])
    line_name = request.match_info["line"]
    line = sup.lines.get(line_name)
    if line is None or line_name not in sup.spec.lines:
        raise NotFound(f"{sup.name} has no line {line_name!r} (lines: {', '.join(sup.spec.lines)})")
    mode = request.query.get("mode", "rw")
    force = request.query.get("force") == "1"
    scrollback = int(request.query.get("scrollback", "0"))
    user = peer_user(request)
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=8 << 20)
    await ws.prepare(request)
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    queued = [0]
    closed = asyncio.Event()

    def send(data: bytes) -> None:
        queued[0] += len(data)
        if queued[0] > CLIENT_QUEUE:
            raise RuntimeError("client too slow")
        queue.put_nowait(("data", data))

    def notify(text: str) -> None:
        queue.put_nowait(("notice", text))

    def close(reason: str) -> None:
        queue.put_nowait(("closed", reason))
        closed.set()

    client = Client(user=user, source="local", send=send, notify=notify, close=close)
    try:
        line.attach(client, want_write=(mode == "rw"), force=force)
    except Conflict as e:
        await ws.send_json({"closed": str(e)})
        await ws.close()
        return ws

    async def pump() -> None:
        while True:
            kind, payload = await queue.get()
            if kind == "data":
                queued[0] -= len(payload)
                await ws.send_bytes(payload)
            elif kind == "notice":
                await ws.send_json({"notice": payload})
            else:
                await ws.send_json({"closed": payload})
                await ws.close()
                return

    if scrollback:
        queue.put_nowait(("data", line.recent(scrollback)))
    writer = spawn(pump(), f"attach-out:{sup.name}:{line_name}")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                line.write(client, msg.data)
            elif msg.type == WSMsgType.TEXT:
                ctl = json.loads(msg.data)
                if ctl.get("detach"):
                    break
                if "resize" in ctl:
                    cols, rows = ctl["resize"]
                    line.resize(client, int(cols), int(rows))
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    finally:
        line.detach(client)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        if not ws.closed:
            await ws.close()
    return ws

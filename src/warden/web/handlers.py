"""The web console's request handlers (web/server.py serves them): static files, login and
logout, the fleet's rows and its event stream, one guest's files, and its consoles. Each
handler of a route behind a session gets it from the server's `_api` wrapper, which has
checked the session, the Origin and the CSRF token (web/server.py).
"""

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from warden.console import authlimit
from warden.errors import SpecError
from warden.spec.fleet import LINE_NAME, MACHINE_NAME, Fleet, Web
from warden.web import assets, auth, view
from warden.web import logs as weblogs
from warden.web.backend import Backend
from warden.web.console import MAX_FRAME, WebConsole

PAGES = {"fleet": "fleet.html", "guest": "guest.html", "logs": "logs.html"}
PAGES |= {"timeline": "timeline.html", "login": "login.html", "missing": "missing.html"}
STATIC = frozenset(
    (
        "app.css",
        "icon.svg",
        "common.js",
        "fleet.js",
        "guest.js",
        "logs.js",
        "timeline.js",
        "login.js",
    )
)
TICK = 1.0  # the fleet's rows go to each event stream this often
MAX_USER = 64
MAX_PASSWORD = 1024


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return "?"
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


def _peer_host(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "?"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Handlers:
    """What WebServer answers requests with; WebServer (web/server.py) holds the state."""

    b: Backend
    clock: Callable[[], float]
    conf: Web
    links: auth.LoginLinks
    sessions: auth.Sessions
    limiter: authlimit.SourceLimiter
    crypt: authlimit.CryptChecker
    consoles: dict[WebConsole, auth.Session]
    streams: set[asyncio.Event]

    @property
    def fleet(self) -> Fleet:
        return self.b.fleet

    @property
    def tls(self) -> bool:
        return not self.conf.insecure_http

    def _end_unreachable(self) -> None:
        """End the consoles of sessions that ended or of guests no longer visible."""
        now = self.clock()
        for c, s in list(self.consoles.items()):
            if not self.sessions.alive(s, now):
                c.end("you were logged out")
            elif not view.may_see(self.fleet, s.principal, c.machine):
                c.end("your access to this guest was removed")

    def _session(self, request: web.Request) -> auth.Session | None:
        cookie = request.cookies.get(auth.cookie_name(self.tls))
        return self.sessions.get(cookie, self.clock())

    def _origin_ok(self, request: web.Request) -> bool:
        extra = [self.conf.url] if self.conf.url else []
        return auth.origin_ok(request.headers.get("Origin"), request.host, self.conf.scheme, extra)

    def _file(self, name: str, status: int = 200) -> web.Response:
        data = (assets.STATIC / name).read_bytes()
        return web.Response(body=data, status=status, content_type=assets.content_type(name))

    # ---- static files -----------------------------------------------------------------------
    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        resp = self._file(name)
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    async def _favicon(self, request: web.Request) -> web.StreamResponse:
        resp = self._file("icon.svg")
        resp.headers["Cache-Control"] = "max-age=86400"
        return resp

    async def _vendor(self, request: web.Request) -> web.StreamResponse:
        rel = assets.VENDOR.get(request.match_info["file"])
        if rel is None:
            raise web.HTTPNotFound()
        path = assets.vendor_dir(self.b.layout.cache) / rel
        if not path.is_file():
            return web.Response(
                status=404,
                text=f"warden: {request.match_info['file']} is missing; {assets.SETUP_HINT}",
            )
        resp = web.FileResponse(path)
        resp.headers["Cache-Control"] = "max-age=3600"
        resp.content_type = assets.content_type(path.name)
        return resp

    # ---- login and logout -------------------------------------------------------------------
    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        return self._file(PAGES["login"])

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not self._origin_ok(request):
            return _error(403, "this request did not come from the web console's own page")
        source = _peer(request)
        key = authlimit.source_key(_peer_host(request))
        if self.limiter.blocked(key, self.clock()):
            return _error(429, "too many failed logins from your address; try again later")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _error(400, 'expected {"token": ...} or {"user": ..., "password": ...}')
        principal: auth.Principal | None = None
        token, user, password = body.get("token"), body.get("user"), body.get("password")
        if isinstance(token, str):
            principal = self.links.redeem(token, self.clock())
            refused = "this login link is not valid (used, expired or never made): ask for "
            refused += "a new one (warden web link)"
        elif isinstance(user, str) and isinstance(password, str):
            principal = await self._password(user[:MAX_USER], password[:MAX_PASSWORD])
            refused = "wrong user name or password"
        else:
            return _error(400, 'expected {"token": ...} or {"user": ..., "password": ...}')
        if principal is None:
            now = self.clock()
            if self.limiter.failed(key, now):
                self.b.event(
                    None,
                    "web-source-blocked",
                    source=key,
                    failures=self.limiter.failures,
                    seconds=self.limiter.block,
                )
            await asyncio.sleep(self.limiter.delay(key, now))
            return _error(401, refused)
        cookie, s = self.sessions.open(principal, self.clock(), source)
        self.b.event(None, "web-login", user=principal.user, via=principal.via, source=source)
        resp = web.json_response({"user": principal.user, "label": principal.label})
        resp.set_cookie(
            auth.cookie_name(self.tls),
            cookie,
            path="/",
            httponly=True,
            secure=True,
            samesite="Strict",
        )
        return resp

    async def _password(self, user: str, password: str) -> auth.Principal | None:
        owner = self.fleet.owner(user)
        stored = owner.password_hash if owner is not None else ""
        ok = await self.crypt.check(stored, password)
        owner = self.fleet.owner(user)  # the fleet may have changed while crypt ran
        if not ok or owner is None or owner.password_hash != stored:
            return None
        return auth.Principal(user, admin=owner.admin, via="password", credential=stored)

    async def _logout(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        self.sessions.close(s)
        self._end_unreachable()
        self.b.event(None, "web-logout", user=s.user, source=_peer(request))
        resp = web.json_response({"ok": True})
        resp.del_cookie(auth.cookie_name(self.tls), path="/")
        return resp

    async def _me(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        p = s.principal
        return web.json_response(
            {
                "user": p.user,
                "label": p.label,
                "admin": p.admin,
                "csrf": s.csrf,
                "idle_timeout": self.sessions.idle,
            }
        )

    # ---- the fleet --------------------------------------------------------------------------
    def _rows(self, s: auth.Session) -> list[dict[str, Any]]:
        return view.fleet_rows(
            self.fleet,
            s.principal,
            self.b.infos(),
            view.memory_by_guest(self.b.memory()),
            self.b.attached(),
        )

    async def _guests(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        return web.json_response({"guests": self._rows(s)})

    async def _guest(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        name = request.match_info["name"]
        row = next((r for r in self._rows(s) if r["name"] == name), None)
        if row is None:
            return _error(404, view.NOT_FOUND)
        return web.json_response(row)

    async def _action(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in view.ACTIONS:
            return _error(404, f"unknown action {action!r} (one of {', '.join(view.ACTIONS)})")
        await self.b.action(name, action)
        self.b.event(name, "web-action", action=action, user=s.user, source=_peer(request))
        return web.json_response({"ok": True})

    async def _events(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        """Server-sent events: `fleet` (the rows) every TICK, `event` (the daemon's events
        this user may see, as they happen), `logout` (then the stream ends)."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await resp.prepare(request)
        q = self.b.subscribe()
        stop = asyncio.Event()
        self.streams.add(stop)
        try:
            last = 0.0
            while not stop.is_set():
                now = self.clock()
                if not self.sessions.alive(s, now):
                    await resp.write(_sse("logout", {"reason": "the session ended"}))
                    break
                if now - last >= TICK:
                    last = now
                    await resp.write(_sse("fleet", {"guests": self._rows(s)}))
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=max(0.05, TICK - (now - last)))
                except TimeoutError:
                    continue
                if view.may_receive(self.fleet, s.principal, ev):
                    ev = view.redact(ev, view.hidden(self.fleet, s.principal))
                    await resp.write(_sse("event", ev))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.b.unsubscribe(q)
            self.streams.discard(stop)
        return resp

    # ---- one guest's files ------------------------------------------------------------------
    async def _memory(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        try:
            since = float(request.query.get("since", "3600"))
        except ValueError:
            raise SpecError("since: expected a number of seconds") from None
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(
            None, weblogs.memory, self.b.layout.home, request.match_info["name"], since
        )
        return web.json_response(out)

    async def _logs(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        name = request.match_info["name"]
        rows = await loop.run_in_executor(
            None, weblogs.listing, self.b.layout, name, s.principal.admin
        )
        return web.json_response({"logs": rows})

    async def _cast(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        name, line = request.match_info["name"], request.match_info["line"]
        boot = request.match_info["boot"]
        if not (LINE_NAME.match(line) or line == "tty") or not boot.isdigit():
            return _error(404, f"no log {line!r} boot {boot!r}")
        await self.b.flush_logs()
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(None, weblogs.cast, self.b.layout, name, line, int(boot))
        return web.Response(text=text, content_type="application/x-asciicast")

    async def _search(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        needle = request.query.get("q", "")
        await self.b.flush_logs()
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(
            None,
            weblogs.search,
            self.b.layout,
            request.match_info["name"],
            needle,
            request.query.get("i") == "1",
        )
        return web.json_response({"hits": hits, "limit": weblogs.MAX_HITS})

    async def _timeline(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        doc = await self.b.timeline(request.match_info["name"])
        return web.json_response(view.redact(doc, view.hidden(self.fleet, s.principal)))

    # ---- consoles ---------------------------------------------------------------------------
    async def _console(self, request: web.Request, s: auth.Session) -> web.StreamResponse:
        name, line_name = request.match_info["name"], request.match_info["line"]
        spec = self.fleet.machine(name)
        line = self.b.line(name, line_name) if MACHINE_NAME.match(name) else None
        if spec is None or line is None:
            lines = ", ".join(spec.lines) if spec is not None else ""
            return _error(404, f"{name} has no line {line_name!r} (its lines: {lines})")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        console = WebConsole(
            ws,
            line,
            s.user,
            f"web:{_peer(request)}",
            spy=request.query.get("mode") == "spy",
            force=request.query.get("force") == "1",
            idle_timeout=lambda: self.fleet.concentrator.idle_timeout,
            activity=lambda: self.sessions.touch(s, self.clock()),
        )
        self.consoles[console] = s
        try:
            await console.run()
        finally:
            self.consoles.pop(console, None)
        return ws


def _sse(kind: str, data: Mapping[str, Any]) -> bytes:
    # json.dumps never writes a raw newline, so one `data:` line holds the whole object.
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()

"""The web console's HTTP(S) server: pages, JSON routes, live updates and consoles.

A daemon feature (start, stop, fleet_changed, check_fleet: warden.app.web puts it on the
seam) on the fleet's `[web] listen` address, in the daemon's event loop, over a Backend
(warden.app.web serves it from the daemon and its features). Routes:

    GET  /login                       the login page (a link's token stays in the fragment)
    POST /api/login                   {"token"} or {"user", "password"} -> a session cookie
    POST /api/logout
    GET  /                            the fleet
    GET  /guest/NAME                  a guest: its consoles and its memory history
    GET  /guest/NAME/logs             its session logs: list, replay, search
    GET  /guest/NAME/timeline         its incident timeline
    GET  /api/me                      who is logged in, and the session's CSRF token
    GET  /api/guests                  the fleet's rows (what the user may see)
    GET  /api/guests/NAME
    POST /api/guests/NAME/ACTION      start, stop, kill, reset
    GET  /api/events                  server-sent events: the rows each second, events, logout
    GET  /api/guests/NAME/memory?since=S
    GET  /api/guests/NAME/logs
    GET  /api/guests/NAME/logs/LINE/BOOT/cast     asciicast v2
    GET  /api/guests/NAME/logs/search?q=&i=1
    GET  /api/guests/NAME/timeline
    GET  /api/guests/NAME/console/LINE?mode=rw|spy&force=1     websocket (warden.web.console)
    GET  /static/FILE, /vendor/FILE   the pages' own files, the npm assets (warden.web.assets)

Every route but /login, /api/login and the static files needs a session; every POST and
websocket needs the browser's Origin to be the server's own; every POST but the login needs
the session's CSRF token in X-Warden-CSRF. A guest the user may not see answers 404 "no such
guest", exactly as a guest that does not exist. Every response carries a strict Content
Security Policy: scripts only from this server (and WebAssembly, for asciinema-player's
terminal), no inline script, no frames, connections only back to this server.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from warden.console import authlimit
from warden.errors import Conflict, SpecError, WardenError, http_status
from warden.spec.fleet import LINE_NAME, MACHINE_NAME, Fleet, Web
from warden.tasks import cancel, spawn
from warden.web import assets, auth, tls, view
from warden.web import logs as weblogs
from warden.web.backend import Backend
from warden.web.console import MAX_FRAME, WebConsole

log = logging.getLogger("warden.web")

CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; "
    # xterm.js's renderer and asciinema-player set styles from script (<style> elements and
    # style attributes); guest bytes are never HTML, so no style can come from a guest.
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CSRF_HEADER = "X-Warden-CSRF"
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
WATCH = 2.0  # consoles of sessions that ended are closed within this
MAX_USER = 64
MAX_PASSWORD = 1024
MAX_BODY = 64 << 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiHandler = Callable[[web.Request, auth.Session], Awaitable[web.StreamResponse]]


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


def base_url(conf: Web, port: int) -> str:
    """Where browsers reach the console: the fleet's url, else the listen address."""
    if conf.url:
        return conf.url.rstrip("/")
    host, _ = conf.host_port
    shown = f"[{host}]" if ":" in host else host
    return f"{conf.scheme}://{shown}:{port}"


class WebServer:
    """The web console service (one per daemon)."""

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.monotonic):
        self.b = backend
        self.clock = clock
        self.conf = Web()
        self.links = auth.LoginLinks()
        self.sessions = auth.Sessions(idle=self.conf.idle_timeout)
        self.limiter = authlimit.SourceLimiter()
        self.crypt = authlimit.CryptChecker("web console")
        self.consoles: dict[WebConsole, auth.Session] = {}
        self.streams: set[asyncio.Event] = set()  # each event stream's "stop now"
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.cert: tls.Certificate | None = None
        self._watch: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None

    @property
    def fleet(self) -> Fleet:
        return self.b.fleet

    @property
    def tls(self) -> bool:
        return not self.conf.insecure_http

    # ---- the service's life cycle -----------------------------------------------------------
    def check_fleet(self, new: Fleet) -> None:
        """A fleet whose certificate or key cannot be used is refused before it is applied."""
        if new.web.listen and new.web.cert:
            tls.given(new.web)

    async def start(self) -> None:
        conf = self.fleet.web
        self.conf = conf
        self.sessions.idle = conf.idle_timeout
        if not conf.listen:
            return
        missing = assets.missing(self.b.layout.cache)
        if missing:
            log.warning("web console: missing %s; %s", ", ".join(missing), assets.SETUP_HINT)
            self.b.event(None, "web-assets-missing", files=",".join(missing))
        host, port = conf.host_port
        try:
            ssl_ctx = None
            if self.tls:
                loop = asyncio.get_running_loop()
                if conf.cert:
                    self.cert = tls.given(conf)
                else:
                    self.cert = await loop.run_in_executor(None, tls.own, self.b.layout.keys, conf)
                ssl_ctx = tls.context(self.cert)
            runner = web.AppRunner(
                self._app(), handle_signals=False, access_log=None, shutdown_timeout=2.0
            )
            await runner.setup()
            site = web.TCPSite(
                runner, host, port, ssl_context=ssl_ctx, backlog=1024, reuse_address=True
            )
            try:
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
        except (OSError, WardenError) as e:
            self.b.event(None, "web-failed", listen=conf.listen, error=str(e))
            log.error("web console: cannot listen on %s: %s", conf.listen, e)
            return
        self.runner = runner
        self.port = int(runner.addresses[0][1])
        self._watch = spawn(self._watch_sessions(), "web-sessions")
        self.b.event(
            None, "web-listening", listen=conf.listen, url=base_url(conf, self.port), tls=self.tls
        )

    async def stop(self) -> None:
        await self._close_listener("the web console is stopping")
        await cancel(self._restart)
        self.crypt.close()

    async def _close_listener(self, why: str) -> None:
        await cancel(self._watch)
        self._watch = None
        for c in list(self.consoles):
            c.end(why)
        for stop in list(self.streams):
            stop.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.port = 0

    def fleet_changed(self) -> None:
        fleet = self.fleet
        for s, why in self.sessions.revoke(fleet):
            self.b.event(None, "web-session-ended", user=s.user, source=s.source, reason=why)
        self.links.revoke(fleet)
        self._end_unreachable()
        conf = fleet.web
        self.sessions.idle = conf.idle_timeout
        if (conf.listen, conf.url, conf.cert, conf.key, conf.insecure_http) != (
            self.conf.listen,
            self.conf.url,
            self.conf.cert,
            self.conf.key,
            self.conf.insecure_http,
        ):
            self._restart = spawn(self._relisten(), "web-relisten")
        else:
            self.conf = conf

    async def listening(self) -> bool:
        """Whether the console listens, once a move to a new address (a fleet just applied)
        is done."""
        if self._restart is not None and not self._restart.done():
            await asyncio.wait([self._restart])
        return self.runner is not None

    async def _relisten(self) -> None:
        await self._close_listener("the web console moved")
        await self.start()

    def _end_unreachable(self) -> None:
        now = self.clock()
        for c, s in list(self.consoles.items()):
            if not self.sessions.alive(s, now):
                c.end("you were logged out")
            elif not view.may_see(self.fleet, s.principal, c.machine):
                c.end("your access to this guest was removed")

    async def _watch_sessions(self) -> None:
        while True:
            await asyncio.sleep(WATCH)
            self._end_unreachable()

    # ---- login links (for `warden web link`, through the daemon's API) -----------------------
    def login_link(
        self, owner: str | None, admin: bool, host_user: str, ttl: float
    ) -> dict[str, Any]:
        if self.runner is None:
            why = "no [web] listen in the fleet" if not self.conf.listen else "it is not listening"
            raise Conflict(f"the web console is off ({why}; `warden events` says more)")
        principal = auth.for_link(self.fleet, owner, admin, host_user)
        ttl = ttl or auth.LINK_TTL
        token = self.links.issue(principal, ttl, self.clock())
        self.b.event(None, "web-link", user=principal.user, admin=principal.admin, ttl=ttl)
        return {
            "url": f"{base_url(self.conf, self.port)}/login#token={token}",
            "expires": time.time() + ttl,
            "user": principal.label,
            "fingerprint": self.cert.fingerprint if self.cert is not None else None,
        }

    # ---- the application --------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/login", self._login_page)
        r.add_post("/api/login", self._login)
        r.add_get("/static/{file}", self._static)
        r.add_get("/favicon.ico", self._favicon)
        r.add_get("/vendor/{file}", self._vendor)
        r.add_get("/", self._page("fleet"))
        r.add_get("/guest/{name}", self._page("guest", guest=True))
        r.add_get("/guest/{name}/logs", self._page("logs", guest=True))
        r.add_get("/guest/{name}/timeline", self._page("timeline", guest=True))
        r.add_post("/api/logout", self._api(self._logout, post=True))
        r.add_get("/api/me", self._api(self._me))
        r.add_get("/api/guests", self._api(self._guests))
        r.add_get("/api/events", self._api(self._events, touch=False))
        r.add_get("/api/guests/{name}", self._api(self._guest, guest=True))
        r.add_post("/api/guests/{name}/{action}", self._api(self._action, post=True, guest=True))
        r.add_get("/api/guests/{name}/memory", self._api(self._memory, guest=True))
        r.add_get("/api/guests/{name}/logs", self._api(self._logs, guest=True))
        r.add_get("/api/guests/{name}/logs/search", self._api(self._search, guest=True))
        r.add_get("/api/guests/{name}/logs/{line}/{boot}/cast", self._api(self._cast, guest=True))
        r.add_get("/api/guests/{name}/timeline", self._api(self._timeline, guest=True))
        r.add_get(
            "/api/guests/{name}/console/{line}",
            self._api(self._console, guest=True, websocket=True),
        )
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = e
        for k, v in HEADERS.items():
            resp.headers.setdefault(k, v)
        resp.headers["Server"] = "warden"  # not aiohttp's name and version
        if not request.path.startswith(("/vendor/", "/static/")):
            resp.headers.setdefault("Cache-Control", "no-store")
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    def _session(self, request: web.Request) -> auth.Session | None:
        cookie = request.cookies.get(auth.cookie_name(self.tls))
        return self.sessions.get(cookie, self.clock())

    def _origin_ok(self, request: web.Request) -> bool:
        extra = [self.conf.url] if self.conf.url else []
        return auth.origin_ok(request.headers.get("Origin"), request.host, self.conf.scheme, extra)

    def _page(self, name: str, guest: bool = False) -> Handler:
        async def page(request: web.Request) -> web.StreamResponse:
            s = self._session(request)
            if s is None:
                raise web.HTTPSeeOther("/login")
            self.sessions.touch(s, self.clock())
            if guest and not view.may_see(self.fleet, s.principal, request.match_info["name"]):
                return self._file(PAGES["missing"], status=404)
            return self._file(PAGES[name])

        return page

    def _api(
        self,
        handler: ApiHandler,
        post: bool = False,
        guest: bool = False,
        websocket: bool = False,
        touch: bool = True,
    ) -> Handler:
        async def api(request: web.Request) -> web.StreamResponse:
            if (post or websocket) and not self._origin_ok(request):
                return _error(403, "this request did not come from the web console's own page")
            s = self._session(request)
            if s is None:
                return _error(401, "not logged in (or the session ended): log in again")
            if post and not auth.csrf_ok(s, request.headers.get(CSRF_HEADER)):
                return _error(403, "the page's CSRF token is missing or wrong: reload the page")
            if guest and not view.may_see(self.fleet, s.principal, request.match_info["name"]):
                return _error(404, view.NOT_FOUND)
            if touch:
                self.sessions.touch(s, self.clock())
            try:
                return await handler(request, s)
            except WardenError as e:
                # The daemon's words may name guests this user may not see.
                hide = view.hidden(self.fleet, s.principal)
                return _error(http_status(e), view.redact(str(e), hide))

        return api

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


__all__ = ["WebServer", "base_url"]

"""The web console's HTTP(S) server: pages, JSON routes, live updates and consoles.

A daemon feature (start, stop, fleet_changed, check_fleet: warden.app.web puts it on the
seam) on the fleet's `[web] listen` address, in the daemon's event loop, over a Backend
(warden.app.web serves it from the daemon and its features). This module holds the life
cycle, the listener and the checks every route gets; the handlers are web/handlers.py's. Routes:

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
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from warden.console import authlimit
from warden.errors import Conflict, WardenError, http_status
from warden.spec.fleet import Fleet, Web
from warden.tasks import cancel, spawn
from warden.web import assets, auth, tls, view
from warden.web.backend import Backend
from warden.web.console import WebConsole
from warden.web.handlers import PAGES, Handlers, _error

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
WATCH = 2.0  # consoles of sessions that ended are closed within this
MAX_BODY = 64 << 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiHandler = Callable[[web.Request, auth.Session], Awaitable[web.StreamResponse]]


def base_url(conf: Web, port: int) -> str:
    """Where browsers reach the console: the fleet's url, else the listen address."""
    if conf.url:
        return conf.url.rstrip("/")
    host, _ = conf.host_port
    shown = f"[{host}]" if ":" in host else host
    return f"{conf.scheme}://{shown}:{port}"


class WebServer(Handlers):
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


__all__ = ["WebServer", "base_url"]

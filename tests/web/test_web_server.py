"""The web console's server at its seam (warden.web.backend.Backend), guest-free: a fake
backend holds the fleet and real daemon/lines.py Lines with no guest behind them, and the test
talks HTTPS and websockets to the real server on 127.0.0.1 (its own certificate).

What it shows: cookies and links, CSRF and Origin on every state-changing request and
websocket, the ACL on every route (another owner's guest answers exactly like one that does not
exist), idle and revoked sessions, the console's arbitration and its session-log records, and
that error messages and events name no guest the user may not see. The same rules on real
guests in a real browser: tests/web/test_web_guest.py.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from warden.daemon.context import EventBus
from warden.daemon.files import MachineFiles
from warden.daemon.lines import Line
from warden.errors import Conflict, WardenError
from warden.paths import Layout
from warden.spec import fleet as fleetmod
from warden.web.server import WebServer

HASH = (
    "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/"
    "uamSo5z0"
)
PASSWORD = "correct horse"  # HASH is its sha512-crypt


def fleet_text(extra: str = "", idle: int = 900) -> str:
    return f"""
[web]
listen = "127.0.0.1:0"
idle_timeout = {idle}

[[owner]]
name = "alice"
password_hash = "{HASH}"

[[owner]]
name = "bob"

[[machine]]
name = "web1"
owner = "alice"
serial_lines = 1

[[machine]]
name = "db1"
owner = "bob"
{extra}
"""


class RecordingLog:
    """A line's LineLog that keeps what it was given."""

    def __init__(self) -> None:
        self.inputs: list[tuple[bytes, str]] = []
        self.events: list[dict[str, Any]] = []

    def output(self, data: bytes) -> None:
        pass

    def input(self, data: bytes, user: str) -> None:
        self.inputs.append((data, user))

    def event(self, kind: str, **fields: object) -> None:
        self.events.append({"kind": kind, **fields})

    def close(self) -> None:
        pass


@dataclass
class FakeBackend:
    layout: Layout
    text: str
    bus: EventBus = field(default_factory=EventBus)
    actions: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    lines: dict[tuple[str, str], Line] = field(default_factory=dict)
    logs: dict[tuple[str, str], RecordingLog] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.apply(self.text)

    def apply(self, text: str) -> None:
        self._fleet = fleetmod.parse(text, "fleet.toml")
        for m in self._fleet.machines:
            for ln in m.lines:
                if (m.name, ln) not in self.lines:
                    line = Line(m.name, ln, MachineFiles(self.layout.machine(m.name), m.name))
                    log = RecordingLog()
                    line.log = log
                    self.lines[(m.name, ln)] = line
                    self.logs[(m.name, ln)] = log

    @property
    def fleet(self) -> fleetmod.Fleet:
        return self._fleet

    def infos(self) -> Mapping[str, Mapping[str, Any]]:
        return {
            m.name: {"state": "running", "uptime": 12.0, "boot": 1} for m in self._fleet.machines
        }

    def line(self, machine: str, line: str) -> Line | None:
        return self.lines.get((machine, line))

    def attached(self) -> Mapping[str, int]:
        out: dict[str, int] = {}
        for (m, _), line in self.lines.items():
            out[m] = out.get(m, 0) + len(line.clients)
        return out

    async def action(self, machine: str, action: str) -> None:
        if machine == "web1" and action == "start":
            # The daemon's own words, which name another owner's guest.
            raise Conflict("cannot start web1: floors of the guests already running (db1 64M)")
        self.actions.append((machine, action))

    def memory(self) -> Mapping[str, Any] | None:
        return {"guests": [{"name": "web1", "plugged": 64 << 20, "used": 10 << 20}]}

    async def timeline(self, machine: str) -> dict[str, Any]:
        return {"meta": {"machine": machine}, "entries": [{"kind": "event", "text": "db1 said hi"}]}

    async def flush_logs(self) -> None:
        return None

    def subscribe(self) -> "asyncio.Queue[dict[str, Any]]":
        return self.bus.subscribe()

    def unsubscribe(self, queue: "asyncio.Queue[dict[str, Any]]") -> None:
        self.bus.unsubscribe(queue)

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        ev = {"machine": machine, "kind": kind, **detail}
        self.events.append(ev)
        self.bus.publish(ev)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@dataclass
class Env:
    server: WebServer
    backend: FakeBackend
    base: str
    http: aiohttp.ClientSession
    clock: Clock

    @property
    def origin(self) -> str:
        return self.base

    def link(self, owner: str | None, admin: bool = False, ttl: float = 0) -> str:
        url = self.server.login_link(owner, admin, "root", ttl)["url"]
        assert url.startswith(self.base + "/login#token=")
        return str(url.split("#token=", 1)[1])

    async def login(self, owner: str | None = "alice", admin: bool = False) -> "Browser":
        b = Browser(self)
        r = await b.post("/api/login", {"token": self.link(owner, admin)}, csrf=False)
        assert r.status == 200, await r.text()
        return b


@dataclass
class Browser:
    """What a browser sends: its cookie, its Origin, and the CSRF token of /api/me."""

    env: Env
    cookie: str = ""
    csrf: str = ""
    origin: str | None = None

    def headers(self, csrf: bool = True) -> dict[str, str]:
        h = {"Origin": self.origin if self.origin is not None else self.env.origin}
        if self.cookie:
            h["Cookie"] = self.cookie
        if csrf and self.csrf:
            h["X-Warden-CSRF"] = self.csrf
        return h

    async def get(self, path: str) -> aiohttp.ClientResponse:
        r = await self.env.http.get(
            self.env.base + path, headers=self.headers(), allow_redirects=False
        )
        await r.read()
        return r

    async def post(self, path: str, body: Any = None, csrf: bool = True) -> aiohttp.ClientResponse:
        r = await self.env.http.post(
            self.env.base + path, json=body or {}, headers=self.headers(csrf), allow_redirects=False
        )
        await r.read()
        if "Set-Cookie" in r.headers and path == "/api/login":
            self.cookie = r.headers["Set-Cookie"].split(";", 1)[0]
            me = await self.get("/api/me")
            self.csrf = json.loads(await me.text())["csrf"]
        return r

    async def console(
        self, name: str, line: str = "con0", query: str = ""
    ) -> aiohttp.ClientWebSocketResponse:
        return await self.env.http.ws_connect(
            f"{self.env.base.replace('https', 'wss')}/api/guests/{name}/console/{line}?{query}",
            headers=self.headers(csrf=False),
        )


@asynccontextmanager
async def started(tmp_path: Path, text: str | None = None) -> AsyncIterator[Env]:
    layout = Layout(home=tmp_path / "home", cache=tmp_path / "cache")
    layout.ensure()
    backend = FakeBackend(layout, text or fleet_text())
    clock = Clock()
    server = WebServer(backend, clock=clock)
    await server.start()
    assert server.runner is not None, backend.events
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as http:
        try:
            yield Env(server, backend, f"https://127.0.0.1:{server.port}", http, clock)
        finally:
            await server.stop()


def run(test: Callable[[], Any]) -> None:
    asyncio.run(test())


async def body(r: aiohttp.ClientResponse) -> Any:
    return json.loads(await r.text())


async def frames(
    ws: aiohttp.ClientWebSocketResponse, until: Callable[[list[Any]], bool], timeout: float = 5
) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        left = deadline - time.monotonic()
        assert left > 0, got
        msg = await ws.receive(timeout=left)
        if msg.type == aiohttp.WSMsgType.BINARY:
            got.append(bytes(msg.data))
        elif msg.type == aiohttp.WSMsgType.TEXT:
            got.append(json.loads(msg.data))
        else:
            got.append(msg.type)
            break
    return got


# ---- logging in ---------------------------------------------------------------------------
def test_a_link_logs_in_once_with_a_strict_cookie(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            token = e.link("alice")
            b = Browser(e)
            r = await b.post("/api/login", {"token": token}, csrf=False)
            assert r.status == 200
            cookie = r.headers["Set-Cookie"]
            assert cookie.startswith("__Host-warden=")
            for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
                assert attr in cookie, cookie
            assert "Domain" not in cookie and "Max-Age" not in cookie
            assert (await body(await b.get("/api/me")))["user"] == "alice"
            again = await Browser(e).post("/api/login", {"token": token}, csrf=False)
            assert again.status == 401 and "not valid" in (await body(again))["error"]
            assert [ev["kind"] for ev in e.backend.events].count("web-login") == 1
            assert not any(token in json.dumps(ev) for ev in e.backend.events)

    run(t)


def test_expired_links_and_passwords(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            token = e.link("alice", ttl=60)
            e.clock.offset += 61
            r = await Browser(e).post("/api/login", {"token": token}, csrf=False)
            assert r.status == 401
            ok = await Browser(e).post(
                "/api/login", {"user": "alice", "password": PASSWORD}, csrf=False
            )
            assert ok.status == 200
            wrong = await Browser(e).post(
                "/api/login", {"user": "alice", "password": "x"}, csrf=False
            )
            nobody = await Browser(e).post(
                "/api/login", {"user": "carol", "password": "x"}, csrf=False
            )
            assert wrong.status == nobody.status == 401
            assert (
                (await body(wrong))
                == (await body(nobody))
                == {"error": "wrong user name or password"}
            )
            bob = await Browser(e).post("/api/login", {"user": "bob", "password": ""}, csrf=False)
            assert bob.status == 401  # bob has no password: only links

    run(t)


def test_a_guessing_source_is_blocked(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            e.server.limiter.failures = 3
            statuses = []
            for _ in range(4):
                r = await Browser(e).post("/api/login", {"token": "x" * 43}, csrf=False)
                statuses.append(r.status)
            assert statuses == [401, 401, 401, 429]
            assert any(ev["kind"] == "web-source-blocked" for ev in e.backend.events)

    run(t)


def test_no_login_without_the_servers_own_origin(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            for origin in ("https://evil.example", "null", ""):
                b = Browser(e, origin=origin)
                r = await b.post("/api/login", {"token": e.link("alice")}, csrf=False)
                assert r.status == 403, origin

    run(t)


# ---- CSRF, Origin and the ACL ---------------------------------------------------------------
def test_state_changes_need_the_csrf_token_and_the_origin(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            b = await e.login("alice")
            token = b.csrf
            b.csrf = ""
            assert (await b.post("/api/guests/web1/stop")).status == 403
            b.csrf = "x" + token[1:]
            assert (await b.post("/api/guests/web1/stop")).status == 403
            b.csrf, b.origin = token, "https://evil.example"
            assert (await b.post("/api/guests/web1/stop")).status == 403
            assert e.backend.actions == []
            b.origin = None
            r = await b.post("/api/guests/web1/stop")
            assert r.status == 200 and e.backend.actions == [("web1", "stop")]
            assert any(
                ev["kind"] == "web-action" and ev["user"] == "alice" and ev["machine"] == "web1"
                for ev in e.backend.events
            )

    run(t)


ROUTES = (
    ("GET", "/guest/{}"),
    ("GET", "/guest/{}/logs"),
    ("GET", "/guest/{}/timeline"),
    ("GET", "/api/guests/{}"),
    ("GET", "/api/guests/{}/memory"),
    ("GET", "/api/guests/{}/logs"),
    ("GET", "/api/guests/{}/logs/search?q=x"),
    ("GET", "/api/guests/{}/logs/con0/1/cast"),
    ("GET", "/api/guests/{}/timeline"),
    ("POST", "/api/guests/{}/stop"),
    ("POST", "/api/guests/{}/kill"),
)


def test_another_owners_guest_answers_as_one_that_does_not_exist(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            b = await e.login("alice")
            rows = (await body(await b.get("/api/guests")))["guests"]
            assert [r["name"] for r in rows] == ["web1"]
            for method, route in ROUTES:
                answers = []
                for name in ("db1", "nope"):
                    path = route.format(name)
                    r = await (b.get(path) if method == "GET" else b.post(path))
                    answers.append((r.status, await r.read()))
                assert answers[0] == answers[1], (route, answers)
                assert answers[0][0] == 404, (route, answers)
            for name in ("db1", "nope"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await b.console(name)
                assert err.value.status == 404
            assert e.backend.actions == []
            admin = await e.login(None, admin=True)
            rows = (await body(await admin.get("/api/guests")))["guests"]
            assert [r["name"] for r in rows] == ["web1", "db1"]
            assert (await admin.get("/api/guests/db1")).status == 200

    run(t)


def test_without_a_session_nothing_but_the_login_page(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            b = Browser(e)
            r = await b.get("/")
            assert r.status == 303 and r.headers["Location"] == "/login"
            assert (await b.get("/api/guests")).status == 401
            assert (await b.get("/login")).status == 200
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await b.console("web1")
            assert err.value.status == 401

    run(t)


def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            b = await e.login("alice")
            for path in (
                "/login",
                "/",
                "/api/guests",
                "/api/guests/db1",
                "/static/common.js",
                "/nope",
            ):
                r = await b.get(path)
                csp = r.headers.get("Content-Security-Policy", "")
                assert "script-src 'self' 'wasm-unsafe-eval';" in csp, path
                assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
                assert "unsafe-eval'" not in csp.replace("wasm-unsafe-eval", "")
                assert "script-src 'self' 'unsafe-inline'" not in csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Server"] == "warden"

    run(t)


def test_the_daemons_words_name_no_guest_the_user_may_not_see(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            b = await e.login("alice")
            r = await b.post("/api/guests/web1/start")
            assert r.status == 409
            assert (await body(r))["error"] == (
                "cannot start web1: floors of the guests already running (another guest 64M)"
            )
            tl = await body(await b.get("/api/guests/web1/timeline"))
            assert tl["entries"][0]["text"] == "another guest said hi"

    run(t)


def test_the_event_stream_carries_only_what_the_user_may_see(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            b = await e.login("alice")
            r = await e.http.get(e.base + "/api/events", headers=b.headers())
            assert r.headers["Content-Type"] == "text/event-stream"
            first = await r.content.readuntil(b"\n\n")
            assert first.startswith(b"event: fleet\ndata: ")
            rows = json.loads(first.split(b"data: ", 1)[1])["guests"]
            assert [g["name"] for g in rows] == ["web1"] and rows[0]["used"] == 10 << 20
            e.backend.event("db1", "up")
            e.backend.event(None, "fleet-applied", added="web1,db1")
            e.backend.event("web1", "refused", reason="db1 holds the memory")
            got = []
            while len(got) < 1:
                chunk = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                if chunk.startswith(b"event: event"):
                    got.append(json.loads(chunk.split(b"data: ", 1)[1]))
            assert got == [
                {"machine": "web1", "kind": "refused", "reason": "another guest holds the memory"}
            ]
            await b.post("/api/logout")
            rest = await asyncio.wait_for(r.content.read(), 5)
            assert b"event: logout" in rest
            r.close()

    run(t)


# ---- sessions that end ----------------------------------------------------------------------
def test_an_idle_session_ends(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path, fleet_text(idle=60)) as e:
            b = await e.login("alice")
            e.clock.offset += 59
            assert (await b.get("/api/guests")).status == 200  # a request keeps it alive
            e.clock.offset += 59
            assert (await b.get("/api/guests")).status == 200
            e.clock.offset += 61
            assert (await b.get("/api/guests")).status == 401

    run(t)


def test_logout_and_a_fleet_change_end_sessions_and_their_consoles(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            b = await e.login("alice")
            ws = await b.console("web1")
            await frames(ws, lambda g: any(isinstance(f, dict) and "attached" in f for f in g))
            # alice loses web1 (it is bob's now): her console is closed, her session stays.
            e.backend.apply(
                fleet_text().replace(
                    'name = "web1"\nowner = "alice"', 'name = "web1"\nowner = "bob"'
                )
            )
            e.server.fleet_changed()
            got = await frames(ws, lambda g: any(isinstance(f, dict) and "closed" in f for f in g))
            assert {"closed": "your access to this guest was removed"} in got
            assert (await b.get("/api/guests")).status == 200
            # alice leaves the fleet: her session ends.
            e.backend.apply(
                fleet_text()
                .replace('owner = "alice"', 'owner = "bob"')
                .replace('name = "alice"', 'name = "carol"')
            )
            e.server.fleet_changed()
            assert (await b.get("/api/guests")).status == 401
            assert any(ev["kind"] == "web-session-ended" for ev in e.backend.events)
            b2 = await e.login("bob")
            ws2 = await b2.console("db1")
            await frames(ws2, lambda g: any(isinstance(f, dict) and "attached" in f for f in g))
            assert (await b2.post("/api/logout")).status == 200
            got = await frames(
                ws2, lambda g: any(isinstance(f, dict) and "closed" in f for f in g), timeout=10
            )
            assert {"closed": "you were logged out"} in got

    run(t)


# ---- consoles -------------------------------------------------------------------------------
def test_consoles_follow_the_concentrators_rules_and_are_logged(tmp_path: Path) -> None:
    async def t() -> None:
        async with started(tmp_path) as e:
            alice = await e.login("alice")
            admin = await e.login(None, admin=True)
            writer = await alice.console("web1")
            got = await frames(
                writer, lambda g: any(isinstance(f, dict) and "attached" in f for f in g)
            )
            attached = next(f["attached"] for f in got if isinstance(f, dict) and "attached" in f)
            assert attached == {"machine": "web1", "line": "con0", "mode": "rw", "running": False}
            # A second writer is refused, and told how to go on.
            with_conflict = await admin.console("web1")
            got = await frames(
                with_conflict, lambda g: any(isinstance(f, dict) and "closed" in f for f in g)
            )
            closed = next(f for f in got if isinstance(f, dict) and "closed" in f)
            assert (
                closed["conflict"] and "has a writer (alice from web:127.0.0.1:" in closed["closed"]
            )
            spy = await admin.console("web1", query="mode=spy")
            await frames(spy, lambda g: any(isinstance(f, dict) and "attached" in f for f in g))
            # The writer's keystrokes reach the line as hers; a spy's go nowhere.
            await writer.send_bytes(b"ls\r")
            await spy.send_bytes(b"rm -rf /\r")
            line = e.backend.lines[("web1", "con0")]
            log = e.backend.logs[("web1", "con0")]
            deadline = time.monotonic() + 5
            while not log.inputs and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert log.inputs == [(b"ls\r", "alice")]
            # Guest output: raw for the writer, without the clipboard-setting OSC for the spy.
            line._deliver(b"hi\x1b]52;c;ZXZpbA==\x07there")
            w = await frames(
                writer, lambda g: b"".join(x for x in g if isinstance(x, bytes)).endswith(b"there")
            )
            s = await frames(
                spy, lambda g: b"there" in b"".join(x for x in g if isinstance(x, bytes))
            )
            assert b"\x1b]52" in b"".join(x for x in w if isinstance(x, bytes))
            spied = b"".join(x for x in s if isinstance(x, bytes))
            assert b"\x1b]52" not in spied and b"hithere" in spied
            # A takeover demotes alice, who is told; it is logged with both names.
            boss = await admin.console("web1", query="force=1")
            await frames(boss, lambda g: any(isinstance(f, dict) and "attached" in f for f in g))
            got = await frames(writer, lambda g: {"mode": "spy"} in g)
            assert any(isinstance(f, dict) and "took over" in f.get("notice", "") for f in got)
            kinds = [(ev["kind"], ev.get("user"), ev.get("mode")) for ev in log.events]
            assert ("attach", "alice", "rw") in kinds and ("attach", "root", "spy") in kinds
            takeover = next(ev for ev in log.events if ev["kind"] == "takeover")
            assert takeover["user"] == "root" and takeover["previous"] == "alice"
            assert str(takeover["source"]).startswith("web:127.0.0.1:")
            await writer.send_json({"resize": [100, 30]})
            await boss.send_json({"resize": [120, 40]})
            await boss.send_json({"resize": [10**6, 1]})  # out of bounds: ignored
            await asyncio.sleep(0.2)
            sizes = [(ev["cols"], ev["rows"]) for ev in log.events if ev["kind"] == "resize"]
            assert sizes == [(100, 30), (120, 40)]
            for ws in (writer, spy, boss):
                await ws.close()
            await asyncio.sleep(0.2)
            assert line.clients == []
            assert (
                sum(1 for ev in log.events if ev["kind"] == "detach") == 3
            )  # the refused never attached

    run(t)


def test_an_idle_console_is_detached(tmp_path: Path) -> None:
    async def t() -> None:
        text = fleet_text().replace("[web]", "[concentrator]\nidle_timeout = 1\n\n[web]")
        async with started(tmp_path, text) as e:
            b = await e.login("alice")
            ws = await b.console("web1", "ssl0")
            got = await frames(
                ws, lambda g: any(isinstance(f, dict) and "closed" in f for f in g), timeout=10
            )
            assert {"closed": "no input for 1 s: detached"} in got
            log = e.backend.logs[("web1", "ssl0")]
            assert log.events[-1]["kind"] == "detach" and "no input" in str(
                log.events[-1]["reason"]
            )

    run(t)


def test_links_need_a_listening_console(tmp_path: Path) -> None:
    async def t() -> None:
        layout = Layout(home=tmp_path / "home", cache=tmp_path / "cache")
        layout.ensure()
        server = WebServer(
            FakeBackend(layout, fleet_text().replace('listen = "127.0.0.1:0"\n', ""))
        )
        await server.start()
        with pytest.raises(WardenError, match=r"the web console is off \(no \[web\] listen"):
            server.login_link("alice", False, "root", 0)
        await server.stop()

    run(t)

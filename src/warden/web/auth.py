"""Who is logged in to the web console, and how: sans-io (every method takes the time).

- A `Principal` is an owner of the fleet (her guests), an owner with `admin = true` (every
  guest), or root on the host, who asked the CLI for an administrator's link (`via = "host"`).
- `LoginLinks` are one-time: `warden web link` asks the daemon for one; the browser trades it
  for a session once, before it expires. Only a digest of each token is kept.
- `Sessions` are the cookies' other end: a random value (only its digest is kept, so a lookup
  compares digests, never the secret), an idle timeout, a lifetime, a CSRF token of their own,
  and a bound on how many exist (the least recently used go first).
- `still_valid` is the concentrator's revocation rule: a fleet change that removes the owner,
  her admin flag or the password hash a session logged in with ends that session.
- `origin_ok` is the check of every state-changing request and every websocket: the browser's
  Origin must be the origin the request was sent to (or the fleet's `[web] url`).

The server (warden.web.server) performs what this decides; tests drive it with made-up clocks.
"""

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from warden.errors import NotFound, SpecError
from warden.spec.fleet import Fleet

TOKEN_BYTES = 32  # 256 random bits in every link token, session cookie and CSRF token
MAX_TOKEN_CHARS = 128  # anything longer is not one of ours and is not even hashed
LINK_TTL = 15 * 60  # `warden web link` without --ttl
LINK_TTL_MAX = 24 * 3600
MAX_LINKS = 256  # links not redeemed yet; more push out the ones that expire first
MAX_SESSIONS = 1024
SESSION_LIFETIME = 12 * 3600  # a session ends this long after its login, busy or not
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Principal:
    user: str  # an owner's name, or the host user (root) for `via = "host"`
    admin: bool = False
    via: str = "link"  # "link", "password" or "host"
    credential: str = ""  # password logins: the hash the password matched

    @property
    def label(self) -> str:
        if self.via == "host":
            return f"{self.user} (host administrator)"
        return f"{self.user} (admin)" if self.admin else self.user


def for_link(fleet: Fleet, owner: str | None, admin: bool, host_user: str) -> Principal:
    """Whom a `warden web link [OWNER] [--admin]` logs in; SpecError/NotFound saying why not."""
    if owner is None:
        if not admin:
            raise SpecError(
                "name an owner (warden web link OWNER) or ask for an administrator's link "
                "(warden web link --admin)"
            )
        return Principal(host_user, admin=True, via="host")
    found = fleet.owner(owner)
    if found is None:
        known = ", ".join(o.name for o in fleet.owners) or "none"
        raise NotFound(f"no owner named {owner!r} in the fleet {fleet.source} (owners: {known})")
    if admin and not found.admin:
        raise SpecError(
            f"{owner} is not an administrator in the fleet (admin = true); leave out --admin "
            "for a link to her own guests"
        )
    return Principal(owner, admin=found.admin, via="link")


def still_valid(fleet: Fleet, p: Principal) -> str | None:
    """None while `p` may stay logged in; else why not (said to the browser)."""
    if p.via == "host":
        return None
    owner = fleet.owner(p.user)
    if owner is None:
        return f"the owner {p.user} was removed from the fleet"
    if p.admin and not owner.admin:
        return f"{p.user} is no longer an administrator"
    if p.via == "password" and owner.password_hash != p.credential:
        return f"the password {p.user} logged in with was changed"
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _token_shaped(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_CHARS and token.isascii()


class LoginLinks:
    """One-time login tokens, by digest, each with its deadline."""

    def __init__(self, max_links: int = MAX_LINKS):
        self.max_links = max_links
        self._links: dict[bytes, tuple[Principal, float]] = {}

    def __len__(self) -> int:
        return len(self._links)

    def issue(self, p: Principal, ttl: float, now: float) -> str:
        if not 0 < ttl <= LINK_TTL_MAX:
            raise SpecError(f"ttl {ttl:g}s: expected more than 0 and at most {LINK_TTL_MAX}s (1d)")
        self._prune(now)
        while len(self._links) >= self.max_links:
            first = min(self._links, key=lambda k: self._links[k][1])
            del self._links[first]
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._links[_digest(token)] = (p, now + ttl)
        return token

    def redeem(self, token: str, now: float) -> Principal | None:
        """The principal of a valid link, which is then spent; None for any other string."""
        if not _token_shaped(token):
            return None
        entry = self._links.pop(_digest(token), None)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def revoke(self, fleet: Fleet) -> int:
        """Forget the links whose principal the fleet no longer allows; how many."""
        gone = [k for k, (p, _) in self._links.items() if still_valid(fleet, p) is not None]
        for k in gone:
            del self._links[k]
        return len(gone)

    def _prune(self, now: float) -> None:
        for k in [k for k, (_, until) in self._links.items() if until <= now]:
            del self._links[k]


@dataclass(eq=False)
class Session:
    key: bytes  # digest of the cookie's value
    principal: Principal
    csrf: str
    created: float
    seen: float
    source: str  # the address it logged in from

    @property
    def user(self) -> str:
        return self.principal.user


class Sessions:
    """Logged-in browsers, by the digest of their cookie."""

    def __init__(
        self, idle: float, lifetime: float = SESSION_LIFETIME, max_sessions: int = MAX_SESSIONS
    ):
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._by_key: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_key.values()))

    def open(self, p: Principal, now: float, source: str) -> tuple[str, Session]:
        """A new session: (the cookie's value, the session)."""
        while len(self._by_key) >= self.max_sessions:
            oldest = min(self._by_key.values(), key=lambda s: s.seen)
            del self._by_key[oldest.key]
        cookie = secrets.token_urlsafe(TOKEN_BYTES)
        s = Session(_digest(cookie), p, secrets.token_urlsafe(TOKEN_BYTES), now, now, source)
        self._by_key[s.key] = s
        return cookie, s

    def expired(self, s: Session, now: float) -> bool:
        return now - s.seen >= self.idle or now - s.created >= self.lifetime

    def get(self, cookie: str | None, now: float) -> Session | None:
        """The live session of a cookie's value (an expired one is forgotten)."""
        if cookie is None or not _token_shaped(cookie):
            return None
        s = self._by_key.get(_digest(cookie))
        if s is None:
            return None
        if self.expired(s, now):
            self.close(s)
            return None
        return s

    def alive(self, s: Session, now: float) -> bool:
        """Whether `s` is still open (not logged out, revoked or expired)."""
        if self._by_key.get(s.key) is not s:
            return False
        if self.expired(s, now):
            self.close(s)
            return False
        return True

    def touch(self, s: Session, now: float) -> None:
        s.seen = max(s.seen, now)

    def close(self, s: Session) -> None:
        if self._by_key.get(s.key) is s:
            del self._by_key[s.key]

    def revoke(self, fleet: Fleet) -> list[tuple[Session, str]]:
        """Close the sessions the fleet no longer allows: (session, why) for each."""
        out = []
        for s in list(self._by_key.values()):
            why = still_valid(fleet, s.principal)
            if why is not None:
                self.close(s)
                out.append((s, why))
        return out


def csrf_ok(s: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(s.csrf.encode(), token.encode())


def origin(url: str) -> str | None:
    """`scheme://host:port` of a URL or an Origin header, lower-case, the port always written;
    None for anything else (an opaque "null" origin, a path, a bad port)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port if port is not None else DEFAULT_PORTS[scheme]}"


def origin_ok(header: str | None, host: str | None, scheme: str, extra: Iterable[str] = ()) -> bool:
    """The browser's Origin header is the origin it sent the request to (`scheme://Host`), or
    one of `extra` (the fleet's url). A missing Origin fails: every browser sends one on a
    websocket and on a POST made with fetch()."""
    if not header:
        return False
    got = origin(header)
    if got is None:
        return False
    allowed = {origin(e) for e in extra}
    if host:
        allowed.add(origin(f"{scheme}://{host}"))
    return got in allowed


def cookie_name(tls: bool) -> str:
    """`__Host-` makes the browser refuse the cookie unless it is Secure, for path / and
    without Domain (never shared with another host or port's pages)."""
    return "__Host-warden" if tls else "warden"

"""The browser libraries the web console serves, from the npm registry at pinned versions.

assets/package.json pins xterm.js (@xterm/xterm), its fit addon and asciinema-player;
assets/package-lock.json pins every file by its integrity hash. scripts/setup.sh runs
`npm ci` on them into WARDEN_CACHE/web/KEY/ (KEY: the first 16 hex digits of the lock's
SHA-256), so a changed lock is a new directory and an old one is never half-updated. The
daemon serves only the files of VENDOR from there, under /vendor/; nothing is loaded from a
CDN, and the pages work on a machine with no network.
"""

import hashlib
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
LOCK = ASSETS / "package-lock.json"
STATIC = Path(__file__).resolve().parent / "static"

# URL name under /vendor/ -> path under node_modules/.
VENDOR = {
    "xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm.css": "@xterm/xterm/css/xterm.css",
    "addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
    "asciinema-player.js": "asciinema-player/dist/bundle/asciinema-player.min.js",
    "asciinema-player.css": "asciinema-player/dist/bundle/asciinema-player.css",
}
SETUP_HINT = "run scripts/setup.sh (it fetches them with `npm ci` into WARDEN_CACHE/web)"


def lock_key(lock: Path = LOCK) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]


def vendor_dir(cache: Path, lock: Path = LOCK) -> Path:
    """Where setup.sh put node_modules for this lock."""
    return cache / "web" / lock_key(lock) / "node_modules"


def missing(cache: Path, lock: Path = LOCK) -> list[str]:
    """The VENDOR files that are not there (empty: the console pages can work)."""
    root = vendor_dir(cache, lock)
    return [name for name, rel in VENDOR.items() if not (root / rel).is_file()]


def content_type(name: str) -> str:
    if name.endswith(".js"):
        return "text/javascript"
    if name.endswith(".css"):
        return "text/css"
    if name.endswith(".html"):
        return "text/html"
    if name.endswith(".svg"):
        return "image/svg+xml"
    return "application/octet-stream"

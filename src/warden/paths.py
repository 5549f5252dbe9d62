"""Where warden keeps its state and caches.

WARDEN_HOME (default /var/lib/warden) holds one installation's state: the database, named
images and kernels, each guest's files and the daemon's sockets. WARDEN_CACHE (default
/var/cache/warden) holds slow artefacts keyed by the hash of their inputs (built images,
kernels, the xstate shim); it is shared by every WARDEN_HOME on the machine, so that tests,
each with a temporary home, build the Debian image and the kernel once.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("/var/lib/warden")
DEFAULT_CACHE = Path("/var/cache/warden")


@dataclass(frozen=True)
class Layout:
    home: Path
    cache: Path

    @property
    def instance(self) -> str:
        """Eight hex digits naming this home in host-wide names (cgroups, umids)."""
        return hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:8]

    @property
    def db(self) -> Path:
        return self.home / "warden.db"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def kernels(self) -> Path:
        return self.home / "kernels"

    @property
    def machines(self) -> Path:
        return self.home / "machines"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def socket(self) -> Path:
        return self.run / "warden.sock"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    def machine(self, name: str) -> Path:
        return self.machines / name

    def ensure(self) -> None:
        for d in (self.home, self.images, self.kernels, self.machines, self.run, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(mode=0o700, exist_ok=True)


def layout(home: str | os.PathLike[str] | None = None) -> Layout:
    """The layout for `home`, else $WARDEN_HOME, else /var/lib/warden."""
    h = Path(home) if home is not None else Path(os.environ.get("WARDEN_HOME", DEFAULT_HOME))
    c = Path(os.environ.get("WARDEN_CACHE", DEFAULT_CACHE))
    return Layout(home=h.absolute(), cache=c.absolute())

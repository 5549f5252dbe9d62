"""Issue 18, section 2: a newcomer's first run works, tried with real guests."""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from tests.support.netlab import wait_running
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import DEFAULT_CACHE, layout
from warden.progress import NullProgress

pytestmark = pytest.mark.guest


@pytest.fixture
def empty_shim_cache(minimal_image: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A WARDEN_CACHE of this test's own with no shim built yet. Its images, kernels and uid
    claims are the machine's shared ones (symlinks), so only the shim starts from nothing."""
    shared = Path(os.environ.get("WARDEN_CACHE", DEFAULT_CACHE))
    cache = Path(tempfile.mkdtemp(prefix="wc-", dir="/tmp"))
    for part in ("images", "kernels", "uids"):
        (shared / part).mkdir(parents=True, exist_ok=True)
        (cache / part).symlink_to(shared / part)
    monkeypatch.setenv("WARDEN_CACHE", str(cache))
    yield cache
    import shutil

    shutil.rmtree(cache, ignore_errors=True)


def test_8_guests_start_at_once_on_an_empty_cache(
    empty_shim_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first boots of a fleet all ask for the xstate shim at once: each one boots."""
    h = Path(tempfile.mkdtemp(prefix="wh-", dir="/tmp"))
    monkeypatch.setenv("WARDEN_HOME", str(h))
    lay = layout(h)
    assert lay.cache == empty_shim_cache and not (lay.cache / "shim").exists()
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    names = [f"s{i}" for i in range(8)]
    try:
        d.apply(FLEET_HEAD + "".join(machine_toml(n, image="minimal") for n in names))
        wait_running(d, *names)
        assert len(list((lay.cache / "shim").glob("*/xstate_shim.so"))) == 1
    finally:
        d.close()
        d.assert_clean()
        import shutil

        shutil.rmtree(h, ignore_errors=True)

"""Shared fixtures. Every test gets its own WARDEN_HOME; the cache (built images, kernels) is
shared so slow artefacts are built once per machine."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from warden.paths import Layout, layout


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    h = tmp_path / "home"
    monkeypatch.setenv("WARDEN_HOME", str(h))
    lay = layout(h)
    lay.ensure()
    return lay


@pytest.fixture(scope="session")
def minimal_image() -> Iterator[Path]:
    """The minimal image, built into the shared cache (once per machine)."""
    from warden.images import minimal
    from warden.images.store import ImageStore
    from warden.progress import NullProgress

    lay = layout(Path(os.environ.get("WARDEN_TEST_IMAGE_HOME", "/tmp/warden-test-images")))
    lay.ensure()
    yield minimal.build(ImageStore(lay), NullProgress())

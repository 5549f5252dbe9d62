"""`warden --cluster URL ...` against a real one-member etcd, no daemons: bad input is refused
with a clear error and writes nothing; the daemon's cluster options are checked before it
starts."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import EtcdCluster

FLEET = """
[cluster]
storage = "/srv/warden"

[[owner]]
name = "alice"

[[machine]]
name = "web"
owner = "alice"
image = "{image}"
"""


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    e = EtcdCluster(members=1).start_all()
    yield e
    e.close()


def warden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warden", *args], capture_output=True, text=True, timeout=60
    )


def test_apply_ls_hosts_and_refusals(etcd: EtcdCluster, tmp_path: Path) -> None:
    bad = tmp_path / "named.toml"
    bad.write_text(FLEET.format(image="minimal"))
    r = warden("--cluster", etcd.urls, "apply", str(bad))
    assert r.returncode == 2
    assert "[cluster] storage is set" in r.stderr and "web" in r.stderr
    assert json.loads(warden("--cluster", etcd.urls, "ls", "--json").stdout) == []

    good = tmp_path / "fleet.toml"
    good.write_text(FLEET.format(image="/srv/warden/images/minimal.img"))
    r = warden("--cluster", etcd.urls, "apply", str(good))
    assert r.returncode == 0, r.stderr
    rows = json.loads(warden("--cluster", etcd.urls, "ls", "--json").stdout)
    assert [(m["name"], m["state"], m["owner"], m["host"]) for m in rows] == [
        ("web", "unplaced", "alice", None)
    ]
    assert json.loads(warden("--cluster", etcd.urls, "hosts", "--json").stdout) == []

    r = warden("--cluster", etcd.urls, "move", "web", "h9")
    assert r.returncode == 2 and "no alive host named 'h9'" in r.stderr
    r = warden("--cluster", etcd.urls, "move", "nope", "h9")
    assert r.returncode == 2 and "no machine named 'nope'" in r.stderr
    r = warden("--cluster", etcd.urls, "drain", "Bad Host")
    assert r.returncode == 2 and "host name 'Bad Host'" in r.stderr


def test_unreachable_etcd_is_named() -> None:
    r = warden("--cluster", "http://127.0.0.1:9", "ls")
    assert r.returncode == 2 and "etcd at http://127.0.0.1:9" in r.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["--cluster", "ftp://x"], "expected http://HOST:PORT"),
        (["--cluster", "http://127.0.0.1:9"], "needs --host-name"),
        (["--cluster", "http://127.0.0.1:9", "--host-name", "A_B"], "host name 'A_B'"),
        (
            ["--cluster", "http://127.0.0.1:9", "--host-name", "a", "--lease-ttl", "1"],
            "expected 2 to 3600",
        ),
        (["--cluster", "http://127.0.0.1:9", "--host-name", "a", "--label", "x"], "KEY=VALUE"),
    ],
)
def test_daemon_cluster_options_are_checked_first(
    args: list[str], says: str, tmp_path: Path
) -> None:
    r = warden("--home", str(tmp_path), "daemon", *args)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert not (tmp_path / "run" / "daemon.lock").exists()  # no daemon started

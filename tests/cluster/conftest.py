"""A cluster on this one machine: a 3-member etcd on loopback ports and three warden hosts,
each its own daemon and WARDEN_HOME, sharing one storage directory (docs/formats/cluster.md)."""

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProc
from tests.support.etcd import EtcdCluster
from warden import proc
from warden.host import cgroup
from warden.paths import layout

TTL = 6  # a short lease keeps the tests short; the default is 10


class Cluster:
    def __init__(self, etcd: EtcdCluster, storage: Path, image: Path, ttl: int = TTL):
        self.ttl = ttl
        self.etcd = etcd
        self.storage = storage
        self.image = image
        self.hosts: dict[str, DaemonProc] = {}

    def add_host(self, name: str, *extra: str) -> DaemonProc:
        home = layout(Path(tempfile.mkdtemp(prefix=f"wc-{name}-", dir="/tmp")))
        d = DaemonProc(
            home,
            args=("--cluster", self.etcd.urls, "--host-name", name, "--lease-ttl", str(self.ttl),
                  *extra),
        )  # fmt: skip
        self.hosts[name] = d.start()
        return d

    def cli(self, *args: str, check: bool = True) -> Any:
        any_host = next(iter(self.hosts.values()))
        r = any_host.cli("--cluster", self.etcd.urls, *args, check=check)
        return r

    def ls(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in json.loads(self.cli("ls", "--json").stdout)}

    def host_list(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in json.loads(self.cli("hosts", "--json").stdout)}

    def fleet(self, machines: str) -> str:
        return (
            f'[cluster]\nstorage = "{self.storage}"\n\n[[owner]]\nname = "alice"\n'
            'keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUta2V5LW5vdC1yZWFsLWFsaWNl'
            'LTAwMDAw alice@t"]\n\n' + machines
        )

    def machine(self, name: str, **extra: str) -> str:
        more = "".join(f'{k} = "{v}"\n' for k, v in extra.items())
        return (
            f'[[machine]]\nname = "{name}"\nowner = "alice"\nmemory = "64M"\n'
            f'image = "{self.image}"\n{more}\n'
        )

    def apply(self, text: str) -> None:
        path = self.storage / "fleet.toml"
        path.write_text(text)
        self.cli("apply", str(path))

    def wait(
        self, what: str, cond: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 90
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            rows = self.ls()
            if cond(rows):
                return rows
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout}s; ls: {rows}\n{self.logs(events=True)}")

    def logs(self, events: bool = False) -> str:
        """Every host's last log lines (and last events): what a failed assertion needs."""
        return "\n".join(
            f"--- {n}\n{d.log_text()[-3000:]}" + (f"\n{self._events(d)}" if events else "")
            for n, d in self.hosts.items()
        )

    def run_alone(self, name: str) -> tuple[DaemonProc, tuple[int, int], dict[str, Any]]:
        """Apply a fleet of `name` alone and wait until it runs: its host, its kernel process
        (guest_kernel), and the rows of `ls`."""
        self.apply(self.fleet(self.machine(name)))
        rows = self.wait(f"{name} running", lambda r: running_on(r, name) is not None)
        d = self.hosts[rows[name]["host"]]
        kernel = guest_kernel(d, name)
        assert kernel is not None, f"no kernel process of {name} on {rows[name]['host']}"
        return d, kernel, rows

    @staticmethod
    def _events(d: DaemonProc) -> str:
        """The host's last events (what a failed wait needs to be understood)."""
        try:
            r = d.cli("events", check=False, timeout=20)
        except Exception as e:  # a frozen or dead daemon
            return f"(no events: {e})"
        return "\n".join(r.stdout.splitlines()[-40:])

    def close(self) -> None:
        problems = []
        for d in self.hosts.values():
            d.close()
            try:
                d.assert_clean()
            except AssertionError as e:
                problems.append(str(e))
            shutil.rmtree(d.layout.home, ignore_errors=True)
        self.etcd.close()
        shutil.rmtree(self.storage, ignore_errors=True)
        assert not problems, problems


def guest_pids(host: DaemonProc, name: str) -> list[int]:
    """The processes of guest `name` on `host` (its cgroup), whatever the daemon says."""
    path = cgroup.detect().unified / f"warden-{host.layout.instance}" / name / "cgroup.procs"
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def guest_kernel(host: DaemonProc, name: str) -> tuple[int, int] | None:
    """Which UML kernel runs guest `name` on `host`: (pid, start time) of the one process in
    its cgroup whose parent is outside it. The other processes come and go with the guest's
    own programs (UML gives every guest address space a host process), so a guest that keeps
    running keeps this pair, not its whole process list."""
    pids = guest_pids(host, name)
    for pid in pids:
        fields = proc.stat_fields(pid)  # one read: the parent and the start time together
        if fields is not None and int(fields[proc.PPID]) not in pids:
            return pid, int(fields[proc.START_TIME])
    return None


class Watch:
    """Samples, every 20 ms in a thread, on which hosts guest `name` has processes; counts the
    samples in which it had them on two hosts at once."""

    def __init__(self, c: Cluster, name: str):
        self.c, self.name = c, name
        self.twice = 0
        self.samples = 0
        self.seen: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: tuple[str, ...] | None = None
        while not self._stop.is_set():
            on = tuple(h for h, d in self.c.hosts.items() if guest_pids(d, self.name))
            self.samples += 1
            if len(on) > 1:
                self.twice += 1
            if on != last:
                self.seen.append((time.monotonic(), on))
                last = on
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def kinds_after(host: DaemonProc, machine: str, kind: str) -> list[str]:
    """The kinds of `machine`'s events on `host` after its last `kind` event."""
    events = json.loads(host.cli("events", machine, "--json").stdout)
    kinds = [e["kind"] for e in events]
    if kind not in kinds:
        return []
    last = len(kinds) - 1 - kinds[::-1].index(kind)
    return kinds[last + 1 :]


def running_on(rows: dict[str, dict[str, Any]], name: str) -> str | None:
    r = rows.get(name)
    return r["host"] if r is not None and r["state"] == "running" else None


@pytest.fixture
def cluster_ttl() -> int:
    """The hosts' lease TTL (a test parametrizes it to change it)."""
    return TTL


@pytest.fixture
def cluster(minimal_image: Path, cluster_ttl: int) -> Iterator[Cluster]:
    etcd = EtcdCluster().start_all()
    storage = Path(tempfile.mkdtemp(prefix="wstore-", dir="/tmp"))
    c = Cluster(etcd, storage, minimal_image, cluster_ttl)
    try:
        for name in ("h1", "h2", "h3"):
            c.add_host(name, "--budget", "256M")
        yield c
    finally:
        c.close()

"""A real etcd cluster (Debian's etcd-server, 3.4) of three members on loopback ports, for a
test: own data directories in a temporary folder, every member killed at close()."""

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class EtcdCluster:
    def __init__(self, members: int = 3):
        if shutil.which("etcd") is None:
            pytest.fail("etcd is not installed (scripts/setup.sh installs etcd-server)")
        # Data on tmpfs: etcd fsyncs its log on every write, and a disk busy with other
        # helpers' image builds can stall an fsync for seconds; a stall longer than the
        # fence deadline would fence healthy hosts in the middle of a test.
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else "/tmp"
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=shm))
        ports = free_ports(2 * members)
        self.names = [f"m{i}" for i in range(members)]
        self.client = {n: ports[2 * i] for i, n in enumerate(self.names)}
        self.peer = {n: ports[2 * i + 1] for i, n in enumerate(self.names)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.initial = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        self.urls = ",".join(f"http://127.0.0.1:{self.client[n]}" for n in self.names)

    def start(self, name: str) -> None:
        c, p = self.client[name], self.peer[name]
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(
            [
                "etcd",
                "--name", name,
                "--data-dir", str(self.dir / name),
                "--listen-client-urls", f"http://127.0.0.1:{c}",
                "--advertise-client-urls", f"http://127.0.0.1:{c}",
                "--listen-peer-urls", f"http://127.0.0.1:{p}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                "--initial-cluster", self.initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.dir.name,
                # A shared 2-core machine: a slow heartbeat keeps elections rare.
                "--heartbeat-interval", "200",
                "--election-timeout", "2000",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def start_all(self, timeout: float = 30.0) -> "EtcdCluster":
        for n in self.names:
            self.start(n)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"etcd did not elect a leader in {timeout}s: {self.logs()}")

    def healthy(self) -> bool:
        """Every running member answers /health with a leader (quorum)."""
        for n in self.names:
            if n not in self.procs:
                continue
            try:
                url = f"http://127.0.0.1:{self.client[n]}/health"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if b'"true"' not in r.read():
                        return False
            except OSError:
                return False
        return True

    def _status(self, name: str) -> dict[str, Any]:
        """etcd's maintenance status of member `name` (its id, and the leader it follows)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.client[name]}/v3/maintenance/status", data=b"{}"
        )
        with urllib.request.urlopen(req, timeout=2) as r:
            out: dict[str, Any] = json.loads(r.read())
        return out

    def leader(self) -> str | None:
        """The member the running members agree leads, or None (no quorum, or an election)."""
        status = {n: self._status(n) for n in self.procs}
        ids = {st["header"]["member_id"]: n for n, st in status.items()}
        leaders = {st.get("leader") for st in status.values()}
        return ids.get(leaders.pop()) if len(leaders) == 1 else None

    def make_leader(self, name: str, timeout: float = 30.0) -> None:
        """Move the leadership to `name` (etcd's MoveLeader, asked of the current leader), so
        a test that kills `name` kills the leader: the worst case, an election, every time."""
        target = self._status(name)["header"]["member_id"]
        deadline = time.monotonic() + timeout
        while (now := self.leader()) != name:
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd: {name} did not become leader in {timeout}s")
            if now is not None:
                body = json.dumps({"targetID": target}).encode()
                url = f"http://127.0.0.1:{self.client[now]}/v3/maintenance/transfer-leadership"
                try:
                    urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10)
                except OSError:
                    pass  # an election in between: ask again
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.dir.glob("*.log")
        )

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        shutil.rmtree(self.dir, ignore_errors=True)

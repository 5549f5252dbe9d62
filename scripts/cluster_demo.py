"""`make cluster-demo`: a three-host warden cluster on this machine, for a newcomer to watch.

Starts a 3-member etcd on loopback ports, three daemons (h1, h2 with --label disk=ssd, h3),
each with its own WARDEN_HOME under /tmp/warden-cluster-demo, applies examples/cluster.toml,
and prints `warden --cluster URL hosts` and `ls` every few seconds. In another terminal, try
what it prints (move, drain, kill -9 of a daemon). Ctrl-C stops the daemons (each stops its
guests cleanly) and etcd.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.etcd import EtcdCluster
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path("/tmp/warden-cluster-demo")
WARDEN = [sys.executable, "-m", "warden"]
HOSTS = {"h1": [], "h2": ["--label", "disk=ssd"], "h3": []}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def wait_alive(urls: str, n: int, timeout: float = 60) -> None:
    """Until `n` hosts are alive: a fleet applied earlier is placed on the first hosts only
    (placement does not rebalance later, as Nomad's does not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run([*WARDEN, "--cluster", urls, "hosts", "--json"], capture_output=True)
        if r.returncode == 0 and sum(h["alive"] for h in json.loads(r.stdout)) >= n:
            return
        time.sleep(0.5)
    raise SystemExit(f"the hosts did not join within {timeout}s: see {DEMO}/hN/daemon.log")


def main() -> int:
    # Ctrl-C, or a SIGTERM, stops it all (also when started from a script, where SIGINT is
    # ignored by background jobs).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    shutil.rmtree(DEMO, ignore_errors=True)
    storage = DEMO / "storage"
    storage.mkdir(parents=True)
    print("building (or taking from the cache) the minimal image ...", flush=True)
    image = minimal.build(ImageStore(layout(DEMO / "images-home")), NullProgress())
    etcd = EtcdCluster().start_all()
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, extra in HOSTS.items():
            home = DEMO / name
            home.mkdir()
            log = open(home / "daemon.log", "ab")  # noqa: SIM115 - the child owns it
            daemons[name] = subprocess.Popen(
                [*WARDEN, "daemon", "--cluster", etcd.urls, "--host-name", name, *extra],
                env={**os.environ, "WARDEN_HOME": str(home)},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
        fleet = DEMO / "cluster.toml"
        text = (ROOT / "examples" / "cluster.toml").read_text()
        fleet.write_text(text.replace("STORAGE", str(storage)).replace("IMAGE", str(image)))
        wait_alive(etcd.urls, len(HOSTS))
        subprocess.run([*WARDEN, "--cluster", etcd.urls, "apply", str(fleet)], check=True)
        cli = f"warden --cluster {etcd.urls}"
        print(
            f"\ntry, in another terminal:\n  {cli} hosts\n  {cli} move web1 h3\n"
            f"  {cli} drain h1\n  kill -9 {daemons['h1'].pid}   (h1's daemon: failover)\n"
            f"logs: {DEMO}/hN/daemon.log; Ctrl-C stops it all\n",
            flush=True,
        )
        while True:
            subprocess.run([*WARDEN, "--cluster", etcd.urls, "hosts"])
            subprocess.run([*WARDEN, "--cluster", etcd.urls, "ls"])
            print(flush=True)
            time.sleep(5)
    except KeyboardInterrupt:
        pass
    finally:
        for d in daemons.values():
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
        for d in daemons.values():
            try:
                d.wait(60)
            except subprocess.TimeoutExpired:
                d.kill()
        etcd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

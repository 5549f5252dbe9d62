"""Issue 19, real guests: a storm of minimal guests started at once boots a few at a time (the
host's CPUs x 2), the ones waiting say so in `warden ls`, and every one comes up."""

import json
import time

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from warden.host import cgroup, cpuset

pytestmark = pytest.mark.guest
SLOTS = round(2 * len(cpuset.host_cpus(cgroup.detect())))
N = SLOTS + 4


def test_a_storm_of_guests_is_admitted_a_few_at_a_time(daemon: DaemonProc) -> None:
    names = [f"q{i}" for i in range(N)]
    daemon.apply(FLEET_HEAD + "".join(machine_toml(n) for n in names))
    seen_waiting: set[str] = set()
    most_booting = 0
    deadline = time.monotonic() + 300
    while True:
        ls = daemon.ls()
        states = {n: ls[n]["state"] for n in names}
        for n in names:
            if ls[n].get("waiting"):
                assert ls[n]["state"] == "starting" and ls[n]["pid"] is None, ls[n]
                assert ls[n]["waiting"].startswith("boot queued: "), ls[n]
                seen_waiting.add(n)
        launched = [n for n in names if states[n] == "starting" and ls[n]["pid"] is not None]
        most_booting = max(most_booting, len(launched))
        if all(s == "running" for s in states.values()):
            break
        assert not {"crashed", "stopped"} & set(states.values()), ls
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    assert len(seen_waiting) >= 1
    assert most_booting <= SLOTS
    events = json.loads(daemon.cli("events", "--json").stdout)
    kinds = [e["kind"] for e in events]
    assert kinds.count("queued") >= N - SLOTS
    assert kinds.count("queued") == kinds.count("admitted")
    assert "boot-timeout" not in kinds
    assert all(daemon.ls()[n]["waiting"] is None for n in names)

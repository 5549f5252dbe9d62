"""Bad memory settings in a fleet file: refused with the file, field and value, and nothing
changes (the running guest, the balancer's budget and the applied fleet stay as they were)."""

import json

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from warden.api.client import ApiClient

pytestmark = pytest.mark.guest
MIB = 1 << 20

GOOD = FLEET_HEAD + '[host]\nmemory_budget = "1G"\n' + machine_toml("b1", memory="256M")


@pytest.mark.parametrize(
    "bad, words",
    [
        (
            FLEET_HEAD + machine_toml("b1", memory="256M", memory_min="300M"),
            ["machine 'b1'", "memory_min (300M) is above memory (256M)"],
        ),
        (
            FLEET_HEAD + machine_toml("b1", memory="256M", memory_weight=0),
            ["memory_weight = 0", "from 1 to 10000"],
        ),
        (
            FLEET_HEAD + machine_toml("b1", memory="256M", memory_weight=-5),
            ["memory_weight = -5", "from 1 to 10000"],
        ),
        (
            FLEET_HEAD
            + '[host]\nmemory_budget = "400M"\n'
            + machine_toml("b1", memory="256M", memory_min="256M")
            + machine_toml("b2", memory="256M", memory_min="200M"),
            ["[host]", "memory_budget = 400M is below the sum", "(456M)"],
        ),
        (
            FLEET_HEAD + "[host]\nbalance_watch = 20\n" + machine_toml("b1", memory="256M"),
            ["balance_watch = 20", "from 0 to 10"],
        ),
        (
            FLEET_HEAD + '[host]\nmemory_budget = "lots"\n' + machine_toml("b1"),
            ["memory_budget = 'lots'", "a size such as"],
        ),
    ],
)
def test_bad_memory_settings_change_nothing(daemon: DaemonProc, bad: str, words: list[str]) -> None:
    daemon.apply(GOOD)
    assert daemon.ls()["b1"]["state"] in ("starting", "running")
    before = json.loads(daemon.cli("top", "--json").stdout)["budget"]
    path = daemon.layout.home / "bad.toml"
    path.write_text(bad)
    r = daemon.cli("apply", str(path), check=False)
    assert r.returncode == 2, r
    for w in words:
        assert w in r.stderr, r.stderr
    assert str(path) in r.stderr
    assert json.loads(daemon.cli("top", "--json").stdout)["budget"] == before == 1 << 30
    applied = ApiClient(daemon.layout).get("/fleet")
    assert applied["text"] == GOOD  # the daemon still holds the good file
    assert daemon.ls()["b1"]["state"] in ("starting", "running")

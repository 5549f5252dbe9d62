"""The fault campaign, short size (issue 18, section 3): each test injects one kind of fault into
a running fleet of real guests and holds warden to the issue's goals: no guest lost, no guest in
a state the daemon does not know, no corrupted disk, no log that fails verification, no printed
byte missing from the logs without a record saying so.

The harness is tests/support/faults.py; `make bench` runs the same code at full size
(benchmarks/faults.py). `FAULTS=full` runs the full size here too; `FAULTS_SEED` replays a kill
campaign's kill points. What each fault does and what it found: docs/decisions/
2026-12-07-fault-campaign.md.
"""

from pathlib import Path

import pytest

from tests.support import faults
from tests.support.daemon import DaemonProc

pytestmark = [pytest.mark.guest, pytest.mark.slow]


def _judge(tally: faults.Tally) -> None:
    print(tally.report())
    assert sum(tally.faults.values()) > 0, "no fault was injected"
    assert tally.failures() == [], "\n".join(tally.failures())
    assert tally.debris == [], "\n".join(tally.debris)


@pytest.mark.timeout(900)
def test_kill_9_during_start_stop_apply_snapshot_and_merge(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    size = faults.size_from_env()
    tally = faults.kill_campaign(daemon, size, tmp_path)
    assert tally.faults.total() == size.kill_points
    _judge(tally)


@pytest.mark.timeout(600)
def test_a_full_warden_home_stops_nothing_and_corrupts_nothing(
    minimal_image: Path, tmp_path: Path
) -> None:
    with faults.small_home(64) as lay:
        d = DaemonProc(lay).start()
        try:
            # The image stays in the shared cache: a copy would take the small home's room.
            tally = faults.home_fills_up(
                d, faults.size_from_env(), tmp_path, image=str(minimal_image)
            )
        finally:
            print("---- daemon log ----\n" + d.log_text()[-4000:])
            d.close()
    _judge(tally)


@pytest.mark.timeout(600)
def test_a_stopped_daemon_costs_no_guest_no_byte_and_no_panic(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    # The short size stops the daemon 10 s, not the issue's 30: p1's FIFO (1 MiB) is full
    # after ~3 s at its rate, and every timer of the daemon (balancer 0.1 s and 1 s, mconsole
    # timeouts of seconds, the logs' 10 s drop notes) is overdue by then; 30 s adds none.
    tally = faults.daemon_stopped(daemon, faults.size_from_env(), tmp_path)
    _judge(tally)


@pytest.mark.timeout(900)
def test_a_flooding_guest_leaves_a_quiet_one_consoled_balanced_and_logged(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    size = faults.size_from_env()
    tally = faults.channel_flood(daemon, size, tmp_path)
    # Over its bounds (faults.DB_GROWTH_BOUND, RSS_GROWTH_BOUND) is a failure; the echo p99
    # during the flood is a speed claim, held to its goal by benchmarks/faults.py.
    _judge(tally)

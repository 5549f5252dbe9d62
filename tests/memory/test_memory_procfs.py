"""Parsers of the guest's /proc files (captured from a real guest), the ledger and the
balancer's files. No guest is booted here."""

import json
import os
from pathlib import Path

import pytest

from warden.errors import WardenError
from warden.memory import ledger as L
from warden.memory import procfs, record

DATA = Path(__file__).parents[1] / "data" / "memory"
MIB = 1 << 20


def meminfo() -> procfs.Meminfo:
    return procfs.parse_meminfo((DATA / "meminfo.txt").read_text())


def test_meminfo_from_a_real_guest() -> None:
    m = meminfo()
    assert m.total == 242676 * 1024
    assert m.free == 226844 * 1024
    assert m.available == 225132 * 1024
    assert m.cached == 1904 * 1024
    assert m.active_file == 1808 * 1024 and m.inactive_file == 204 * 1024
    assert m.sunreclaim == 9376 * 1024 and m.percpu == 32 * 1024
    # What no counter accounts for: a few MiB on a fresh guest (the estimator's baseline).
    assert 1 * MIB < m.unaccounted < 8 * MIB


def test_vmstat_and_zoneinfo_from_a_real_guest() -> None:
    v = procfs.parse_vmstat((DATA / "vmstat.txt").read_text())
    assert v.oom_kill == 0 and v.pgmajfault > 0 and v.allocstall == 0
    w = procfs.parse_zoneinfo((DATA / "zoneinfo.txt").read_text())
    assert (w.min, w.low, w.high) == (492 * 4096, 615 * 4096, 738 * 4096)


@pytest.mark.parametrize(
    "text",
    [
        "",  # the empty reply of a `config` taken for this one (a late datagram)
        "\n",
        "MemTotal: 1000 kB\nMemFree: 10 kB\n",  # truncated
        (DATA / "vmstat.txt").read_text(),  # another file
    ],
)
def test_meminfo_refuses_what_is_not_meminfo(text: str) -> None:
    with pytest.raises(procfs.ProcfsError):
        procfs.parse_meminfo(text)


def test_meminfo_bad_number() -> None:
    text = (DATA / "meminfo.txt").read_text().replace("226844 kB", "22x844 kB")
    with pytest.raises(procfs.ProcfsError, match="MemFree"):
        procfs.parse_meminfo(text)


def test_vmstat_and_zoneinfo_refuse_other_files() -> None:
    with pytest.raises(procfs.ProcfsError):
        procfs.parse_vmstat((DATA / "meminfo.txt").read_text())
    with pytest.raises(procfs.ProcfsError):
        procfs.parse_vmstat("pgmajfault 1\n")
    with pytest.raises(procfs.ProcfsError):
        procfs.parse_zoneinfo((DATA / "vmstat.txt").read_text())


def test_default_watermarks_close_to_the_kernel() -> None:
    # The real guest above: 242676 kB managed, min 492 pages (1968 KiB).
    w = procfs.default_watermarks(242676 * 1024)
    assert abs(w.min - 492 * 4096) < 200 * 1024
    assert w.min < w.low < w.high


# ---- the estimator and the ledger -----------------------------------------------------------
def test_estimate_plugged_follows_unaccounted_memory() -> None:
    m = meminfo()
    base = m.unaccounted
    size = 256 * MIB
    assert L.estimate_plugged(m, size, base) == size
    # 64 MiB taken: MemFree falls by that and nothing else counts it.
    taken = procfs.Meminfo(**{**m.__dict__, "free": m.free - 64 * MIB})
    assert L.estimate_plugged(taken, size, base) == size - 64 * MIB


def test_ledger_actions_and_budget() -> None:
    led = L.Ledger(budget=600 * MIB)
    led.boot("a", 256 * MIB)
    led.up("a", 256 * MIB)
    led.boot("b", 256 * MIB)
    with pytest.raises(L.LedgerError, match="booting needs 256M.*88M"):
        led.boot("c", 256 * MIB)
    e = led.begin_unplug("a", 200 * MIB)
    assert (e.lo, e.hi) == (56 * MIB, 256 * MIB)  # in flight: the budget still counts 256
    assert led.total() == 512 * MIB
    led.end_unplug("a", 200 * MIB, ok=True)
    assert e.certain and e.hi == 56 * MIB  # a 56, b 256: 288M free
    led.boot("c", 256 * MIB)  # a 56, b 256, c 256: 32M free
    with pytest.raises(L.LedgerError, match=r"pass the budget \(32M free\)"):
        led.begin_plug("a", 40 * MIB)
    with pytest.raises(L.LedgerError, match="boot size"):
        led.begin_plug("b", 4 * MIB)
    with pytest.raises(L.LedgerError, match="whole pages"):
        led.begin_plug("a", 1000)
    led.holds["d"] = 30 * MIB
    with pytest.raises(L.LedgerError, match="budget"):
        led.begin_plug("a", 8 * MIB)  # 32M free, 30M promised to a boot
    led.begin_plug("a", 8 * MIB, use_holds=True)  # an emergency may use it
    led.end_plug("a", 8 * MIB, ok=True)
    assert led.total() == 576 * MIB


def test_ledger_failure_is_uncertain_until_reconciled() -> None:
    led = L.Ledger(budget=1 << 30)
    led.boot("a", 256 * MIB)
    led.up("a", 256 * MIB)
    led.begin_unplug("a", 64 * MIB)
    led.end_unplug("a", 64 * MIB, ok=False, why="timeout")
    e = led.entries["a"]
    assert not e.certain and (e.lo, e.hi) == (192 * MIB, 256 * MIB)
    assert led.total() == 256 * MIB  # the budget assumes the worst
    with pytest.raises(L.LedgerError, match="uncertain"):
        led.begin_unplug("a", 4 * MIB)
    with pytest.raises(L.LedgerError, match="uncertain"):
        led.begin_plug("a", 4 * MIB)
    # The late unplug did happen: the estimate (2 MiB off, as measured) settles on lo.
    assert led.reconcile("a", 194 * MIB) == (192 * MIB, 256 * MIB, 192 * MIB)
    assert e.certain and e.hi == 192 * MIB


def test_reconcile_partial_and_drift() -> None:
    led = L.Ledger(budget=1 << 30)
    led.boot("a", 256 * MIB)
    led.up("a", 256 * MIB)
    led.begin_unplug("a", 128 * MIB)
    led.end_unplug("a", 128 * MIB, ok=False)
    # Half of it happened (an allocation failure stops the kernel's loop early).
    _, _, now = led.reconcile("a", 190 * MIB + 12345)
    assert now == 191 * MIB  # rounded up: never under
    # Someone ran `config mem=-32M` by hand: a certain entry drifts, the estimate wins.
    led.reconcile("a", 159 * MIB)
    assert led.entries["a"].hi == 159 * MIB


def test_adopt_without_record_counts_in_full() -> None:
    led = L.Ledger(budget=1 << 30)
    e = led.adopt("a", 256 * MIB, None, None)
    assert not e.certain and e.hi == 256 * MIB
    e2 = led.adopt("b", 256 * MIB, 100 * MIB, 100 * MIB)
    assert e2.certain and led.total() == 356 * MIB


# ---- files ---------------------------------------------------------------------------------
def test_state_roundtrip_and_damage(tmp_path: Path) -> None:
    led = L.Ledger(budget=1 << 30)
    led.boot("a", 256 * MIB)
    e = led.up("a", 256 * MIB)
    e.pid, e.pid_start, e.baseline, e.pin = 42, 777, 3 * MIB, 200 * MIB
    led.begin_unplug("a", 56 * MIB)
    path = tmp_path / "state.json"
    record.save_state(path, led.entries)
    got = record.load_state(path)["a"]
    assert (got.pid, got.pid_start, got.max, got.lo, got.hi) == (
        42,
        777,
        256 * MIB,
        200 * MIB,
        256 * MIB,
    )
    assert got.baseline == 3 * MIB and got.pin == 200 * MIB
    path.write_text("{not json")
    with pytest.raises(WardenError, match="state.json: unreadable"):
        record.load_state(path)
    path.write_text(json.dumps({"v": 9, "guests": {}}))
    with pytest.raises(WardenError, match="version 9"):
        record.load_state(path)
    path.write_text(json.dumps({"v": 1, "guests": {"a": {"max": "x"}}}))
    with pytest.raises(WardenError, match="'a' has a malformed record"):
        record.load_state(path)
    assert record.load_state(tmp_path / "none.json") == {}


def test_log_splits_prunes_and_skips_a_cut_line(tmp_path: Path) -> None:
    w = record.LogWriter(tmp_path, {"budget": 1}, file_cap=2000, total_cap=5000)
    for i in range(200):
        w.write("tick", i=i, pad="x" * 40)
    w.close()
    files = record.log_files(tmp_path)
    assert len(files) >= 2
    assert sum(p.stat().st_size for p in files) <= 5000 + 2000
    recs = list(record.read_log(tmp_path))
    ticks = [r["i"] for r in recs if r["k"] == "tick"]
    assert ticks == sorted(ticks) and ticks[-1] == 199  # newest kept, in order
    assert ticks[0] > 0  # oldest pruned
    assert all(r["k"] == "run" for r in recs if "i" not in r)
    # A crash mid-line: the reader skips the cut line and keeps the rest.
    with files[-1].open("a") as fh:
        fh.write('{"k":"tick","t":99')
    assert len(list(record.read_log(tmp_path))) == len(recs)
    os.sync()

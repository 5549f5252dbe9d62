"""The OOM hook as the host reads it (warden.memory.hook) and books it (the ledger's credit):
replies parsed or refused with a clear error, and the budget kept while credit turns into
plugged memory behind the host's back."""

import pytest

from warden.memory.hook import (
    Counters,
    HookError,
    hint_waiting,
    parse_counters,
    parse_done,
)
from warden.memory.ledger import Ledger, LedgerError

MIB = 1 << 20
KIB = 1024

# What kernel/0004's `oomplug` answers (copied from a guest).
REPLY = (
    "credit=16384 unplugged=252852 plugged=196608 events=6 waits=1 timeouts=0 denials=0 "
    "waiting=0 last_us=307 max_us=329 sum_us=1860"
)


def counters(**kw: int) -> Counters:
    base = dict(
        credit=0,
        unplugged=0,
        plugged=0,
        events=0,
        waits=0,
        timeouts=0,
        denials=0,
        waiting=False,
        last_us=0,
        max_us=0,
        sum_us=0,
    )
    base.update(kw)
    return Counters(**base)  # type: ignore[arg-type]


def test_counters_parse_in_bytes() -> None:
    c = parse_counters(REPLY)
    assert c.credit == 16384 * KIB and c.unplugged == 252852 * KIB and c.plugged == 192 * MIB
    assert (c.events, c.waits, c.waiting, c.max_us) == (6, 1, False, 329)
    assert c.mean_us == pytest.approx(1860 / 6)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "lacks credit"),
        (REPLY.replace("credit=16384 ", ""), "lacks credit"),
        (REPLY.replace("=16384", "=-5"), "'credit=-5' is not KEY=NUMBER"),
        (REPLY + " x" * 300, "more than one mconsole datagram"),
        ("Unknown command", "'Unknown' is not KEY=NUMBER"),
        (REPLY.replace("=16384", "=9" * 30), "is not KEY=NUMBER"),
    ],
)
def test_bad_counters_are_refused_by_name(text: str, words: str) -> None:
    with pytest.raises(HookError, match="oomplug reply") as e:
        parse_counters(text)
    assert words in str(e.value)


def test_config_replies() -> None:
    assert parse_done("") is None  # a stock kernel's success
    d = parse_done("done=22520 unplugged=275372")
    assert d is not None and d.done == 22520 * KIB and d.unplugged == 275372 * KIB
    with pytest.raises(HookError, match="lacks done="):
        parse_done("unplugged=4")
    with pytest.raises(HookError, match="not KEY=NUMBER"):
        parse_done("done=lots unplugged=4")


def test_a_hint_is_read_for_one_bit_only() -> None:
    assert not hint_waiting(b"oom credit=0 unplugged=4 plugged=8 waiting=0\0")
    assert hint_waiting(b"oom credit=0 unplugged=4 plugged=8 waiting=1\0")
    assert hint_waiting(b"\xff\x1b[2J garbage")  # unparsable: look sooner, nothing more


def test_credit_is_in_the_budget_and_a_plug_back_leaves_the_sum_alone() -> None:
    led = Ledger(budget=700 * MIB)
    led.boot("a", 320 * MIB)
    e = led.up("a", 320 * MIB)
    e.lo = e.hi = 100 * MIB
    e.hook = True
    led.begin_grant("a", 32 * MIB)
    assert led.total() == 132 * MIB and led.credit() == 32 * MIB
    # The guest plugs 20 MiB back by itself; the host hears of it later, from the counters.
    back = led.apply("a", counters(credit=12 * MIB, plugged=20 * MIB, unplugged=200 * MIB))
    assert back == 20 * MIB
    assert (e.hi, e.lo, e.credit) == (120 * MIB, 120 * MIB, 12 * MIB)
    assert led.total() == 132 * MIB  # what the budget counted all along
    # The same counters again book nothing twice.
    assert led.apply("a", counters(credit=12 * MIB, plugged=20 * MIB, unplugged=200 * MIB)) == 0
    assert e.hi == 120 * MIB


def test_grants_never_pass_the_budget_or_the_boot_size() -> None:
    led = Ledger(budget=400 * MIB)
    led.boot("a", 320 * MIB)
    e = led.up("a", 320 * MIB)
    e.lo = e.hi = 300 * MIB
    with pytest.raises(LedgerError, match="would pass its boot size 320M"):
        led.begin_grant("a", 32 * MIB)
    e.lo = e.hi = 200 * MIB
    led.boot("b", 160 * MIB)
    led.up("b", 160 * MIB)
    with pytest.raises(LedgerError, match="would pass the budget"):
        led.begin_grant("a", 44 * MIB)  # 200 + 160 + 44 > 400
    led.begin_grant("a", 40 * MIB)
    assert led.total() == led.budget


def test_settle_takes_the_kernels_count_and_an_unplug_books_what_it_did() -> None:
    led = Ledger(budget=1 << 30)
    led.boot("a", 320 * MIB)
    e = led.up("a", 320 * MIB)
    assert led.settle("a", counters(unplugged=220 * MIB)) == (320 * MIB, 100 * MIB)
    assert (e.lo, e.hi) == (100 * MIB, 100 * MIB)
    assert led.settle("a", counters(unplugged=220 * MIB)) is None
    # A kernel with the hook stops at its low watermark and says how much it took.
    led.begin_unplug("a", 64 * MIB)
    led.end_unplug("a", 64 * MIB, True, done=22 * MIB)
    assert (e.lo, e.hi) == (78 * MIB, 78 * MIB)
    led.begin_plug("a", 300 * MIB - 78 * MIB)
    led.end_plug("a", 300 * MIB - 78 * MIB, True, done=200 * MIB)  # the list ran dry
    assert (e.lo, e.hi) == (278 * MIB, 278 * MIB)


def test_a_reboot_forgets_the_credit() -> None:
    led = Ledger(budget=1 << 30)
    led.boot("a", 320 * MIB)
    e = led.up("a", 320 * MIB)
    e.lo = e.hi = 100 * MIB
    led.begin_grant("a", 8 * MIB)
    e.selfplugged = 4 * MIB
    led.up("a", 320 * MIB)  # UML re-execs: everything plugged, a new kernel's counters
    assert (e.hi, e.credit, e.selfplugged) == (320 * MIB, 0, 0)

"""Issue 5, must-show with real guests: logs across a daemon kill -9, tampering caught by
`warden logs verify`, and a guest flooding its console past its log quota."""

import gzip
import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_guest_lifecycle import run_on, wait_state
from tests.support.daemon import DaemonProc

pytestmark = pytest.mark.guest


def dump(d: DaemonProc, name: str, *args: str) -> list[dict[str, object]]:
    out = d.cli("logs", "dump", name, "--json", *args).stdout
    return [json.loads(x) for x in out.splitlines()]


def verify(d: DaemonProc, *args: str) -> tuple[int, list[dict[str, object]]]:
    r = d.cli("logs", "verify", "--json", *args, check=False)
    return r.returncode, json.loads(r.stdout)


def test_log_survives_daemon_kill9_and_tampering_is_caught(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("k1"))
    wait_state(daemon, "k1", "running")
    assert run_on(daemon, "k1", "echo $((11*11))-before").strip() == "121-before"
    daemon.kill9()
    time.sleep(0.5)
    daemon.start()
    wait_state(daemon, "k1", "running")
    assert run_on(daemon, "k1", "echo $((12*12))-after").strip() == "144-after"
    rc, files = verify(daemon, "k1")
    assert rc == 0 and [f["status"] for f in files] == ["live"], files
    daemon.cli("stop", "k1")
    recs = dump(daemon, "k1")
    kinds = [r["type"] for r in recs]
    # The new daemon continued the same file: recovered (its own note), then Line's reattach.
    i = kinds.index("recovered")
    assert kinds[i + 1] == "reattach" and kinds[-1] == "end"
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    typed = "".join(str(r["data"]) for r in recs if r["type"] == "input")
    assert typed.index("$((11*11))-before") < typed.index("$((12*12))-after")
    rc, files = verify(daemon, "k1")
    assert rc == 0 and [f["status"] for f in files] == ["complete"]
    path = Path(str(files[0]["path"]))
    assert path.name == "con0-1.wlog.gz"
    # Flip one byte inside the record holding the second command's keystrokes.
    raw = bytearray(gzip.decompress(path.read_bytes()))
    target = next(r for r in recs if r["type"] == "input" and "12*12" in str(r["data"]))
    pos = raw.index(b"12*12")
    raw[pos] ^= 0x01
    path.write_bytes(gzip.compress(bytes(raw)))
    rc, files = verify(daemon, "k1")
    assert rc == 1 and files[0]["status"] == "tampered"
    assert files[0]["bad_record"] == target["seq"]
    text = daemon.cli("logs", "verify", "k1", check=False).stdout
    assert f"FAIL k1 con0 boot 1: tampered: record {target['seq']} " in text


def test_console_flood_hits_the_quota_guest_and_daemon_unharmed(daemon: DaemonProc) -> None:
    quota = 1 << 20
    daemon.apply('[logs]\nquota = "1M"\n' + FLEET_HEAD + machine_toml("f1"))
    wait_state(daemon, "f1", "running")
    flood = 8 << 20
    daemon.console(
        "f1", f"(yes 0123456789abcdef-flood | head -c {flood}; echo FLOOD-''DONE) &\n", timeout=0.5
    )
    deadline = time.monotonic() + 180
    worst = 0.0
    while True:
        t0 = time.monotonic()
        info = daemon.ls()["f1"]  # the daemon answers while the guest floods
        worst = max(worst, time.monotonic() - t0)
        assert info["state"] == "running"
        recs = dump(daemon, "f1")
        if any("FLOOD-DONE" in str(r.get("data", "")) for r in recs) or any(
            r["type"] == "dropped" for r in recs
        ):
            drops = [r for r in recs if r["type"] == "dropped"]
            if drops:
                break
        assert time.monotonic() < deadline, "no dropped record while flooding"
        time.sleep(0.5)
    print(f"slowest `warden ls` during the flood: {worst:.3f}s")
    assert drops[0]["state"] == "dropping" and drops[0]["quota"] == quota
    # The flood runs to its end (clients still see every byte: only recording stopped).
    t0 = time.monotonic()
    while True:
        seen = daemon.cli("console", "f1", "--timeout", "0.5", "--scrollback", "4096", input="")
        if "FLOOD-DONE" in seen.stdout:
            break
        assert time.monotonic() - t0 < 300, "the flood never ended"
        time.sleep(1)
    print(f"flood of {flood >> 20} MiB printed in about {time.monotonic() - t0 + 2:.1f}s")
    assert run_on(daemon, "f1", "echo $((40+2))-alive").strip() == "42-alive"
    logs_dir = daemon.layout.machine("f1") / "logs"
    used = sum(p.stat().st_size for p in logs_dir.glob("con0-*"))
    assert used <= quota + 4096, used
    daemon.cli("stop", "f1")
    rc, files = verify(daemon, "f1")
    assert rc == 0 and files[0]["status"] == "complete"
    end = dump(daemon, "f1")[-1]
    assert end["type"] == "end" and int(str(end["dropped_bytes"])) >= flood - quota


def test_the_guest_sees_nothing_of_logging(daemon: DaemonProc) -> None:
    """What a guest can observe is the same with session logs on and off."""
    probe = "cat /proc/cmdline; cat /proc/mounts; ls -la /dev /tmp /run; ls /proc/self/fd"
    seen = {}
    for enabled in ("false", "true"):
        daemon.apply(
            f"[logs]\nenabled = {enabled}\n" + FLEET_HEAD + machine_toml("v1", autostart=False)
        )
        daemon.cli("start", "v1")
        wait_state(daemon, "v1", "running")
        seen[enabled] = re.sub(r"\d\d:\d\d", "HH:MM", run_on(daemon, "v1", probe))
        daemon.cli("kill", "v1")
    assert seen["true"] == seen["false"]
    logs_dir = daemon.layout.machine("v1") / "logs"
    assert [p.name for p in sorted(logs_dir.glob("con0-*"))] == ["con0-2.wlog.gz"]

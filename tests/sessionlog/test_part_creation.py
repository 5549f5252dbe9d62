"""A daemon killed (kill -9) while it opens a session-log part leaves nothing `warden logs
verify` calls tampered or missing: CI once found a 0-byte part, created but not yet written,
that verify called tampered (its header was damaged)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.logwriter import finish
from warden.sessionlog import store as logstore
from warden.sessionlog import verify
from warden.sessionlog.writer import GuestUsage, SessionLog, SessionLogWriter

KEY = bytes(range(32))

# The child opens one part and dies by SIGKILL at the step named by argv[2]; the hook sits on
# os.link, which links the written part under its name.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from warden.sessionlog.writer import GuestUsage, SessionLog, SessionLogWriter

    home, when = Path(sys.argv[1]), sys.argv[2]
    real_link = os.link

    def link(src, dst, **kw):
        if when == "before-link":
            os.kill(os.getpid(), signal.SIGKILL)
        real_link(src, dst, **kw)
        if when == "after-link":
            os.kill(os.getpid(), signal.SIGKILL)

    os.link = link
    w = SessionLogWriter(bytes(range(32)), home)
    usage = GuestUsage(home / "m1" / "logs", 1 << 30)
    lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
    lg.output(b"never written")
    time.sleep(30)  # killed long before
    """
)


def _die_at(home: Path, when: str) -> None:
    r = subprocess.run([sys.executable, "-c", CHILD, str(home), when], timeout=60)
    assert r.returncode == -9, f"the child was not killed at {when}: exit {r.returncode}"


def _verdicts(home: Path) -> list[tuple[str, str]]:
    d = home / "m1" / "logs"
    rows = verify.verify_dir("m1", d, False, KEY, lambda ref: False)
    return [(c.label, c.verdict.status + ": " + c.verdict.message) for c in rows]


def test_killed_before_the_link_leaves_no_part(tmp_path: Path) -> None:
    _die_at(tmp_path, "before-link")
    d = tmp_path / "m1" / "logs"
    assert [p.name for p in d.iterdir() if logstore.parse_name(p)] == []
    assert _verdicts(tmp_path) == []


@pytest.mark.parametrize("manifest_there", [True, False])
def test_killed_between_link_and_manifest_is_a_cut_part_not_a_planted_one(
    tmp_path: Path, manifest_there: bool
) -> None:
    d = tmp_path / "m1" / "logs"
    if manifest_there:  # an earlier boot, whole and noted in the manifest
        w = SessionLogWriter(KEY, tmp_path)
        usage = GuestUsage(d, 1 << 30)
        lg = SessionLog(w, "m1", "con0", 0, False, lambda: usage)
        lg.output(b"boot 0")
        lg.close()
        finish(w)
        assert (d / "manifest.jsonl").exists()
    _die_at(tmp_path, "after-link")
    part = d / "con0-1.wlog"
    assert part.stat().st_size > 0
    rows = dict(_verdicts(tmp_path))
    status = rows["m1 con0 boot 1"]
    assert status.startswith("cut: ") and "opening" in status, status

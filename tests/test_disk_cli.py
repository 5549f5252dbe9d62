"""`warden disk ...` as a user types it: output, --json, and exit status 2 with a message that
names the problem (never a traceback) for bad input."""

import json
import os
import struct
from pathlib import Path

import pytest

from tests.test_disk_ops import RUNS, make_base, make_cow, sha
from warden.cli.main import main
from warden.uml import cow


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["disk", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_inspect_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.img"
    make_base(base, 4 << 20)
    c = tmp_path / "new.cow"
    code, out, _ = run(capsys, "create", str(c), "--backing", str(base))
    assert code == 0 and f"created {c}" in out
    code, out, _ = run(capsys, "inspect", str(c), "--json")
    info = json.loads(out)
    assert code == 0 and info["version"] == 3 and info["sectors_written"] == 0
    assert info["backing"]["ok"] is True and info["in_use_by"] is None
    make_cow(c, base, RUNS)
    code, out, _ = run(capsys, "inspect", str(c))
    assert code == 0 and "written        271 of 8192 sectors (3.31%" in out
    out_img = tmp_path / "merged.img"
    code, out, _ = run(capsys, "merge", str(c), str(out_img))
    assert code == 0 and f"merged {c} into {out_img}" in out
    code, _, err = run(capsys, "merge", str(c), str(out_img))
    assert code == 2 and "merged.img already exists" in err and "Traceback" not in err


def test_merge_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.img"
    make_base(base, 1 << 20)
    c = tmp_path / "d.cow"
    make_cow(c, base, [(0, 8)])
    code, _, err = run(capsys, "merge", str(c))
    assert code == 2 and "needs OUT" in err
    code, _, err = run(capsys, "merge", str(c), str(tmp_path / "o.img"), "--in-place")
    assert code == 2 and "not both" in err
    before = sha(base)
    code, out, err = run(capsys, "merge", str(c), "--in-place")
    assert code == 0 and sha(base) != before and "no longer" in err


def test_backing_problems_name_both_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.img"
    make_base(base, 1 << 20)
    c = tmp_path / "d.cow"
    make_cow(c, base, [(0, 8)])
    recorded = cow.read_header(c)[0].mtime
    os.utime(base, (recorded + 60, recorded + 60))
    code, _, err = run(capsys, "merge", str(c), str(tmp_path / "o.img"))
    assert code == 2 and f"mtime is {recorded + 60}" in err and f"records {recorded}" in err
    code, out, _ = run(capsys, "inspect", str(c))
    assert code == 0 and "MISMATCH" in out
    code, out, _ = run(capsys, "rebase", str(c), "--backing", str(base))
    assert code == 2
    code, out, _ = run(capsys, "rebase", str(c), "--backing", str(base), "--ignore-mtime")
    assert code == 0 and "rebased" in out
    base.rename(tmp_path / "gone.img")
    code, _, err = run(capsys, "merge", str(c), str(tmp_path / "o.img"))
    assert code == 2 and "does not exist" in err and "warden disk rebase" in err
    assert not (tmp_path / "o.img").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:100], "truncated header"),
        (lambda b: b"XXXX" + b[4:], "not a UML COW file: magic 58585858"),
        (lambda b: b[:4] + struct.pack(">I", 9) + b[8:], "unknown COW version 9"),
        (lambda b: b[:8300], "bitmap is shorter than the size implies"),
    ],
)
def test_corrupted_cow_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, message: str
) -> None:
    base = tmp_path / "base.img"
    make_base(base, 1 << 20)
    c = tmp_path / "d.cow"
    make_cow(c, base, [(0, 8)])
    assert callable(damage)
    c.write_bytes(damage(c.read_bytes()))
    for argv in (["inspect", str(c)], ["merge", str(c), str(tmp_path / "o.img")]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err and str(c) in err and "Traceback" not in err
    assert not (tmp_path / "o.img").exists()


def test_snapshot_listing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.img"
    make_base(base, 1 << 20)
    c = tmp_path / "d.cow"
    make_cow(c, base, [(0, 8)])
    code, out, _ = run(capsys, "snapshots", "--cow", str(c))
    assert code == 0 and "no snapshots" in out
    code, out, _ = run(capsys, "snapshots", "--cow", str(c), "--json")
    assert json.loads(out) == []
    code, _, err = run(capsys, "restore", "nope", "--cow", str(c))
    assert code == 2 and "no snapshot 'nope'" in err
    code, _, err = run(capsys, "snapshot", "s", "--cow", str(c), "--mconsole", "/nonexistent")
    assert code == 2 and "no guest answers" in err
    assert not (tmp_path / "snapshots" / "s").exists()

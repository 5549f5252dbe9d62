"""What every benchmark shares: where to find the project, and how to report a result.

Each benchmark script measures one claim against the anchor it names, in the same run, prints
what it measured as it goes, and ends with exactly one machine-readable line:

    RESULT {"claim": ..., "ours": ..., "anchor": ..., "ratio": ..., "goal": ..., "unit": ...}

`make bench` (benchmarks/run_all.py) runs every script and prints those lines as one table.
"""

import json
import os
import shutil
import statistics
from pathlib import Path

# tests.support (rawboot, DaemonProc) is importable through the venv's warden-repository.pth,
# which scripts/setup.sh writes.
ROOT = Path(__file__).resolve().parent.parent


def result(
    claim: str,
    ours: float,
    anchor: float | None,
    goal: str,
    unit: str,
    anchor_name: str = "",
    ratio: float | None = None,
    ok: bool | None = None,
) -> None:
    """Print the RESULT line. `ratio` defaults to ours/anchor; `ok` says if the goal is met."""
    if ratio is None and anchor:
        ratio = ours / anchor
    print(
        "RESULT "
        + json.dumps(
            {
                "claim": claim,
                "ours": ours,
                "anchor": anchor,
                "anchor_name": anchor_name,
                "ratio": ratio,
                "goal": goal,
                "unit": unit,
                "ok": ok,
            }
        ),
        flush=True,
    )


def kernel_spec(env: str) -> str:
    """A benchmark fleet's `kernel`: warden's (the patch series' cached build, named by its
    path: a home's link may be moved by another build; built first if missing), or Debian's
    when the environment variable `env` is "stock"."""
    if os.environ.get(env, "warden") == "stock":
        return "stock"
    from tests.support.honeypot import shared_layout
    from warden.kernelbuild import build as kbuild

    return str(kbuild.cached(shared_layout(), "honeypot") / "linux")


def drop_home(home: Path, keep_env: str, keep: bool = False) -> None:
    """Delete a run's scratch WARDEN_HOME, or keep it (and say where) when `keep` or the
    environment variable `keep_env` is set: its daemon log and memory log, to read after."""
    if keep or os.environ.get(keep_env):
        print(f"kept {home} (its daemon log and memory log)", flush=True)
    else:
        shutil.rmtree(home, ignore_errors=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs)

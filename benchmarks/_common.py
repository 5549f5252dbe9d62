"""What every benchmark shares: where to find the project, and how to report a result.

Each benchmark script measures one claim against the anchor it names, in the same run, prints
what it measured as it goes, and ends with exactly one machine-readable line:

    RESULT {"claim": ..., "ours": ..., "anchor": ..., "ratio": ..., "goal": ..., "unit": ...}

`make bench` (benchmarks/run_all.py) runs every script and prints those lines as one table.
"""

import json
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


def median(xs: list[float]) -> float:
    return statistics.median(xs)

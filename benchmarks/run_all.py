"""Run every benchmark script and end with one table: claim, ours, anchor, ratio, goal."""

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith(("_", "run_all")))
    only = set(sys.argv[1:])
    rows = []
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"== {script.name}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=HERE.parent
        )
        print(proc.stdout, end="")
        found = False
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                rows.append(json.loads(line[len("RESULT ") :]))
                found = True
        if proc.returncode != 0 or not found:
            rows.append(
                {
                    "claim": f"{script.stem}: FAILED (exit {proc.returncode})",
                    "ours": None,
                    "anchor": None,
                    "ratio": None,
                    "goal": "",
                    "unit": "",
                    "ok": False,
                }
            )
        print(f"== {script.name}: {time.monotonic() - t0:.0f}s", flush=True)

    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    header = ("claim", "ours", "anchor", "ratio", "goal", "met")
    table = [header] + [
        (
            r["claim"],
            f"{fmt(r['ours'])} {r.get('unit', '')}".strip(),
            f"{fmt(r['anchor'])} ({r.get('anchor_name', '')})" if r.get("anchor") else "-",
            fmt(r.get("ratio")),
            r.get("goal", ""),
            {True: "yes", False: "NO", None: "-"}[r.get("ok")],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print()
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    return 0 if all(r.get("ok") is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

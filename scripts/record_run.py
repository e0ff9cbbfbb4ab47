#!/usr/bin/env python3
"""Record a GPU verification pass: copy its bench JSON (and plots) from the pass's output folder into
benchmarks/results/, with any `aigc-kernels tune` table it wrote, then regenerate README's results table
and the shipped dispatch tables.

    python scripts/record_run.py OUT           # OUT: the folder gpu_run.sh wrote ($OUT)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    runs = sorted((out / "results").glob("*.json"))
    if not runs:
        print(f"record_run: no results/*.json in {out}")
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    for run in runs:
        shutil.copy2(run, RESULTS / run.name)
        plots = run.with_suffix("")
        if plots.is_dir():
            shutil.copytree(plots, RESULTS / plots.name, dirs_exist_ok=True)
        print(f"recorded {run.name}")
    for script in ("results_table.py", "gen_dispatch_tables.py"):
        subprocess.run([sys.executable, str(ROOT / "scripts" / script)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

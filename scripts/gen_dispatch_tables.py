#!/usr/bin/env python3
"""Generate the dispatch tables shipped in the package (aigc_kernels/dispatch_tables/sm_XY.json) from the
recorded `aigc-kernels tune` runs in benchmarks/results/ (files with "schema" and "entries", e.g.
benchmarks/results/tune-h200-2026-12-02.json). Never typed by hand.

For each GPU arch, the entries of every recorded run on that arch are merged, the newest run winning a
key measured twice (runs are ordered by their file name, which starts with the date). With no recorded
run for an arch there is no shipped table, and "auto" runs PyTorch's own calls there until
`aigc-kernels tune` measures on the user's GPU.

    python scripts/gen_dispatch_tables.py          # (re)write the tables
    python scripts/gen_dispatch_tables.py --check  # exit 1 if the shipped tables differ from what it generates
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "aigc_kernels" / "dispatch_tables"


def recorded_tables(results: Path = RESULTS) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "entries" in data and "schema" in data and "capability" in data:
            if tuple(data["capability"]) == (0, 0):  # a CPU run of tune (a dry run): no GPU arch to ship for
                continue
            out.append((path, data))
    return out


def generate(results: Path = RESULTS) -> dict[str, str]:
    """{file name: JSON text} of the tables to ship."""
    by_arch: dict[tuple[int, int], list[tuple[Path, dict]]] = {}
    for path, data in recorded_tables(results):
        by_arch.setdefault(tuple(data["capability"]), []).append((path, data))
    out = {}
    for cap, runs in sorted(by_arch.items()):
        entries: dict[str, dict] = {}
        for _, data in runs:  # oldest first: the newest run wins a key measured twice
            for e in data["entries"]:
                entries[e["key"]] = e
        newest = runs[-1][1]
        table = {"schema": newest["schema"], "device": newest["device"], "capability": list(cap),
                 "versions": newest["versions"], "generated_from": [p.name for p, _ in runs],
                 "entries": [entries[k] for k in sorted(entries)]}
        out[f"sm_{cap[0]}{cap[1]}.json"] = json.dumps(table, indent=1) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped tables are out of date")
    args = parser.parse_args(argv)
    wanted = generate()
    have = {p.name: p.read_text() for p in OUT.glob("sm_*.json")} if OUT.exists() else {}
    if args.check:
        if wanted != have:
            print(f"dispatch tables out of date: shipped {sorted(have)}, generated {sorted(wanted)}; "
                  "run python scripts/gen_dispatch_tables.py")
            return 1
        print(f"dispatch tables up to date ({len(have)} shipped)")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name in set(have) - set(wanted):
        (OUT / name).unlink()
    for name, text in wanted.items():
        (OUT / name).write_text(text)
    print(f"wrote {sorted(wanted) or 'no tables (no recorded tune run)'} to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

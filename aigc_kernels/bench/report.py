"""Presenting bench results: the rich table, CSV, plots, and the comparison of two runs."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from rich.table import Table

from .runner import SCHEMA_VERSION

FIELDS = ("op", "provider", "mode", "dtype", "shape", "label", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps",
          "pct_of_ceiling", "speedup_vs_eager", "peak_mem_mb", "tokens_per_s", "correct", "max_err", "err_bound",
          "status", "note")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(report: dict, show_skipped: bool = False) -> Table:
    env = report["env"]
    ceil = env.get("ceilings") or {}
    title = (f"aigc-kernels bench on {env['device']} (torch {env['torch']}, triton {env['triton']}, "
             f"CUDA {env['cuda']}, commit {env['commit']})")
    if ceil:
        title += f"\nceilings: copy {ceil['hbm_copy_gbps']} GB/s, bf16 GEMM {ceil['bf16_gemm_tflops']} TFLOP/s"
    t = Table(title=title)
    for col in ("op", "case", "dtype", "mode", "provider", "median ms (p20/p80)", "TFLOP/s", "GB/s", "% ceiling",
                "vs eager", "peak MB", "tok/s", "check"):
        t.add_column(col, justify="right" if col[0].isupper() or col[0] in "%mvp" else "left")
    for r in report["results"]:
        if r["status"] == "skipped" and not show_skipped:
            continue
        timing = "-" if r["median_ms"] is None else \
            f"{r['median_ms']:.4g} ({r['p20_ms']:.4g}/{r['p80_ms']:.4g})"
        check = {True: "[green]ok[/]", False: "[red]WRONG[/]", None: "-"}[r["correct"]]
        if r["status"] in ("error", "skipped"):
            check = f"[yellow]{r['status']}[/]: {r['note'][:60]}"
        t.add_row(r["op"], r["label"], r["dtype"], r["mode"], r["provider"], timing, _fmt(r["tflops"], ".1f"),
                  _fmt(r["gbps"], ".0f"), _fmt(r["pct_of_ceiling"], ".0f"), _fmt(r["speedup_vs_eager"], ".2f"),
                  _fmt(r["peak_mem_mb"], ".0f"), _fmt(r.get("tokens_per_s"), ".4g"), check)
    return t


def write_json(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=1) + "\n")


def write_csv(report: dict, path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in report["results"]:
            w.writerow(r)


def load(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "results" not in data or "env" not in data:
        raise ValueError(f"{path}: not an aigc-kernels bench JSON (expected keys 'env' and 'results')")
    if data.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema {data['schema']} is newer than this aigc-kernels understands "
                         f"({SCHEMA_VERSION}); upgrade aigc-kernels")
    return data


def plots(report: dict, folder: str | Path) -> list[Path]:
    """One PNG per op: throughput vs case, one line per provider (fwd; other modes dashed/dotted),
    with the measured ceiling drawn when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ceil = report["env"].get("ceilings") or {}
    by_op = defaultdict(list)
    for r in report["results"]:
        if r["median_ms"] is not None:
            by_op[r["op"]].append(r)
    written = []
    for op, rows in by_op.items():
        metric = "tflops" if any(r["tflops"] is not None for r in rows) else \
            ("gbps" if any(r["gbps"] is not None for r in rows) else "tokens_per_s")
        labels = list(dict.fromkeys(f"{r['label']} {r['dtype']}" for r in rows))
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 3), 4.5))
        styles = {"fwd": "-", "bwd": "--", "fwd+bwd": ":"}
        series = defaultdict(dict)
        for r in rows:
            series[(r["provider"], r["mode"])][f"{r['label']} {r['dtype']}"] = r[metric]
        for (provider, mode), pts in sorted(series.items()):
            xs = [i for i, lab in enumerate(labels) if lab in pts]
            ax.plot(xs, [pts[labels[i]] for i in xs], styles.get(mode, "-"), marker="o", label=f"{provider} {mode}")
        limit = ceil.get("bf16_gemm_tflops" if metric == "tflops" else "hbm_copy_gbps")
        if limit:
            ax.axhline(limit, color="k", linewidth=1, label="measured ceiling")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel({"tflops": "TFLOP/s", "gbps": "GB/s", "tokens_per_s": "tokens/s"}[metric])
        ax.set_title(f"{op} on {report['env']['device']}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = folder / f"{op}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# What "auto" is held against: the backends it may choose, and PyTorch's own call made directly.
AUTO_RIVALS = ("cuda", "triton", "torch", "eager")


def auto_gaps(report: dict, threshold_pct: float) -> list[dict]:
    """Cases where the "auto" provider is more than ``threshold_pct`` % slower than the fastest of
    AUTO_RIVALS in the same run (each timed and correct): {op, label, dtype, mode, auto_ms, best, best_ms, ratio}."""
    cases: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in report["results"]:
        if r["median_ms"] is not None and r.get("correct") is not False:
            cases[(r["op"], r["label"], r["dtype"], r["mode"])][r["provider"]] = r
    gaps = []
    for (op, label, dtype, mode), provs in cases.items():
        auto = provs.get("auto")
        rivals = {p: r for p, r in provs.items() if p in AUTO_RIVALS}
        if auto is None or not rivals:
            continue
        best = min(rivals, key=lambda p: rivals[p]["median_ms"])
        ratio = auto["median_ms"] / rivals[best]["median_ms"]
        if ratio > 1 + threshold_pct / 100:
            gaps.append(dict(op=op, label=label, dtype=dtype, mode=mode, auto_ms=auto["median_ms"], best=best,
                             best_ms=rivals[best]["median_ms"], ratio=round(ratio, 3)))
    return gaps


def _key(r: dict) -> tuple:
    return (r["op"], r["provider"], r["mode"], r["dtype"], r["shape"])


def compare(base: dict, new: dict, threshold_pct: float = 5.0) -> tuple[Table, list[dict]]:
    """Per-case time ratios new/base for cases timed in both; regressions are slower by more than
    threshold_pct percent (or newly wrong). Returns (table, regressions)."""
    old = {_key(r): r for r in base["results"] if r["median_ms"] is not None}
    t = Table(title=f"compare: {base['env'].get('commit')} ({base['env'].get('device')}) -> "
                    f"{new['env'].get('commit')} ({new['env'].get('device')}), threshold {threshold_pct}%")
    for col in ("op", "provider", "mode", "dtype", "shape", "base ms", "new ms", "new/base", "verdict"):
        t.add_column(col, justify="right" if "ms" in col or "/" in col else "left")
    regressions = []
    for r in new["results"]:
        b = old.get(_key(r))
        if b is None or r["median_ms"] is None:
            continue
        ratio = r["median_ms"] / b["median_ms"]
        slower = ratio > 1 + threshold_pct / 100
        wrong = r.get("correct") is False and b.get("correct") is not False
        faster = ratio < 1 - threshold_pct / 100
        verdict = "[red]REGRESSION[/]" if slower else ("[green]faster[/]" if faster else "same")
        if wrong:
            verdict = "[red]WRONG[/]"
        if slower or wrong:
            regressions.append({**r, "base_ms": b["median_ms"], "ratio": ratio})
        t.add_row(r["op"], r["provider"], r["mode"], r["dtype"], r["shape"], f"{b['median_ms']:.4g}",
                  f"{r['median_ms']:.4g}", f"{ratio:.3f}", verdict)
    if base["env"].get("device") != new["env"].get("device"):
        t.caption = "warning: the two runs are on different devices; ratios compare machines, not kernels"
    return t, regressions

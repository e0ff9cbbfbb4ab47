"""Presenting bench results: the rich table, CSV, plots, and the comparison of two runs."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from rich.table import Table

from .. import _files
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
    _files.write_json(path, report)  # atomically: in the GPU pass this replaces the run's checkpoint file


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


_METRICS = {"tflops": "TFLOP/s", "gbps": "GB/s", "tokens_per_s": "tokens/s", "median_ms": "ms per call"}
_CEILING = {"tflops": "bf16_gemm_tflops", "gbps": "hbm_copy_gbps"}


def _metric(rows: list[dict]) -> str:
    for m in ("tflops", "gbps", "tokens_per_s"):
        if any(r.get(m) is not None for r in rows):
            return m
    return "median_ms"


def _colors(providers: list[str]) -> dict[str, tuple]:
    """One color per provider, the same in every figure (ours first, PyTorch's own call in grey)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    fixed = {"eager": (0.45, 0.45, 0.45, 1.0), "hf_sdpa": (0.45, 0.45, 0.45, 1.0)}
    out, i = {}, 0
    for p in providers:
        if p in fixed:
            out[p] = fixed[p]
        else:
            out[p] = cmap(i % 20)
            i += 1
    return out


def _title(report: dict, what: str) -> str:
    env = report["env"]
    return (f"{what}\n{env.get('device')} - torch {env.get('torch')}, triton {env.get('triton')}, "
            f"CUDA {env.get('cuda')}, commit {env.get('commit')}")


def plots(report: dict, folder: str | Path) -> list[Path]:
    """Per op and mode, grouped bars -- one group per shape, one bar per provider -- of the achieved
    TFLOP/s, GB/s or tokens/s (ms per call for the dispatch op), the measured ceiling as a line, and
    each bar labelled with its % of that ceiling (or, without one, its speedup over PyTorch's own call);
    plus summary.png: each provider's speedup over PyTorch's own call, geometric mean per op."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ceil = report["env"].get("ceilings") or {}
    timed = [r for r in report["results"] if r.get("median_ms") is not None]
    colors = _colors(list(dict.fromkeys(r["provider"] for r in timed)))
    by = defaultdict(list)
    for r in timed:
        by[(r["op"], r["mode"])].append(r)
    written = []
    for (op, mode), rows in by.items():
        metric = _metric(rows)
        groups = list(dict.fromkeys(r["label"] for r in rows))
        provs = list(dict.fromkeys(r["provider"] for r in rows))
        dtypes = sorted({r["dtype"] for r in rows})
        fig, ax = plt.subplots(figsize=(max(6.5, 0.42 * len(rows) + 3.0), 4.8))
        limit = ceil.get(_CEILING.get(metric, ""))
        cells = {(r["label"], r["provider"]): r for r in rows}
        labelled = set()
        for i, g in enumerate(groups):  # only the providers that ran this shape, side by side
            present = [p for p in provs if (g, p) in cells]
            width = 0.8 / len(present)
            for j, prov in enumerate(present):
                r = cells[(g, prov)]
                value = r[metric] if metric != "median_ms" else r["median_ms"] * 1e3
                bar = ax.bar(i + (j - (len(present) - 1) / 2) * width, value, width, color=colors[prov],
                             label=None if prov in labelled else prov)[0]
                labelled.add(prov)
                if limit and r.get("pct_of_ceiling") is not None:
                    text = f"{r['pct_of_ceiling']:.0f}%"
                elif r.get("overhead_us") is not None:  # the dispatch op: the cost over PyTorch's own call
                    text = f"{r['overhead_us']:+.1f} us"
                elif r.get("speedup_vs_eager") is not None:
                    text = f"{r['speedup_vs_eager']:.2f}x"
                else:
                    continue
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                            fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
        if limit:
            ax.axhline(limit, color="k", linestyle="--", linewidth=1, label=f"measured ceiling ({limit:g})")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=7)
        unit = _METRICS[metric] if metric != "median_ms" else "us per call"
        ax.set_ylabel(unit)
        label_kind = "% of the ceiling" if limit else "speedup over PyTorch's own call"
        ax.set_title(_title(report, f"{op} ({mode}, {', '.join(dtypes)}): {unit}; labels: {label_kind}"),
                     fontsize=8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.margins(y=0.15)
        fig.tight_layout()
        path = folder / f"{op}-{mode.replace('+', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    written += _summary_plot(report, folder, colors, plt, math)
    return written


def _summary_plot(report, folder, colors, plt, math) -> list[Path]:
    """Geometric-mean speedup over PyTorch's own call, per op (and mode) and provider."""
    speed = defaultdict(lambda: defaultdict(list))
    for r in report["results"]:
        if r.get("speedup_vs_eager") and r["provider"] not in ("eager", "hf_sdpa"):
            speed[f"{r['op']} {r['mode']}"][r["provider"]].append(r["speedup_vs_eager"])
    if not speed:
        return []
    groups = list(speed)
    n_bars = sum(len(speed[g]) for g in groups)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.42 * n_bars + 3.0), 4.8))
    labelled = set()
    for i, g in enumerate(groups):
        present = list(speed[g])
        width = 0.8 / len(present)
        for j, prov in enumerate(present):
            v = speed[g][prov]
            mean = math.exp(sum(math.log(x) for x in v) / len(v))
            bar = ax.bar(i + (j - (len(present) - 1) / 2) * width, mean, width, color=colors.get(prov),
                         label=None if prov in labelled else prov)[0]
            labelled.add(prov)
            ax.annotate(f"{mean:.2f}x", (bar.get_x() + bar.get_width() / 2, mean), ha="center", va="bottom",
                        fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.axhline(1.0, color="k", linewidth=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("speedup over PyTorch's own call\n(geometric mean over shapes)")
    ax.set_title(_title(report, "every op: speedup over PyTorch's own call (above the line = faster)"), fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.15)
    fig.tight_layout()
    path = folder / "summary.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


# What "auto" is held against: the backends it may choose, and PyTorch's own call made directly.
AUTO_RIVALS = ("cuda", "triton", "torch", "eager")


# The per-call cost "auto" may add over PyTorch's own call on the `dispatch` op's tiny inputs (issue 14's
# target). Those cases time the cost of getting to a kernel, which is most of such a call, so a ratio
# there would flag every library call; they are held to this absolute limit instead.
DISPATCH_OVERHEAD_US = 3.0


def auto_gaps(report: dict, threshold_pct: float) -> list[dict]:
    """Cases where the "auto" provider is more than ``threshold_pct`` % slower than the fastest of
    AUTO_RIVALS in the same run (each timed and correct): {op, label, dtype, mode, auto_ms, best, best_ms, ratio};
    and `dispatch` cases where auto's ``overhead_us`` over PyTorch's own call exceeds DISPATCH_OVERHEAD_US
    (those carry ``overhead_us`` too)."""
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
        if op == "dispatch":
            over = auto.get("overhead_us")
            if over is not None and over > DISPATCH_OVERHEAD_US and "eager" in provs:
                gaps.append(dict(op=op, label=label, dtype=dtype, mode=mode, auto_ms=auto["median_ms"], best="eager",
                                 best_ms=provs["eager"]["median_ms"],
                                 ratio=round(auto["median_ms"] / provs["eager"]["median_ms"], 3), overhead_us=over))
            continue
        if auto.get("speedup_vs_eager") and all(r.get("speedup_vs_eager") for r in rivals.values()):
            # each against PyTorch's own call, side by side (on CPU the median of per-round ratios, which
            # machine drift does not move): auto_ms / best_ms = best's speedup / auto's speedup
            best = max(rivals, key=lambda p: rivals[p]["speedup_vs_eager"])
            ratio = rivals[best]["speedup_vs_eager"] / auto["speedup_vs_eager"]
        else:
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

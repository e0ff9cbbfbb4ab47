"""The performance model: a bound on each attention kernel's speed at named problem sizes, ours beside FA2's
compiled here, on an H100 SXM and an H200 -- read from the compiled code, with no GPU.

**It is a bound, not a measurement.** For each kernel design it takes, from the SASS (aigc_kernels/sass.py, recorded
in benchmarks/model/sass_figures.json for ours and anchor_figures.json for FA2), what one trip of the main loop
issues per warp -- instructions, MMA FLOPs, ldmatrix, plain shared accesses, MUFU, wgmma's shared-memory operand
bytes -- plus the tile (warps, rows, keys a trip) and the bytes a trip copies into shared memory, and for our kernels
the emulator's bank-conflict ratios (benchmarks/model/emulator_figures.json). A trip of one CTA then needs, on one
SM, at least

    issue   warps x instructions / 4                       (4 schedulers, one warp instruction a clock each)
    tensor  warps x MMA FLOPs / the SM's MMA rate          (mma.sync: 2/3 of wgmma's; HGMMA: the full rate)
    smem    (warps x (4 x ldmatrix x conflict + plain ld/st + HGMMA operand bytes / 128)
             + copied bytes x store conflict / 128)        (128 bytes a clock)
    mufu    warps x MUFU x 32 / 16                         (16 results a clock)

clocks; the largest is the trip's limiter, assuming everything else overlaps perfectly. The problem's trips
(causal masks count the blocks a causal kernel visits) over 132 SMs, stretched by the last partial wave
(occupancy from registers, shared memory and threads), and the compulsory HBM bytes at the measured copy ceiling
give a time whose FLOPs/time is the bound. Real kernels stall on latency, dependencies and imbalance, so they run
below it: published FA2 forward figures sit at about half its bound here (see CALIBRATION); what judges a kernel
is its bound against its anchor's, side by side, not the absolute figure.

Not modelled: instruction latency and dependency stalls, the warp scheduler's policy, L2 behaviour, the prologue
and epilogue of each CTA (outside the main loop), causal load imbalance beyond the tail, clock throttling.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "benchmarks" / "model"

# One cited table of hardware parameters (per SM unless said otherwise).
HARDWARE = {
    "H100 SXM": dict(sms=132, clock_ghz=1.83, wgmma_flops_per_clk=4096, mma_sync_fraction=2 / 3, issue_per_clk=4,
                     smem_bytes_per_clk=128, mufu_per_clk=16, hbm_tbs=3.0, registers=65536, smem_bytes=228 * 1024,
                     threads=2048),
    "H200": dict(sms=132, clock_ghz=1.83, wgmma_flops_per_clk=4096, mma_sync_fraction=2 / 3, issue_per_clk=4,
                 smem_bytes_per_clk=128, mufu_per_clk=16, hbm_tbs=4.3, registers=65536, smem_bytes=228 * 1024,
                 threads=2048),
}
SOURCES = {
    "sms, clock, wgmma rate": "NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16 = 132 SMs x 4096 FLOP/clock x "
                              "1.83 GHz (the H200 has the same SMs and tensor peak)",
    "mma.sync rate": "FlashAttention-3 (Shah et al., 2024), section 1: mma.sync reaches about two thirds of the "
                     "Hopper tensor cores' peak; wgmma is needed for the rest",
    "issue": "NVIDIA Hopper architecture (H100 whitepaper): 4 SM sub-partitions, each a warp scheduler issuing one "
             "warp instruction per clock",
    "shared memory": "CUDA C++ Programming Guide, shared memory: 32 banks of 4 bytes, one wavefront a clock",
    "mufu": "CUDA C++ Programming Guide, arithmetic instruction throughput, compute capability 9.0: 16 results a "
            "clock per SM for exp2 / reciprocal",
    "hbm": "measured copy ceilings (../shared/GPU.md): H100 ~3.0 TB/s, H200 ~4.3 TB/s",
    "limits": "compute capability 9.0: 64K 32-bit registers, 228 KB shared memory, 2048 threads per SM",
}
# FA2's published H100 figures, d = 128, bf16 (../shared/GPU.md: forward 335-370 TFLOP/s at 8k-16k tokens,
# backward ~322): the calibration points. The band is what a bound may be over the measurement: at least 1 (a bound
# below a measured speed is wrong) and at most 2.2 (beyond, the model misses what limits FA2).
CALIBRATION = [
    {"problem": "forward bf16 d=128 L=16384 non-causal", "design": "FA2 d=128", "published_tflops": (335.0, 370.0),
     "band": (1.0, 2.2)},
    {"problem": "backward bf16 d=128 L=16384 non-causal", "design": "FA2 backward d=128",
     "published_tflops": (322.0, 322.0), "band": (1.0, 2.2)},
]


@dataclass(frozen=True)
class Design:
    """A kernel's tile and where its SASS figures are recorded."""

    label: str
    who: str  # "ours" or "FA2"
    record: str  # a kernel name in sass_figures.json, or an anchor label in anchor_figures.json
    warps: int
    rows: int  # query rows a CTA owns (for decode: rows of packed query heads it can hold)
    keys: int  # keys a main-loop trip covers
    head_dim: int
    smem_bytes: int  # per CTA
    copied_bytes: int  # bytes a trip copies into shared memory (the next K and V tiles)
    emulator_case: str | None = None  # the emulator_figures.json case whose conflict ratios apply (ours)


def _pad(d: int) -> int:
    return d + 8  # our mma.sync tiles: rows padded by 16 bytes


def designs() -> list[Design]:
    """The forward designs compared (the decode is the same kernels at one query row a head)."""
    ours = "aigc_kernels::flash::fwd_kernel<__nv_bfloat16, {d}, {w}, false>"
    return [
        Design("ours mma.sync d=64", "ours", ours.format(d=64, w="false"), 4, 128, 64, 64,
               (128 + 4 * 64) * _pad(64) * 2, 2 * 64 * 64 * 2, "forward mma.sync fp16 d=64"),
        Design("ours mma.sync d=128", "ours", ours.format(d=128, w="false"), 8, 128, 64, 128,
               (128 + 4 * 64) * _pad(128) * 2, 2 * 64 * 128 * 2, "forward mma.sync bf16 d=128 causal GQA"),
        Design("ours mma.sync d=128 paged", "ours", "aigc_kernels::flash::fwd_kernel<__nv_bfloat16, 128, false, true>",
               8, 128, 64, 128, (128 + 4 * 64) * _pad(128) * 2, 2 * 64 * 128 * 2,
               "decode split-K bf16 d=128 GQA 32/8, pages of 16"),
        Design("ours wgmma d=64", "ours", ours.format(d=64, w="true"), 8, 128, 64, 64, (128 + 4 * 64) * 64 * 2,
               2 * 64 * 64 * 2, "forward wgmma (sm_90a) fp16 d=64"),
        Design("ours wgmma d=128", "ours", ours.format(d=128, w="true"), 8, 128, 64, 128, (128 + 4 * 64) * 128 * 2,
               2 * 64 * 128 * 2, "forward wgmma (sm_90a) bf16 d=128 causal"),
        # FA2 (flash_fwd_launch_template.h, not sm8x): d64 128 x 128 tiles, d128 128 x 64, 4 warps; Q + K + V in
        # shared memory (one stage of K/V: the next tile's copy overlaps the softmax); split-KV decode 64 x 128
        Design("FA2 d=64", "FA2", "FA2 forward bf16 d=64", 4, 128, 128, 64, (128 + 2 * 128) * 64 * 2,
               2 * 128 * 64 * 2),
        Design("FA2 d=128", "FA2", "FA2 forward bf16 d=128", 4, 128, 64, 128, (128 + 2 * 64) * 128 * 2,
               2 * 64 * 128 * 2),
        Design("FA2 split-KV d=128", "FA2", "FA2 split-KV decode bf16 d=128", 4, 64, 128, 128,
               (64 + 2 * 128) * 128 * 2, 2 * 128 * 128 * 2),
        # The backward, where a CTA owns a block of keys ("rows") and a trip takes a block of query rows ("keys"):
        # ours dK/dV (64 keys; 64 / 32 query rows at d=64 / 128, copying Q and dO; flash_bwd.cuh BwdCfg) then dQ (64
        # query rows; 64 / 32 keys a trip, copying K and V); FA2 one kernel (flash_bwd_launch_template.h, not sm8x:
        # d=64 128 keys x 128 query rows, d=128 128 x 64, 8 warps, ~144 KB of shared memory), copying Q and dO.
        *[Design(f"ours dK/dV d={d}", "ours", f"aigc_kernels::flash::dkdv_kernel<__nv_bfloat16, {d}>", 4, 64, bm, d,
                 (2 * 64 + 4 * bm) * _pad(d) * 2 + 4 * bm * 4, 2 * bm * d * 2 + 2 * bm * 4,
                 f"forward + backward mma.sync {'fp16' if d == 64 else 'bf16'} d={d}")
          for d, bm in ((64, 64), (128, 32))],
        *[Design(f"ours dQ d={d}", "ours", f"aigc_kernels::flash::dq_kernel<__nv_bfloat16, {d}>", 4, 64, bn, d,
                 (2 * 64 + 4 * bn) * _pad(d) * 2, 2 * bn * d * 2,
                 f"forward + backward mma.sync {'fp16' if d == 64 else 'bf16'} d={d}")
          for d, bn in ((64, 64), (128, 32))],
        Design("FA2 backward d=64", "FA2", "FA2 backward bf16 d=64", 8, 128, 128, 64, 144 * 1024, 2 * 128 * 64 * 2),
        Design("FA2 backward d=128", "FA2", "FA2 backward bf16 d=128", 8, 128, 64, 128, 144 * 1024, 2 * 64 * 128 * 2),
    ]


@dataclass(frozen=True)
class Problem:
    label: str
    batch_heads: int  # B x H (forward) or B x Hkv (decode)
    lq: int  # query rows per (batch, kv head) CTA column: L (forward) or the packed group (decode)
    lk: int
    head_dim: int
    causal: bool
    flops: float
    hbm_bytes: float


def problems() -> list[Problem]:
    out = []
    for d in (64, 128):
        for length in (1024, 4096, 16384):
            for causal in (False, True):
                flops = 4.0 * 64 * length * length * d / (2 if causal else 1)
                out.append(Problem(f"forward bf16 d={d} L={length} {'causal' if causal else 'non-causal'}", 64,
                                   length, length, d, causal, flops, 4.0 * 64 * length * d * 2))
    for d in (64, 128):
        for length in (4096, 16384):
            for causal in (False, True):
                flops = 2.5 * 4.0 * 64 * length * length * d / (2 if causal else 1)  # 5 GEMMs to the forward's 2
                out.append(Problem(f"backward bf16 d={d} L={length} {'causal' if causal else 'non-causal'}", 64,
                                   length, length, d, causal, flops, 8.0 * 64 * length * d * 2))
    for batch in (1, 8):
        for keys in (4096, 32768):
            # one new token, 32 query heads over 8 KV heads: 4 query rows per KV head (packed)
            out.append(Problem(f"decode bf16 d=128 batch {batch} {keys // 1024}k keys GQA 32/8", batch * 8, 4, keys,
                               128, False, 4.0 * batch * 32 * keys * 128, 2.0 * batch * 8 * keys * 128 * 2))
    # Paged: the same reads through a block table. Neither bound depends on the page size (a runtime value in
    # both kernels' code); FA2's paged split-KV needs pages of 256 or more (the anchor is shown at those).
    for batch in (1, 8, 64):
        for keys in (4096, 32768):
            out.append(Problem(f"decode paged bf16 d=128 batch {batch} {keys // 1024}k keys GQA 32/8, pages of 16 or "
                               "64 (FA2: 256)", batch * 8, 4, keys, 128, False, 4.0 * batch * 32 * keys * 128,
                               2.0 * batch * 8 * keys * 128 * 2))
    return out


def _records() -> tuple[dict, dict, dict]:
    def load(name: str) -> dict:
        path = MODEL_DIR / name
        return json.loads(path.read_text()) if path.exists() else {}

    return load("sass_figures.json"), load("anchor_figures.json"), load("emulator_figures.json")


def _figures(design: Design, ours: dict, anchors: dict) -> dict | None:
    if design.who == "ours":
        row = next((k for k in ours.get("kernels", []) if k["kernel"] == design.record), None)
    else:
        row = anchors.get("anchors", {}).get(design.record)
    if row is None or row.get("main_loop") is None:
        return None
    return {"registers": row.get("registers"), **row["main_loop"]}


def _conflicts(design: Design, emulator: dict) -> tuple[float, float]:
    """(ldmatrix, cp.async store) wavefronts per ideal: the emulator's worst site for ours; FA2's swizzled layouts
    are taken as conflict-free (its source's design; the emulator does not run FA2)."""
    if design.emulator_case is None:
        return 1.0, 1.0
    case = next((c for c in emulator.get("cases", []) if c["case"] == design.emulator_case), None)
    if case is None:
        return 1.0, 1.0

    def worst(kind: str) -> float:
        rows = [s for s in case["sites"] if s["kind"].startswith(kind)]
        return max((s["measured"] / max(s["ideal"], 1) for s in rows), default=1.0)

    return worst("ldmatrix"), worst("cp.async store")


def trip_clocks(design: Design, fig: dict, hw: dict, conflicts: tuple[float, float]) -> dict[str, float]:
    """Clocks one SM needs for one CTA's main-loop trip, per resource."""
    w = design.warps
    rate = hw["wgmma_flops_per_clk"] * (1.0 if fig.get("hgmma") else hw["mma_sync_fraction"])
    ldsm_conflict, store_conflict = conflicts
    smem = (w * (4 * fig["ldsm"] * ldsm_conflict + fig["lds"] + fig["sts"]
                 + fig.get("smem_operand_bytes", 0.0) / hw["smem_bytes_per_clk"])
            + design.copied_bytes * store_conflict / hw["smem_bytes_per_clk"])
    return {"issue": w * fig["instructions"] / hw["issue_per_clk"], "tensor": w * fig["mma_flops"] / rate,
            "smem": smem, "mufu": w * fig["mufu"] * 32 / hw["mufu_per_clk"]}


def occupancy(design: Design, registers: int | None, hw: dict) -> int:
    threads = design.warps * 32
    by_threads = hw["threads"] // threads
    by_regs = hw["registers"] // (max(registers or 0, 1) * threads) if registers else by_threads
    by_smem = hw["smem_bytes"] // (design.smem_bytes + 1024)
    return max(1, min(by_threads, by_regs, by_smem))


def _trips(design: Design, prob: Problem, slots: int) -> tuple[int, int]:
    """(CTAs, main-loop trips over all of them). A decode (fewer query rows than a CTA holds) splits the keys
    across CTAs up to one wave of the GPU's CTA slots (both FA2's split-KV and our split-K do), which changes the
    CTAs, not the trips."""
    blocks = math.ceil(prob.lq / design.rows)
    ctas = prob.batch_heads * blocks
    if not prob.causal:
        trips = math.ceil(prob.lk / design.keys)
        splits = max(1, min(trips, slots // ctas)) if prob.lq < design.rows else 1
        return ctas * splits, ctas * trips
    per_column = sum(math.ceil(min(prob.lk, (i + 1) * design.rows) / design.keys) for i in range(blocks))
    return ctas, prob.batch_heads * per_column


def part(design: Design, prob: Problem, hw: dict, fig: dict, conflicts: tuple[float, float]) -> dict:
    """One kernel's share of a problem: its trip's clocks per resource, limiter, occupancy, waves, and seconds."""
    clocks = trip_clocks(design, fig, hw, conflicts)
    limiter = max(clocks, key=clocks.get)
    per_sm = occupancy(design, fig.get("registers"), hw)
    ctas, trips = _trips(design, prob, hw["sms"] * per_sm)
    waves = math.ceil(ctas / (hw["sms"] * per_sm))
    tail = ctas / (hw["sms"] * per_sm * waves)
    seconds = trips * clocks[limiter] / hw["sms"] / max(tail, 1e-9) / (hw["clock_ghz"] * 1e9)
    return {"design": design.label, "limiter": limiter, "trip_clocks": {k: round(v) for k, v in clocks.items()},
            "ctas_per_sm": per_sm, "waves": waves, "tail_efficiency": round(tail, 3), "seconds": seconds}


def bound(parts: list[dict], prob: Problem, hw: dict) -> dict:
    """A problem's bound from its kernels (run one after another) and its compulsory HBM bytes."""
    compute_s = sum(p["seconds"] for p in parts)
    hbm_s = prob.hbm_bytes / (hw["hbm_tbs"] * 1e12)
    seconds = max(compute_s, hbm_s)
    slowest = max(parts, key=lambda p: p["seconds"])
    return {"design": " + ".join(p["design"] for p in parts),
            "limiter": "hbm" if hbm_s >= compute_s else slowest["limiter"],
            "parts": [{k: (round(v * 1e6, 2) if k == "seconds" else v) for k, v in p.items()} for p in parts],
            "microseconds": round(seconds * 1e6, 2), "tflops": round(prob.flops / seconds / 1e12, 1),
            "hbm_tbs": round(prob.hbm_bytes / seconds / 1e12, 2)}


def _pairs() -> list[tuple[str, list[str], list[str]]]:
    """(problem prefix, our designs, FA2's designs) compared; a side of several kernels runs them in turn."""
    return [("forward bf16 d=64", ["ours mma.sync d=64"], ["FA2 d=64"]),
            ("forward bf16 d=64", ["ours wgmma d=64"], ["FA2 d=64"]),
            ("forward bf16 d=128", ["ours mma.sync d=128"], ["FA2 d=128"]),
            ("forward bf16 d=128", ["ours wgmma d=128"], ["FA2 d=128"]),
            ("decode bf16 d=128", ["ours mma.sync d=128"], ["FA2 split-KV d=128"]),
            ("decode paged bf16 d=128", ["ours mma.sync d=128 paged"], ["FA2 split-KV d=128"]),
            ("backward bf16 d=64", ["ours dK/dV d=64", "ours dQ d=64"], ["FA2 backward d=64"]),
            ("backward bf16 d=128", ["ours dK/dV d=128", "ours dQ d=128"], ["FA2 backward d=128"])]


def model() -> dict:
    """The model's rows for every problem, design pair and GPU, and the calibration against FA2's published
    figures. Designs whose figures are not recorded (anchors not built) are left out, and said so."""
    ours_rec, anchor_rec, emulator = _records()
    by_label = {d.label: d for d in designs()}
    rows, missing = [], set()
    for gpu, hw in HARDWARE.items():
        for prob in problems():
            for prefix, mine, theirs in _pairs():
                if not prob.label.startswith(prefix):
                    continue
                row = {"gpu": gpu, "problem": prob.label}
                for side, names in (("ours", mine), ("anchor", theirs)):
                    parts = []
                    for name in names:
                        design = by_label[name]
                        fig = _figures(design, ours_rec, anchor_rec)
                        if fig is None:
                            missing.add(design.record)
                            break
                        parts.append(part(design, prob, hw, fig, _conflicts(design, emulator)))
                    row[side] = (bound(parts, prob, hw) if len(parts) == len(names)
                                 else {"design": " + ".join(names), "missing": True})
                if "tflops" in row["ours"] and "tflops" in row["anchor"]:
                    row["ours_over_anchor"] = round(row["ours"]["tflops"] / row["anchor"]["tflops"], 3)
                rows.append(row)
    calibration = []
    for point in CALIBRATION:
        fa2 = next((r["anchor"] for r in rows if r["gpu"] == "H100 SXM" and r["problem"] == point["problem"]
                    and r["anchor"]["design"] == point["design"] and "tflops" in r["anchor"]), None)
        if fa2 is not None:
            lo, hi = point["published_tflops"]
            ratio = fa2["tflops"] / ((lo + hi) / 2)
            calibration.append({**point, "model_tflops": fa2["tflops"], "bound_over_published": round(ratio, 2),
                                "within_band": point["band"][0] <= ratio <= point["band"][1]})
    return {"note": "A bound from the compiled code, not a measurement (aigc_kernels/perf.py says what it counts).",
            "hardware": HARDWARE, "sources": SOURCES, "calibration": calibration, "missing": sorted(missing),
            "rows": rows}


def _cell(side: dict, problem: str = "") -> str:
    if side.get("missing"):
        return "(not recorded)"
    unit = f"{side['tflops']:g} TFLOP/s"
    if side["limiter"] == "hbm" or problem.startswith("decode"):
        unit += f", {side['hbm_tbs']:g} TB/s"
    return f"{unit} ({side['limiter']})"


def markdown(data: dict, gpu: str = "H100 SXM") -> str:
    """README's table: per problem and design pair, the bound of ours and of FA2, limiter, ratio."""
    lines = ["| problem (bf16, B x H = 64 / decode B x 32 heads) | ours | bound, ours (limiter) | bound, FA2 (limiter) "
             "| ours / FA2 |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        if r["gpu"] != gpu:
            continue
        ratio = f"{r['ours_over_anchor']:.2f}x" if "ours_over_anchor" in r else "-"
        lines.append(f"| {r['problem']} | {r['ours']['design'].replace('ours ', '')} | "
                     f"{_cell(r['ours'], r['problem'])} | {_cell(r['anchor'], r['problem'])} | {ratio} |")
    for cal in data.get("calibration") or []:
        lo, hi = cal["published_tflops"]
        published = f"~{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        lines += ["", f"Calibration: the model bounds {cal['design']} at {cal['model_tflops']:g} TFLOP/s on H100 SXM "
                  f"({cal['problem']}); published {published}: the bound is {cal['bound_over_published']:g}x the "
                  f"measurement, {'inside' if cal['within_band'] else 'OUTSIDE'} the stated band "
                  f"{cal['band'][0]:g}-{cal['band'][1]:g}x."]
    if data.get("missing"):
        lines += ["", "Not recorded (make anchors): " + ", ".join(data["missing"]) + "."]
    return "\n".join(lines)


def render(data: dict, console) -> None:
    from rich.table import Table

    for gpu in HARDWARE:
        table = Table(title=f"performance model, {gpu}: a bound from the compiled code, not a measurement")
        for col in ("problem", "ours", "bound, ours", "bound, FA2", "ours / FA2"):
            table.add_column(col)
        for r in data["rows"]:
            if r["gpu"] == gpu:
                ratio = f"{r['ours_over_anchor']:.2f}x" if "ours_over_anchor" in r else "-"
                table.add_row(r["problem"], r["ours"]["design"], _cell(r["ours"], r["problem"]),
                              _cell(r["anchor"], r["problem"]), ratio)
        console.print(table)
    console.print(markdown(data).split("\n\n", 1)[-1] if data.get("calibration") or data.get("missing") else "")

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
and epilogue of each CTA (outside the main loop), causal load imbalance beyond the tail, clock throttling, and the
serialization of a wgmma kernel's softmax with its HGMMAs where nothing overlaps them (the calibration point for our
Triton forward shows the cost).

Our Triton attention kernels enter through their own sm_90a compile (benchmarks/model/triton_figures.json). The
norms (norm_model) are row kernels: HBM bytes, issued instructions a row, and a DRAM round trip per row a CTA takes
in turn, for ours (CUDA, Triton) and Liger-Kernel's Triton kernels.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

try:
    from .contracts import tables
except ImportError:  # loaded by path (scripts/sass_figures.py reads the model without importing the package)
    _spec = importlib.util.spec_from_file_location("_ak_tables", Path(__file__).parent / "contracts" / "tables.py")
    tables = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(tables)

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "benchmarks" / "model"

# One cited table of hardware parameters (per SM unless said otherwise).
HARDWARE = {
    "H100 SXM": dict(sms=132, clock_ghz=1.83, wgmma_flops_per_clk=4096, mma_sync_fraction=2 / 3, issue_per_clk=4,
                     smem_bytes_per_clk=128, mufu_per_clk=16, hbm_tbs=3.0, registers=65536, smem_bytes=228 * 1024,
                     threads=2048, ctas=32, dram_latency_ns=600, gemm_tflops=798.0),
    "H200": dict(sms=132, clock_ghz=1.83, wgmma_flops_per_clk=4096, mma_sync_fraction=2 / 3, issue_per_clk=4,
                 smem_bytes_per_clk=128, mufu_per_clk=16, hbm_tbs=4.3, registers=65536, smem_bytes=228 * 1024,
                 threads=2048, ctas=32, dram_latency_ns=600, gemm_tflops=790.0),
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
    "gemm": "measured cuBLAS bf16 8192^3 ceilings (../shared/GPU.md): H100 ~798 TFLOP/s, H200 ~790: every GEMM of the "
            "FFN rows runs at this ceiling (ours, Triton's and cuBLAS's alike), so the rows compare what is around "
            "the GEMMs",
    "limits": "compute capability 9.0: 64K 32-bit registers, 228 KB shared memory, 2048 threads, 32 CTAs per SM",
    "dram latency": "an ASSUMPTION, not a measured figure: 600 ns from a load's issue to its data, within the range "
                    "published microbenchmarks of Hopper report (Luo et al., arXiv 2501.12084; Chips and Cheese, "
                    "'Nvidia's H100: Funny L2, and Tons of Bandwidth', 2023); the first GPU run calibrates it. It "
                    "only enters the norms' latency term.",
}
# FA2's published H100 figures, d = 128, bf16 (../shared/GPU.md: forward 335-370 TFLOP/s at 8k-16k tokens,
# backward ~322): the calibration points. The band is what a bound may be over the measurement: at least 1 (a bound
# below a measured speed is wrong) and at most 2.2 (beyond, the model misses what limits FA2).
CALIBRATION = [
    {"problem": "forward bf16 d=128 L=16384 non-causal", "design": "FA2 d=128", "published_tflops": (335.0, 370.0),
     "band": (1.0, 2.2)},
    {"problem": "backward bf16 d=128 L=16384 non-causal", "design": "FA2 backward d=128",
     "published_tflops": (322.0, 322.0), "band": (1.0, 2.2)},
    # Our Triton forward follows Triton's fused-attention tutorial (published ~400-480 on H100, ../shared/GPU.md):
    # the one wgmma design with a published neighbour. The model lets the softmax overlap the HGMMAs perfectly,
    # which a kernel without ping-pong or warp specialization does not do; this point shows how much that costs.
    {"problem": "forward bf16 d=128 L=16384 non-causal", "design": "ours Triton d=128", "side": "ours",
     "published_tflops": (400.0, 480.0), "band": (1.0, 2.2), "published_as": "Triton's tutorial kernel"},
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
        Design("ours mma.sync d=128", "ours", ours.format(d=128, w="false"), 4, 128, 64, 128,
               (128 + 4 * 64) * _pad(128) * 2, 2 * 64 * 128 * 2, "forward mma.sync bf16 d=128 causal GQA"),
        Design("ours mma.sync d=128 paged", "ours", "aigc_kernels::flash::fwd_kernel<__nv_bfloat16, 128, false, true>",
               4, 128, 64, 128, (128 + 4 * 64) * _pad(128) * 2, 2 * 64 * 128 * 2,
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


# Our Triton attention kernels (benchmarks/model/triton_figures.json, scripts/triton_figures.py): (design label,
# the recorded case, kernel, which of the config's blocks the CTA owns / a trip covers). The forward and dQ own BLOCK_M
# query rows and take BLOCK_N keys a trip; dK/dV owns BLOCK_N keys and takes BLOCK_M query rows a trip; the decode's
# split kernel holds BLOCK_R packed query rows. Their layouts are Triton's swizzled ones: taken as conflict-free.
TRITON_ATTENTION = [
    ("Triton d=64", "attention bf16 d=64 L=1024 fwd+bwd", "_attn_fwd_tma_kernel", "M", "N"),
    ("Triton d=128", "attention bf16 d=128 L=1024 fwd+bwd", "_attn_fwd_tma_kernel", "M", "N"),
    ("Triton dK/dV d=64", "attention bf16 d=64 L=1024 fwd+bwd", "_attn_bwd_dkdv_kernel", "N", "M"),
    ("Triton dQ d=64", "attention bf16 d=64 L=1024 fwd+bwd", "_attn_bwd_dq_kernel", "M", "N"),
    ("Triton dK/dV d=128", "attention bf16 d=128 L=1024 fwd+bwd", "_attn_bwd_dkdv_kernel", "N", "M"),
    ("Triton dQ d=128", "attention bf16 d=128 L=1024 fwd+bwd", "_attn_bwd_dq_kernel", "M", "N"),
    ("Triton decode d=128", "attention decode bf16 d=128 GQA 4 B=1 cache=16384", "_decode_split_kernel", "R", "N"),
]


def _triton_kernel(triton: dict, case: str, kernel: str) -> dict | None:
    """A kernel of triton_figures.json (``triton``) by its case and name."""
    group = next((c for c in triton.get("cases", []) if c["case"] == case), None)
    return next((k for k in group["kernels"] if k["kernel"] == kernel), None) if group else None


def triton_designs(triton: dict) -> list[Design]:
    out = []
    for label, case, kernel, own, trip in TRITON_ATTENTION:
        rec = _triton_kernel(triton, case, kernel)
        if rec is None:
            continue
        blocks = dict(part.split("=") for part in rec["config"].split() if "=" in part)
        d = 64 if "d=64" in label else 128
        rows, keys = int(blocks[own]), int(blocks[trip])
        copied = 2 * keys * d * 2  # the two tiles a trip brings in (K, V; or Q, dO), by TMA or cp.async
        out.append(Design(f"ours {label}", "Triton", f"{case}|{kernel}", rec["num_warps"], rows, keys, d,
                          rec["shared"], copied))
    return out


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


def _load(name: str) -> dict:
    """A recorded JSON of benchmarks/model/ ({} where it is not recorded)."""
    path = MODEL_DIR / name
    return json.loads(path.read_text()) if path.exists() else {}


def _records() -> tuple[dict, dict, dict, dict]:
    """The recorded figures of our CUDA kernels, FA2's, the emulator's and our Triton kernels'."""
    return (_load("sass_figures.json"), _load("anchor_figures.json"), _load("emulator_figures.json"),
            _load("triton_figures.json"))


def _figures(design: Design, ours: dict, anchors: dict, triton: dict) -> dict | None:
    if design.who == "Triton":
        row = _triton_kernel(triton, *design.record.split("|"))
    elif design.who == "ours":
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

    def of(kind: str) -> list[dict]:
        return [s for s in case["sites"] if s["kind"].startswith(kind)]

    return worst_ratio(of("ldmatrix")), worst_ratio(of("cp.async store"))


def worst_ratio(sites: list[dict]) -> float:
    """The highest measured / ideal among emulated sites (emulator_figures.json's), 1 where there are none."""
    return max((s["measured"] / max(s["ideal"], 1) for s in sites), default=1.0)


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


def resident_ctas(threads: int, registers: int | None, shared: int, hw: dict) -> int:
    """CTAs one SM holds at once: the fewest its threads, 32-bit registers (when known), shared memory (plus 1 KB a
    CTA) and CTA slots allow; 1 at least."""
    by_regs = hw["registers"] // (registers * threads) if registers else hw["ctas"]
    return max(1, min(hw["threads"] // threads, hw["ctas"], by_regs, hw["smem_bytes"] // (shared + 1024)))


def occupancy(design: Design, registers: int | None, hw: dict) -> int:
    return resident_ctas(design.warps * 32, registers, design.smem_bytes, hw)


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
            ("backward bf16 d=128", ["ours dK/dV d=128", "ours dQ d=128"], ["FA2 backward d=128"]),
            ("forward bf16 d=64", ["ours Triton d=64"], ["FA2 d=64"]),
            ("forward bf16 d=128", ["ours Triton d=128"], ["FA2 d=128"]),
            ("decode bf16 d=128", ["ours Triton decode d=128"], ["FA2 split-KV d=128"]),
            ("backward bf16 d=64", ["ours Triton dK/dV d=64", "ours Triton dQ d=64"], ["FA2 backward d=64"]),
            ("backward bf16 d=128", ["ours Triton dK/dV d=128", "ours Triton dQ d=128"], ["FA2 backward d=128"])]


def model() -> dict:
    """The model's rows for every problem, design pair and GPU, and the calibration against FA2's published
    figures. Designs whose figures are not recorded (anchors not built) are left out, and said so."""
    ours_rec, anchor_rec, emulator, triton_rec = _records()
    by_label = {d.label: d for d in [*designs(), *triton_designs(triton_rec)]}
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
                        fig = _figures(design, ours_rec, anchor_rec, triton_rec)
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
        side = point.get("side", "anchor")
        fa2 = next((r[side] for r in rows if r["gpu"] == "H100 SXM" and r["problem"] == point["problem"]
                    and r[side]["design"] == point["design"] and "tflops" in r[side]), None)
        if fa2 is not None:
            lo, hi = point["published_tflops"]
            ratio = fa2["tflops"] / ((lo + hi) / 2)
            calibration.append({**point, "model_tflops": fa2["tflops"], "bound_over_published": round(ratio, 2),
                                "within_band": point["band"][0] <= ratio <= point["band"][1]})
    return {"note": "A bound from the compiled code, not a measurement (aigc_kernels/perf.py says what it counts).",
            "hardware": HARDWARE, "sources": SOURCES, "calibration": calibration, "missing": sorted(missing),
            "rows": rows, "norm_rows": norm_model(), "ffn_rows": ffn_model()}

# ---------------------------------------------------------------------------------------------------------------
# Norms: memory-bound row kernels. Per problem (rows x columns, bf16) and direction, a design's time is at least
#   hbm      the compulsory bytes (x, residual, y, the sum s; dy, dx, ds; the per-CTA weight-gradient partials the
#            design writes and a second pass reads back) at the measured copy ceiling;
#   issue    rows x warps x instructions a row (the SASS of its loop over rows, else of the whole kernel) / 4 a clock
#            per SM, over the SMs;
#   latency  a CTA takes its rows one after another (a warp row group at a time in FA2's kernel), each at least one
#            DRAM round trip (no kernel here prefetches the next row), and at most occupancy x SMs CTAs run at once:
#            row steps a CTA x waves x the latency.
# The largest is the limiter. The instruction count is static (a kernel serving LayerNorm and RMSNorm counts both
# branches), so the issue term may overstate a little; the latency is an assumed parameter (SOURCES).
# ---------------------------------------------------------------------------------------------------------------
NORM_ROWS = 4096
NORM_WIDTHS = (1024, 4096, 8192)
NORM_DESIGNS = ("ours CUDA", "ours Triton", "Liger", "FA2")
# The anchors each of ours is held against: Liger-Kernel's Triton norms (compiled here through the audit's driver) and
# FA2's csrc/layer_norm CUDA kernel (scripts/anchors.py), LayerNorm and RMSNorm alike (a runtime flag), with residual.
NORM_ANCHORS = ("Liger", "FA2")


@dataclass(frozen=True)
class NormProblem:
    fn: str  # "LayerNorm" | "RMSNorm"
    cols: int
    direction: str  # "forward" | "backward"
    residual: bool = False
    rows: int = NORM_ROWS

    @property
    def label(self) -> str:
        extra = " + residual" if self.residual else ""
        return f"{self.fn} {self.direction} bf16 {self.rows}x{self.cols}{extra}"

    @property
    def bwd_row_bytes(self) -> int:
        """A backward row's bytes as the backward's grid rule counts them (x, dy, dx, and ds with a residual)."""
        return self.cols * 2 * (4 if self.residual else 3)

    def bytes(self, partial_rows: int = 0) -> float:
        """HBM bytes: the row traffic, the statistics, and (backward) partial weight-gradient rows written once and
        read back once by the reduction."""
        stats = (2 if self.fn == "LayerNorm" else 1) * 4 * self.rows
        row = self.rows * self.cols * 2
        if self.direction == "forward":
            tensors = 2 + (2 if self.residual else 0)  # x, y (+ residual in, sum out)
        else:
            tensors = 3 + (1 if self.residual else 0)  # x (or the sum), dy, dx (+ the sum's own gradient)
        params = (2 if self.fn == "LayerNorm" else 1) * self.cols * 2
        partials = (2 if self.fn == "LayerNorm" else 1) * partial_rows * self.cols * 4 * 2
        return tensors * row + stats + params + partials


def norm_problems() -> list[NormProblem]:
    out = []
    for fn in ("LayerNorm", "RMSNorm"):
        for direction in ("forward", "backward"):
            for n in NORM_WIDTHS:
                out.append(NormProblem(fn, n, direction))
            out.append(NormProblem(fn, 4096, direction, residual=True))
    return out


def _cuda_norm_shape(vectors: int, max_threads: int, cached: int = 16, vec: int = 8) -> tuple[int, int]:
    """(threads, items) csrc/norm/norm_kernels.cuh's shape_for picks for a row of ``vectors`` 16-byte vectors."""
    max_items = min(cached // vec, 8)
    items, it = 0, 1
    while it <= max_items:
        if vectors <= max_threads * it:
            items = it
            break
        it *= 2
    per = -(-vectors // items) if items else vectors
    return min(max(-(-per // 32) * 32, 32), max_threads), items


def _norm_design(who: str, prob: NormProblem, hw: dict, sass_rec: dict, triton_rec: dict,
                 anchor_rec: dict | None = None) -> dict | None:
    """{kernel, threads, ctas, registers, shared, instructions (a loop trip of a warp), partial_rows, and for FA2's
    kernel rows_per_step (WARPS_M rows a CTA takes at once) and warps_per_row}, or None."""
    rows = prob.rows
    if who == "FA2":
        direction = "forward" if prob.direction == "forward" else "backward"
        rec = anchor_rec.get("anchors", {}).get(f"FA2 LayerNorm {direction} bf16 {prob.cols}")
        if rec is None or not rec.get("traits"):
            return None
        t = rec["traits"]
        # ln_{fwd,bwd}_kernels.cuh: ctas_per_col = SMs x cudaOccupancyMaxActiveBlocksPerMultiprocessor; the backward
        # writes one float32 partial row per CTA (dgamma_part, dbeta_part), its finalize kernel sums them
        ctas = resident_ctas(t["threads"], rec["registers"], t["dynamic_shared"], hw) * hw["sms"]
        loop = rec.get("main_loop")
        return dict(kernel=rec["kernel"], threads=t["threads"], ctas=ctas, registers=rec["registers"],
                    shared=t["dynamic_shared"], instructions=(loop or rec)["instructions"],
                    partial_rows=0 if direction == "forward" else ctas, rows_per_step=t["warps_m"],
                    warps_per_row=t["warps_n"])
    if who == "ours CUDA":
        fwd = prob.direction == "forward"
        threads, items = _cuda_norm_shape(prob.cols // 8, 1024 if fwd else 512)
        if items == 0:
            return None  # the looped kernels: not in these problems
        name = (f"aigc_kernels::norm::norm_{'fwd' if fwd else 'bwd'}_kernel<__nv_bfloat16, __nv_bfloat16, 8, "
                f"{items}>")
        rec = next((k for k in sass_rec.get("kernels", []) if k["kernel"] == name), None)
        if rec is None:
            return None
        ctas = rows if fwd else tables.norm_bwd_grid(rows, prob.bwd_row_bytes, hw["sms"],
                                                       tables.NORM_BWD_MAX_PER_SM["cuda"])
        loop = rec.get("main_loop")
        return dict(kernel=name, threads=threads, ctas=ctas, registers=rec["registers"], shared=0,
                    instructions=(loop or rec)["instructions"], partial_rows=0 if fwd else ctas)
    case = f"{prob.fn} bf16 {rows}x{prob.cols}{' residual' if prob.residual else ''} fwd+bwd"
    recorded_as = {"ours Triton": "ours", "Liger": "Liger"}[who]  # triton_figures.json's "who"
    group = next((c for c in triton_rec.get("cases", []) if c["who"] == recorded_as and c["case"] == case), None)
    if group is None:
        return None
    fwd = prob.direction == "forward"
    kernel = next((k for k in group["kernels"] if ("forward" in k["kernel"] or "fwd" in k["kernel"]) == fwd), None)
    if kernel is None:
        return None
    if fwd:
        ctas, partial = rows, 0
    elif who == "Liger":
        ctas = partial = hw["sms"]  # liger_kernel/ops: a program per SM, a float32 partial dW row each
    else:  # aigc_kernels/triton/norm.py: contracts.tables.norm_bwd_grid's programs, rows split evenly
        per = -(-rows // tables.norm_bwd_grid(rows, prob.bwd_row_bytes, hw["sms"],
                                                tables.NORM_BWD_MAX_PER_SM["triton"]))
        ctas = partial = -(-rows // per)
    loop = kernel.get("main_loop")
    return dict(kernel=kernel["kernel"], threads=kernel["num_warps"] * 32, ctas=ctas,
                registers=kernel["registers"], shared=kernel["shared"],
                instructions=(loop or kernel["mix"])["instructions"], partial_rows=partial)


def norm_bound(prob: NormProblem, d: dict, hw: dict) -> dict:
    """The three terms, limiter, time and bandwidth of one norm design at one problem."""
    threads = d["threads"]
    per_sm = resident_ctas(threads, d["registers"], d["shared"], hw)
    slots = per_sm * hw["sms"]
    steps_per_cta = math.ceil(prob.rows / (d["ctas"] * d.get("rows_per_step", 1)))
    waves = math.ceil(d["ctas"] / slots)
    hbm_bytes = prob.bytes(d["partial_rows"])
    terms = {"hbm": hbm_bytes / (hw["hbm_tbs"] * 1e12),
             "issue": prob.rows * d.get("warps_per_row", threads // 32) * d["instructions"] / hw["issue_per_clk"]
             / hw["sms"] / (hw["clock_ghz"] * 1e9),
             "latency": steps_per_cta * waves * hw["dram_latency_ns"] * 1e-9}
    limiter = max(terms, key=terms.get)
    seconds = terms[limiter]
    compulsory = prob.bytes(0)
    return {"kernel": d["kernel"], "limiter": limiter, "ctas": d["ctas"], "ctas_per_sm": per_sm,
            "instructions_per_row": d["instructions"], "terms_us": {k: round(v * 1e6, 2) for k, v in terms.items()},
            "microseconds": round(seconds * 1e6, 2), "gbs": round(compulsory / seconds / 1e9),
            "hbm_fraction": round(compulsory / seconds / (hw["hbm_tbs"] * 1e12), 3)}


def norm_model() -> list[dict]:
    sass_rec, triton_rec, anchor_rec = _load("sass_figures.json"), _load("triton_figures.json"), \
        _load("anchor_figures.json")
    rows = []
    for gpu, hw in HARDWARE.items():
        for prob in norm_problems():
            row = {"gpu": gpu, "problem": prob.label}
            for who in NORM_DESIGNS:
                d = _norm_design(who, prob, hw, sass_rec, triton_rec, anchor_rec)
                row[who] = norm_bound(prob, d, hw) if d is not None else None
            for anchor in NORM_ANCHORS:
                if row[anchor]:
                    for who in ("ours CUDA", "ours Triton"):
                        if row[who]:
                            row[f"{who} / {anchor}"] = round(row[anchor]["microseconds"] / row[who]["microseconds"],
                                                             3)
            rows.append(row)
    return rows


NORM_RATIOS = tuple(f"ours {b} / {a}" for a in NORM_ANCHORS for b in ("CUDA", "Triton"))


def norm_markdown(rows: list[dict], gpu: str = "H100 SXM") -> str:
    def cell(side: dict | None) -> str:
        if side is None:
            return "-"
        return f"{side['gbs']:g} GB/s, {side['hbm_fraction'] * 100:.0f}% ({side['limiter']})"

    lines = ["| problem | bound, ours CUDA (limiter) | bound, ours Triton | bound, Liger (Triton) | "
             "bound, FA2 (CUDA) | CUDA / Liger | Triton / Liger | CUDA / FA2 | Triton / FA2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["gpu"] == gpu:
            ratios = [f"{r[k]:.2f}x" if k in r else "-" for k in NORM_RATIOS]
            lines.append(f"| {r['problem']} | {' | '.join(cell(r[w]) for w in NORM_DESIGNS)} | {' | '.join(ratios)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The SwiGLU FFN at Llama-7B's sizes (d 4096, hidden 11008, 4096 tokens), forward and backward: each side's steps
# in turn, a GEMM at the measured cuBLAS ceiling (or its bytes), a copy or elementwise pass at the larger of its
# HBM bytes and its issued instructions (from its SASS: CUDA's loop a lane takes per element, Liger's kernel per
# row). What differs between the sides is around the GEMMs: the separate activation pass, the pre-activations kept
# for the backward, h recomputed or kept (no side concatenates the weights: the weight-copy column says so).
# ---------------------------------------------------------------------------------------------------------------
FFN = dict(tokens=4096, d=4096, hidden=11008)


def _elementwise_issue(kernel: dict | None, elements: float, lane: int | None, hw: dict, cols: int = 0) -> float:
    """Seconds of instruction issue for an elementwise kernel over ``elements``: a grid-stride kernel issues its loop
    once per 32 x ``lane`` elements (``lane`` a thread); a row kernel (Liger's, lane None) its instructions x warps
    once per row of ``cols``."""
    if kernel is None:
        return 0.0
    if lane:
        warp_instr = elements * (kernel.get("main_loop") or kernel)["instructions"] / (32 * lane)
    else:
        warp_instr = elements / cols * kernel["mix"]["instructions"] * kernel["num_warps"]
    return warp_instr / hw["issue_per_clk"] / hw["sms"] / (hw["clock_ghz"] * 1e9)


def gelu_ffn_steps(side: str, direction: str) -> list[dict]:
    """Linear + GELU (tanh) FFN: ours fuse the activation into the GEMMs (cuBLASLt's GELU / DGELU epilogues on CUDA,
    the Triton GEMM's epilogue and prologue), keep the pre-activation and recompute h in the backward; the anchor is
    cuBLAS GEMMs with PyTorch's separate GELU passes (h saved)."""
    t, d, h = FFN["tokens"], FFN["d"], FFN["hidden"]
    b = 2

    def gemm(name, m, n, k, extra=0):
        return dict(step=name, flops=2.0 * m * n * k, bytes=float((m * k + k * n + m * n) * b + extra), issue_s=0.0)

    def mem(name, nbytes):
        return dict(step=name, flops=0.0, bytes=float(nbytes), issue_s=0.0)

    if direction == "forward":
        if side == "anchor":
            return [gemm("GEMM x W_in^T (cuBLAS)", t, h, d), mem("GELU (eager)", 2 * t * h * b),
                    gemm("GEMM h W_out^T", t, d, h)]
        return [gemm("GEMM x W_in^T, GELU in the epilogue; pre-activation kept", t, h, d, t * h * b),
                gemm("GEMM h W_out^T", t, d, h)]
    common = [gemm("GEMM dW_out = dout^T h", d, h, t), gemm("GEMM dx = dz W_in", t, d, h),
              gemm("GEMM dW_in = dz^T x", h, d, t)]
    if side == "anchor":
        return [gemm("GEMM dh = dout W_out", t, h, d), mem("GELU backward (eager): dh, pre -> dz", 3 * t * h * b),
                *common]
    recompute = mem("h = GELU(pre) again for dW_out", 2 * t * h * b)
    if side == "ours Triton":
        recompute = {**recompute, "step": "GELU(pre) in dW_out's prologue", "bytes": 0.0}
    return [gemm("GEMM dh = dout W_out, dz = dh gelu'(pre) in the epilogue", t, h, d, t * h * b), recompute, *common]


def ffn_steps(side: str, direction: str, hw: dict, sass_rec: dict, triton_rec: dict) -> list[dict]:
    t, d, h = FFN["tokens"], FFN["d"], FFN["hidden"]
    b = 2  # bf16

    def gemm(name, m, n, k):
        return dict(step=name, flops=2.0 * m * n * k, bytes=float((m * k + k * n + m * n) * b), issue_s=0.0)

    def mem(name, nbytes, issue_s=0.0):
        return dict(step=name, flops=0.0, bytes=float(nbytes), issue_s=issue_s)

    def cuda(kernel):
        return next((k for k in sass_rec.get("kernels", []) if k["kernel"] == f"aigc_kernels::gemm::{kernel}"), None)

    liger = next((c for c in triton_rec.get("cases", []) if c["who"] == "Liger" and c["case"].startswith("SwiGLU")),
                 None)

    def liger_kernel(name):
        return next((k for k in liger["kernels"] if k["kernel"] == name), None) if liger else None

    # No side concatenates [W_in; W_gate] any more (csrc/gemm/gemm_api.cpp, aigc_kernels/triton/linear.py): a step
    # named "concatenate ..." would be counted as the weight copy in the rows below.
    if direction == "forward":
        if side == "ours CUDA":
            gated = cuda("gated_fwd_kernel<c10::BFloat16, 8>")  # hidden % 8 == 0: 16-byte accesses
            return [gemm("GEMM x W_in^T -> U, the left half of [U G] (cuBLASLt)", t, h, d),
                    gemm("GEMM x W_gate^T -> G, the right half", t, h, d),
                    mem("gated activation (CUDA)", 3 * t * h * b, _elementwise_issue(gated, t * h, 8, hw)),
                    gemm("GEMM h W_out^T", t, d, h)]
        if side == "ours Triton":
            first = gemm("GEMM x W_in^T, x W_gate^T, act in the epilogue; U, G kept", t, 2 * h, d)
            first["bytes"] += t * h * b  # h written beside the two pre-activations
            return [first, gemm("GEMM h W_out^T", t, d, h)]
        fwd = liger_kernel("_swiglu_forward_kernel")
        return [gemm("GEMM x W_in^T (cuBLAS)", t, h, d), gemm("GEMM x W_gate^T (cuBLAS)", t, h, d),
                mem("Liger SwiGLU", 3 * t * h * b, _elementwise_issue(fwd, t * h, None, hw, h)),
                gemm("GEMM h W_out^T", t, d, h)]
    common = [gemm("GEMM dh = dout W_out", t, h, d), gemm("GEMM dW_out = dout^T h", d, h, t)]
    grads = [gemm("GEMM dW_in = du^T x", h, d, t), gemm("GEMM dW_gate = dg^T x", h, d, t)]
    if side == "ours CUDA":
        bwd = cuda("gated_bwd_kernel<c10::BFloat16, 8>")
        return [*common, mem("gated backward (CUDA): dh, U, G -> dU, dG, and h again for dW_out", 6 * t * h * b,
                             _elementwise_issue(bwd, t * h, 8, hw)),
                gemm("GEMM dx = dU W_in", t, d, h),
                {**gemm("GEMM dx += dG W_gate (cuBLASLt beta 1: dx read back)", t, d, h),
                 "bytes": float((t * h + h * d + 2 * t * d) * b)}, *grads]
    if side == "ours Triton":
        return [*common, mem("gated backward (Triton; issue not read)", 5 * t * h * b),
                gemm("GEMM dx = dU W_in + dG W_gate, one accumulator over both pairs", t, d, 2 * h), *grads]
    bwd = liger_kernel("_swiglu_backward_kernel")
    return [*common, mem("Liger SwiGLU backward (recomputes h)", 5 * t * h * b,
                         _elementwise_issue(bwd, t * h, None, hw, h)),
            gemm("GEMM dx += dU W_in", t, d, h), gemm("GEMM dx += dG W_gate", t, d, h), *grads]


def ffn_model() -> list[dict]:
    sass_rec, triton_rec = _load("sass_figures.json"), _load("triton_figures.json")
    rows = []
    for gpu, hw in HARDWARE.items():
        for kind, anchor in (("SwiGLU", "cuBLAS + Liger SwiGLU"), ("Linear + GELU", "cuBLAS + eager GELU")):
            for direction in ("forward", "backward"):
                row = {"gpu": gpu, "problem": f"{kind} FFN {direction} bf16, d {FFN['d']}, hidden {FFN['hidden']}, "
                                              f"{FFN['tokens']} tokens", "anchor_name": anchor}
                for side in ("ours CUDA", "ours Triton", "anchor"):
                    steps = (ffn_steps("Liger" if side == "anchor" else side, direction, hw, sass_rec, triton_rec)
                             if kind == "SwiGLU" else gelu_ffn_steps(side, direction))
                    for st in steps:
                        times = {"tensor": st["flops"] / (hw["gemm_tflops"] * 1e12),
                                 "hbm": st["bytes"] / (hw["hbm_tbs"] * 1e12), "issue": st["issue_s"]}
                        st["limiter"] = max(times, key=times.get)
                        st["microseconds"] = round(times[st["limiter"]] * 1e6, 1)
                        st["bytes"], st["issue_s"] = round(st["bytes"]), round(st["issue_s"] * 1e6, 1)
                    copy = sum(st["bytes"] for st in steps if st["step"].startswith("concatenate"))
                    row[side] = {"microseconds": round(sum(st["microseconds"] for st in steps), 1),
                                 "weight_copy_bytes": copy,
                                 "not_gemm_us": round(sum(st["microseconds"] for st in steps if st["flops"] == 0), 1),
                                 "steps": steps}
                for side in ("ours CUDA", "ours Triton"):
                    row[f"{side} / anchor"] = round(row["anchor"]["microseconds"] / row[side]["microseconds"], 3)
                rows.append(row)
    return rows


def ffn_markdown(rows: list[dict], gpu: str = "H100 SXM") -> str:
    lines = ["| problem | ours CUDA: us (outside GEMMs; weight copy MB) | ours Triton | anchor | ours CUDA / anchor | "
             "ours Triton / anchor |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["gpu"] == gpu:
            cells = [f"{r[s]['microseconds']:g} ({r[s]['not_gemm_us']:g}; {r[s]['weight_copy_bytes'] / 1e6:.0f})"
                     for s in ("ours CUDA", "ours Triton", "anchor")]
            cells[2] = f"{r['anchor_name']}: {cells[2]}"
            lines.append(f"| {r['problem']} | {' | '.join(cells)} | {r['ours CUDA / anchor']:.2f}x | "
                         f"{r['ours Triton / anchor']:.2f}x |")
    return "\n".join(lines)


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
    lines += ["", _notes(data)] if _notes(data) else []
    if data.get("norm_rows"):
        lines += ["", "Norms (bf16; the bound's terms: HBM bytes at the copy ceiling, issued instructions, and a DRAM "
                  "round trip per row a CTA takes in turn; GB/s of compulsory bytes, % of the ceiling):", "",
                  norm_markdown(data["norm_rows"], gpu)]
    if data.get("ffn_rows"):
        lines += ["", "The FFNs (every GEMM at the measured cuBLAS ceiling; the rest at its HBM bytes or its "
                  "issued instructions -- for CUDA's activation kernels the static count of every branch of their "
                  "switch over activations, an overstatement; steps in turn; microseconds):", "",
                  ffn_markdown(data["ffn_rows"], gpu)]
    return "\n".join(lines)


def _notes(data: dict) -> str:
    lines = []
    for cal in data.get("calibration") or []:
        lo, hi = cal["published_tflops"]
        published = f"~{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        lines += [f"Calibration: the model bounds {cal['design']} at {cal['model_tflops']:g} TFLOP/s on H100 SXM "
                  f"({cal['problem']}); published {published}"
                  f"{' for ' + cal['published_as'] if cal.get('published_as') else ''}: the bound is "
                  f"{cal['bound_over_published']:g}x the "
                  f"measurement, {'inside' if cal['within_band'] else 'OUTSIDE'} the stated band "
                  f"{cal['band'][0]:g}-{cal['band'][1]:g}x."]
    if data.get("missing"):
        lines += ["Not recorded (make anchors): " + ", ".join(data["missing"]) + "."]
    return "\n\n".join(lines)


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
        norms = Table(title=f"norms, {gpu}: a bound, not a measurement (GB/s of compulsory bytes, % of the ceiling)")
        for col in ("problem", *NORM_DESIGNS, *(k.removeprefix("ours ") for k in NORM_RATIOS)):
            norms.add_column(col)
        for r in data.get("norm_rows", []):
            if r["gpu"] == gpu:
                cells = [f"{r[w]['gbs']:g} GB/s {r[w]['hbm_fraction'] * 100:.0f}% ({r[w]['limiter']})" if r[w] else "-"
                         for w in NORM_DESIGNS]
                ratios = [f"{r[k]:.2f}x" if k in r else "-" for k in NORM_RATIOS]
                norms.add_row(r["problem"], *cells, *ratios)
        console.print(norms)
        console.print(f"FFNs, {gpu} (a bound, not a measurement):")
        console.print(ffn_markdown(data.get("ffn_rows", []), gpu))
    console.print(_notes(data))

"""aigc_kernels/sass.py (the SASS reader of the performance model) on hand-written SASS, and
scripts/sass_figures.py's record of the built extension: current, and within the attention budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _scripts
import pytest

from aigc_kernels import sass

ROOT = Path(__file__).resolve().parents[1]

SASS = """
Fatbin elf code:
================
arch = sm_90a
code version = [1,8]

	code for sm_90a
		Function : _Z6kernelv
	.headerflags	@"EF_CUDA_ACCELERATORS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                       /* 0x00000a00ff017b82 */
                                                                                /* 0x000ff00000000800 */
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;             /* 0x0 */
        /*0020*/                   LDSM.16.M88.4 R8, [R3] ;                     /* 0x0 */
        /*0030*/                   HMMA.16816.F32.BF16 R12, R8, R4, R12 ;       /* 0x0 */
        /*0040*/                   HMMA.16816.F32.BF16 R16, R8, R6, R16 ;       /* 0x0 */
        /*0050*/               @P0 BRA 0x70 ;                                   /* 0x0 */
        /*0060*/                   MUFU.EX2 R0, R0 ;                            /* 0x0 */
        /*0070*/                   STS.64 [R3], R12 ;                           /* 0x0 */
        /*0080*/              @!P1 BRA 0x20 ;                                   /* 0x0 */
        /*0090*/                   LDS.U16 R0, [R3] ;                           /* 0x0 */
        /*00a0*/                   ISETP.GE.AND P2, PT, R0, 0x4, PT ;           /* 0x0 */
        /*00b0*/               @P2 BRA 0x90 ;                                   /* 0x0 */
        /*00c0*/                   STG.E [R2.64], R0 ;                          /* 0x0 */
        /*00d0*/                   EXIT ;                                       /* 0x0 */
        /*00e0*/                   NOP ;                                        /* 0x0 */
		Function : _Z6wgmmav
        /*0000*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;  /* 0x0 */
        /*0010*/                   EXIT ;                                       /* 0x0 */

arch = sm_80
		Function : _Z6kernelv
        /*0000*/                   EXIT ;                                       /* 0x0 */
"""


def test_parse_keys_functions_by_arch_and_reads_predicates():
    fns = sass.parse(SASS)
    assert set(fns) == {("sm_90a", "_Z6kernelv"), ("sm_90a", "_Z6wgmmav"), ("sm_80", "_Z6kernelv")}
    ins = fns[("sm_90a", "_Z6kernelv")]
    assert [i.addr for i in ins] == list(range(0, 0xF0, 0x10))
    assert ins[5].op == "BRA" and ins[5].pred == "@P0" and ins[8].pred == "@!P1"
    assert ins[3].base == "HMMA" and ins[3].op == "HMMA.16816.F32.BF16"


def test_the_main_loop_is_the_backward_branch_around_the_mma():
    ins = sass.parse(SASS)[("sm_90a", "_Z6kernelv")]
    assert sorted(sass.loops(ins)) == [(0x20, 0x80), (0x90, 0xB0)]  # the forward branch at 0x50 is no loop
    assert sass.main_loop(ins) == (0x20, 0x80)
    fig = sass.figures(ins)
    loop = fig["main_loop"]
    assert loop["instructions"] == 7 and loop["mma"] == 2 and loop["ldsm"] == 1 and loop["branches"] == 2
    assert loop["mufu"] == 1 and loop["sts"] == 1 and loop["widths"] == {"STS.64": 1}
    assert loop["mma_flops"] == 2 * 2 * 16 * 8 * 16 and loop["instructions_per_mma"] == 3.5
    assert loop["mma_per_ldsm"] == 2.0
    whole = fig["kernel"]
    assert whole["instructions"] == 14  # the NOP is not an instruction issued
    assert whole["widths"] == {"LDG.128": 1, "LDS.U16": 1, "STG.32": 1, "STS.64": 1}


def test_a_loop_around_mma_loops_is_not_the_main_loop():
    """The dK/dV kernel's loop over the heads of a GQA group holds its masked and unmasked runs of query blocks: the
    main loop is the innermost MMA loop with the most MMA, the smaller body among equals (the unmasked run)."""
    ops = [(0x0, "HMMA.16816.F32.BF16"), (0x10, "FMUL"), (0x20, "FSEL"), (0x30, "BRA"),  # masked run
           (0x40, "HMMA.16816.F32.BF16"), (0x50, "BRA"),  # unmasked run
           (0x60, "BRA"), (0x70, "EXIT")]  # the loop over heads, around both
    ins = [sass.Instr(a, op, "", "") for a, op in ops]
    ins[3] = sass.Instr(0x30, "BRA", "@P0", "0x0")
    ins[5] = sass.Instr(0x50, "BRA", "@P1", "0x40")
    ins[6] = sass.Instr(0x60, "BRA", "@P2", "0x0")
    assert sorted(sass.loops(ins)) == [(0x0, 0x30), (0x0, 0x60), (0x40, 0x50)]
    assert sass.main_loop(ins) == (0x40, 0x50)


def test_a_kernel_without_mma_has_its_outermost_loop_as_main_loop():
    """A norm's loop over rows holds no MMA: its main loop is the largest backward branch's body."""
    ins = [sass.Instr(a, op, "", "") for a, op in ((0x0, "LDG.E.128"), (0x10, "FADD"), (0x20, "SHFL.BFLY"),
                                                   (0x30, "FADD"), (0x40, "BRA"), (0x50, "STG.E.128"),
                                                   (0x60, "BRA"), (0x70, "EXIT"))]
    ins[4] = sass.Instr(0x40, "BRA", "@P0", "0x20")  # an inner loop (a reduction)
    ins[6] = sass.Instr(0x60, "BRA", "@P1", "0x0")  # the loop over rows
    assert sass.main_loop(ins) == (0x0, 0x60)
    assert sass.figures(ins)["main_loop"]["instructions"] == 7


def test_hgmma_flops_are_counted_per_warp():
    ins = sass.parse(SASS)[("sm_90a", "_Z6wgmmav")]
    assert sass.mma_flops(ins[0]) == 2 * 64 * 128 * 16 // 4
    assert sass.figures(ins)["main_loop"] is None  # no loop
    assert sass.figures(ins)["kernel"]["hgmma"] == 1


def test_the_budgets_hold_on_the_record_and_catch_a_regression():
    script = _scripts.script("sass_figures")
    data = json.loads((ROOT / "benchmarks" / "model" / "sass_figures.json").read_text())
    assert script.budget_failures(data) == []
    worse = json.loads(json.dumps(data))
    row = next(k for k in worse["kernels"] if k["kernel"] == script.TABLE[1][1])
    row["main_loop"]["instructions"] += 1
    row["main_loop"]["flops_per_instruction"] -= 1
    assert len(script.budget_failures(worse)) == 2


def test_recorded_sass_figures_are_current():
    """benchmarks/model/sass_figures.json and README's table are what the built extension's SASS says."""
    if not list((ROOT / "aigc_kernels").glob("_C*.so")):
        if os.environ.get("AIGC_KERNELS_REQUIRE_EXT") == "1":
            raise RuntimeError("aigc_kernels._C is not built")
        pytest.skip("needs the built extension")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "sass_figures.py"), "--check"], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr

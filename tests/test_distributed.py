"""examples/train_gpt_distributed.py under torchrun with 2 CPU processes (gloo): DDP and FSDP2
losses equal a single-process run on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_gpt_distributed.py"
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def run(mode: str, tmp_path: Path, steps: int = 6, backend: str = "torch") -> list[float]:
    out = tmp_path / f"{mode}-{backend}.json"
    cmd = [sys.executable, str(SCRIPT), "--mode", mode, "--steps", str(steps), "--losses-json", str(out),
           "--backend", backend]
    if backend == "triton":  # the interpreter runs every kernel in Python: a smaller batch
        cmd += ["--seq", "8", "--global-batch", "4"]
    if mode != "single":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *cmd[1:]]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if backend == "triton":
        env["TRITON_INTERPRET"] = "1"  # the Triton kernels on CPU
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes on gloo, even on a GPU machine
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["world"] == (1 if mode == "single" else 2)
    return data["losses"]


@pytest.mark.parametrize("mode,backend,steps", [("ddp", "torch", 6), ("fsdp2", "torch", 6), ("ddp", "triton", 2),
                                                ("fsdp2", "triton", 2)])
def test_distributed_losses_match_single_process(mode, backend, steps, tmp_path):
    single = run("single", tmp_path, steps, backend)
    multi = run(mode, tmp_path, steps, backend)
    assert len(multi) == len(single) == steps
    for step, (a, b) in enumerate(zip(single, multi, strict=True)):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: single {a} vs {mode} {b}"

"""scripts/gpu_run.sh --dry-run: the GPU verification pass's stages on CPU, so the script cannot rot
between GPU windows; and the wheel's version guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_run_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "--dry-run"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["setup", "warm", "check", "tune", "bench", "tests", "sanitize"]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    assert summary["total_seconds"] < 180
    runs = sorted((tmp_path / "results").glob("*.json"))
    tables = [p for p in runs if p.name.startswith("tune-")]
    assert len(runs) == 2 and len(tables) == 1
    bench = json.loads(next(p for p in runs if p not in tables).read_text())
    assert bench["results"] and isinstance(summary["auto_gaps_over_5pct"], list)
    table = json.loads(tables[0].read_text())  # what record_run.py would copy beside the bench JSON
    assert table["entries"] and table["measured"]["cases"] == table["measured"]["of"] == summary["tune"]["cases"]
    assert (tmp_path / "check.json").exists() and (tmp_path / "ceilings.json").exists()


def test_a_wrong_torch_is_named_not_an_undefined_symbol(monkeypatch):
    import torch

    from aigc_kernels import _ext

    monkeypatch.setattr(_ext, "build_info", lambda: {"torch_version": "2.11.0+cu130"})
    if torch.__version__.startswith("2.11."):
        monkeypatch.setattr(torch, "__version__", "2.14.1")
    why = _ext.torch_mismatch()
    assert why and "built against torch 2.11.0+cu130" in why and torch.__version__ in why
    assert "torch==2.11.*" in why

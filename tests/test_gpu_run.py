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
    # a quick check, not a timing: the bound leaves room for a second pytest worker beside it on 2 cores
    assert summary["total_seconds"] < 280
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


def test_record_run_records_the_bench_and_the_tune_table(tmp_path):
    """What a GPU session does with the pass's output, on a copy of the repo's scripts and README: the
    bench JSON and the tune table land in benchmarks/results/, README's results section names the run, and
    the shipped dispatch table for the GPU's arch is generated from the tune table."""
    import shutil

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("record_run.py", "results_table.py", "gen_dispatch_tables.py"):
        shutil.copy2(ROOT / "scripts" / name, repo / "scripts" / name)
    shutil.copy2(ROOT / "README.md", repo / "README.md")
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    name = "nvidia-h200-2026-12-03-abc1234"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "aigc_kernels.cli", "bench", "--op", "layer_norm", "--mode", "fwd",
                          "--quick", "--reps", "1", "--json", str(out / "results" / f"{name}.json")],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    from aigc_kernels import dispatch

    entry = dispatch.Entry(dispatch.Key.parse("rms_norm|bfloat16|n=4096|rows=4096"), "triton",
                           {"triton": 0.05, "torch": 0.08})
    dispatch.Table("NVIDIA H200", (9, 0), dispatch.current_versions(), [entry], meta={"cases": 1, "of": 144}) \
        .write(out / "results" / f"tune-{name}.json")
    res = subprocess.run([sys.executable, str(repo / "scripts" / "record_run.py"), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in (repo / "benchmarks" / "results").glob("*.json")) == \
        [f"{name}.json", f"tune-{name}.json"]
    assert f"[{name}.json](benchmarks/results/{name}.json)" in (repo / "README.md").read_text()
    shipped = json.loads((repo / "aigc_kernels" / "dispatch_tables" / "sm_90.json").read_text())
    assert shipped["generated_from"] == [f"tune-{name}.json"] and shipped["device"] == "NVIDIA H200"
    table = dispatch.Table.from_json(shipped)
    assert [(str(e.key), e.best) for e in table.entries] == [("rms_norm|bfloat16|n=4096|rows=4096", "triton")]
    for script in ("results_table.py", "gen_dispatch_tables.py"):  # what CI then checks: both up to date
        res = subprocess.run([sys.executable, str(repo / "scripts" / script), "--check"], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr

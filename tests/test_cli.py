"""The aigc-kernels command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from aigc_kernels import backend as B
from aigc_kernels import cli
from aigc_kernels import reference as R


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "triton", "aigc_kernels._C", "backends", "kvcache_append"):
        assert needle in out
    if not torch.cuda.is_available():
        assert "kernel speed needs a CUDA GPU" in out


def test_check_passes_and_writes_json(capsys, tmp_path):
    path = tmp_path / "check.json"
    assert cli.main(["check", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out
    data = json.loads(path.read_text())
    assert data["results"] and all(r["status"] in ("pass", "n/a") for r in data["results"])
    ran = {(r["op"], r["backend"]) for r in data["results"] if r["status"] == "pass"}
    ops = {op for op, _ in ran}
    assert ops >= {"attention", "attention_varlen", "attention_with_kvcache", "layer_norm", "rms_norm", "linear", "ffn"}
    assert {b for _, b in ran} >= {"torch"} and "reference" not in {b for _, b in ran}
    if not torch.cuda.is_available():
        assert "kernel speed needs a CUDA GPU" in out


def test_check_fails_on_a_wrong_kernel(monkeypatch, capsys):
    """A planted bug (an off-by-1e-2 layer norm on the 'triton' backend) must turn check red."""

    def wrong(x, weight=None, bias=None, eps=1e-5, residual=None):
        out = R.layer_norm(x, weight, bias, eps, residual=residual)
        return (out[0] + 1e-2, out[1]) if isinstance(out, tuple) else out + 1e-2

    monkeypatch.setitem(B._REGISTRY, "layer_norm", dict(B._REGISTRY["layer_norm"]))
    B.register("layer_norm", "triton", lambda: wrong)
    monkeypatch.setattr(B, "_available", lambda name: True)
    assert cli.main(["check", "--op", "layer_norm", "--backend", "triton"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "check layer_norm triton: 0 pass" in out


def test_check_cut_off_keeps_what_it_checked(monkeypatch, tmp_path):
    """The GPU pass runs check under a time limit: the JSON is rewritten before each op x backend, so
    a run killed in the second group still leaves the first group's results."""
    from aigc_kernels import testing

    real, calls = testing.check_case, []

    def check_case(op, name, case, dtype, **kw):
        if op == "rms_norm":
            raise KeyboardInterrupt  # stands in for the stage's timeout killing the process
        calls.append(op)
        return real(op, name, case, dtype, **kw)

    monkeypatch.setattr(testing, "check_case", check_case)
    path = tmp_path / "check.json"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["check", "--op", "layer_norm", "--op", "rms_norm", "--backend", "torch", "--json", str(path)])
    data = json.loads(path.read_text())
    assert calls and len(data["results"]) == len(calls) and {r["op"] for r in data["results"]} == {"layer_norm"}
    assert not list(tmp_path.glob("*.tmp"))


def test_console_script_installed():
    beside = __import__("pathlib").Path(sys.executable).parent / "aigc-kernels"  # the venv's bin/
    exe = str(beside) if beside.exists() else shutil.which("aigc-kernels")
    if exe is None:
        pytest.skip("package not installed with its console script (pip install -e .)")
    out = subprocess.run([exe, "check", "--op", "rms_norm"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "aigc_kernels.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout and "check" in out.stdout


def test_readme_results_are_generated_from_recorded_runs():
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "scripts" / "results_table.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout

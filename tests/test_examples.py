"""Every example runs in --tiny mode on CPU (so none can rot): the torch backend, and the Triton
kernels under the interpreter for one of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args: str, interpret: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="120")
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", "--device", "cpu", *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("script,needle", [("seq2seq_transformer.py", "largest relative loss difference"),
                                           ("gpt2_generate.py", "greedy, static cache"),
                                           ("finetune_minilm.py", "largest relative loss difference")])
def test_example_runs_tiny(script, needle):
    res = run(script)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert needle in res.stdout and "aigc_kernels.patch:" in res.stdout


def test_example_on_the_triton_interpreter():
    res = run("seq2seq_transformer.py", "--backend", "triton", interpret=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "on 'triton'" in res.stdout


def test_examples_have_help():
    for script in ("seq2seq_transformer.py", "gpt2_generate.py", "finetune_minilm.py"):
        res = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "--tiny" in res.stdout and "--backend" in res.stdout, script

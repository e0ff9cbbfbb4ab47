"""setup.py's toolkit discovery and arch flags (the parts that decide whether _C gets built)."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("aigc_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # main() only runs under __main__
    return mod


def fake_toolkit(tmp_path: Path) -> Path:
    kit = tmp_path / "cuda-13.0"
    (kit / "bin").mkdir(parents=True)
    (kit / "include").mkdir()
    (kit / "include" / "cuda_runtime.h").write_text("")
    nvcc = kit / "bin" / "nvcc"
    nvcc.write_bytes(b"\x7fELF fake")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return kit


def test_follows_a_wrapper_script_to_the_real_toolkit(setup_py, tmp_path):
    kit = fake_toolkit(tmp_path)
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {kit}/bin/nvcc "$@"\n')
    assert setup_py._toolkit_from_nvcc(str(wrapper)) == str(kit)
    assert setup_py._toolkit_from_nvcc(str(kit / "bin" / "nvcc")) == str(kit)


def test_cuda_home_env_wins(setup_py, tmp_path, monkeypatch):
    kit = fake_toolkit(tmp_path)
    monkeypatch.setenv("CUDA_HOME", str(kit))
    assert setup_py.find_cuda_home() == str(kit)


def test_gencode_flags(setup_py):
    assert setup_py.gencode_flags("8.0;9.0a") == ["-gencode=arch=compute_80,code=sm_80",
                                                  "-gencode=arch=compute_90a,code=sm_90a"]
    assert setup_py.gencode_flags("9.0+PTX")[-1] == "-gencode=arch=compute_90,code=compute_90"
    with pytest.raises(ValueError, match="expected entries like '8.0' or '9.0a', got 'sm90'"):
        setup_py.gencode_flags("sm90")


def test_the_machine_toolkit_is_found(setup_py):
    home = setup_py.find_cuda_home()
    if home is None:
        pytest.skip("no CUDA toolkit on this machine")
    assert os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))

"""The wheel a user pip-installs: built from the source tree (pure Python here, so it takes seconds),
installed into a fresh virtual environment that sees torch but not this checkout, and used from
another directory. Catches files missing from the package (dispatch tables, kernels, CLI entry
point) that an editable install hides."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "aigc_kernels/dispatch_tables/sm_99.json"
pytestmark = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs to run from a virtual environment")


def _with_extension() -> bool:
    """Build the wheel with _C when this environment built one (CI does) and nvcc is here: the same
    archs, so ccache (when installed) turns the compile into a lookup. Otherwise a pure-Python wheel."""
    from aigc_kernels import _ext

    return _ext.status()[0] and shutil.which("nvcc") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, files):
        dst = src / rel.decode()
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel.decode()).is_file():
            dst.write_bytes((ROOT / rel.decode()).read_bytes())
    # a planted table, so the package-data rule is checked even while no table is shipped yet
    (src / "aigc_kernels" / "dispatch_tables").mkdir(exist_ok=True)
    (src / "aigc_kernels" / "dispatch_tables" / "sm_99.json").write_text("{}")
    env = dict(os.environ)
    if _with_extension():
        from aigc_kernels import _ext

        env.update(AIGC_KERNELS_FORCE_CUDA_BUILD="1", AIGC_KERNELS_CUDA_ARCHS=_ext.build_info()["archs"],
                   MAX_JOBS=env.get("MAX_JOBS", "2"))
        env.pop("AIGC_KERNELS_SKIP_CUDA_BUILD", None)
    else:
        env.update(AIGC_KERNELS_SKIP_CUDA_BUILD="1")
        env.pop("AIGC_KERNELS_FORCE_CUDA_BUILD", None)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", ".",
                          "-w", str(out)], cwd=src, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (whl,) = out.glob("aigc_kernels-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tables = {n for n in names if n.startswith("aigc_kernels/dispatch_tables/") and n.endswith(".json")}
    shipped = {f"aigc_kernels/dispatch_tables/{p.name}"
               for p in (ROOT / "aigc_kernels" / "dispatch_tables").glob("*.json")} | {PLANTED}
    assert tables == shipped, f"dispatch tables in the wheel {sorted(tables)} != in the source {sorted(shipped)}"
    for needed in ("aigc_kernels/__init__.py", "aigc_kernels/triton/attention.py", "aigc_kernels/native/attention.py",
                   "aigc_kernels/reference/norm.py", "aigc_kernels/cuda/kvcache.py", "aigc_kernels/contracts/calls.py",
                   "aigc_kernels/contracts/tables.py", "aigc_kernels/cli.py", "aigc_kernels/bench/runner.py"):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "csrc/", "examples/")) for n in names)
    sos = [n for n in names if n.endswith(".so")]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    if _with_extension():
        import torch

        assert sos == ["aigc_kernels/_C.abi3.so"], sos
        assert "-cp310-abi3-" in wheel.name, wheel.name
        minor = ".".join(torch.__version__.split(".")[:2])
        assert f"Requires-Dist: torch=={minor}.*" in meta, meta
        assert "aigc_kernels/_build_info.py" in names
    else:
        assert not sos, f"a pure-Python build must not carry a stale _C: {sos}"
        assert "Requires-Dist: torch>=" in meta, meta
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "aigc-kernels = aigc_kernels.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_installs_and_runs_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # torch and the test tools from this environment, appended after the fresh site-packages; the
    # editable install of this checkout is a .pth *inside* that directory, which a plain path does not run
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                          "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    code = """
import json, torch, aigc_kernels as ak
from aigc_kernels import dispatch
x = torch.randn(3, 5, 40)
w, b = torch.randn(40), torch.randn(40)
y = ak.layer_norm(x, w, b, backend="torch")
ref = torch.nn.functional.layer_norm(x.double(), (40,), w.double(), b.double())
from aigc_kernels import _ext
print(json.dumps({"file": ak.__file__, "ext": _ext.status(), "err": float((y.double() - ref).abs().max()),
                  "tables": str(dispatch.shipped_table_path((9, 0)).parent)}))
"""
    # no CUDA toolkit in sight: a user's machine with only the wheel and torch
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET", "CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = "/usr/bin:/bin"
    assert shutil.which("nvcc", path=env["PATH"]) is None
    res = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(site)), got["file"]  # the installed copy, not this checkout
    assert got["err"] < 1e-5
    assert got["ext"][0] == _with_extension(), got["ext"]
    assert got["tables"].startswith(str(site))  # shipped tables are looked up inside the installed package
    cli = subprocess.run([str(venv / "bin" / "aigc-kernels"), "info"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0 and "torch" in cli.stdout, cli.stdout[-2000:] + cli.stderr[-2000:]
    if _with_extension():
        assert "aigc_kernels._C built for" in cli.stdout
    chk = subprocess.run([str(venv / "bin" / "aigc-kernels"), "check", "--op", "layer_norm", "--op", "kvcache_append",
                          "--json", str(tmp_path / "check.json")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert chk.returncode == 0, chk.stdout[-3000:] + chk.stderr[-2000:]
    rows = json.loads((tmp_path / "check.json").read_text())
    rows = rows["results"] if isinstance(rows, dict) else rows
    ran = {r["backend"] for r in rows if r["status"] == "pass"}
    assert "torch" in ran and all(r["status"] != "fail" for r in rows), rows
    if _with_extension():
        assert "torch.ops (cpu)" in ran, ran  # _C's CPU kernel, loaded from the installed wheel
        ext = subprocess.run([str(py), str(ROOT / "scripts" / "check_extension.py")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)  # every C++ op's schema and fake impl
        assert ext.returncode == 0 and ext.stdout.count(": ok") >= 10, ext.stdout[-3000:] + ext.stderr[-2000:]

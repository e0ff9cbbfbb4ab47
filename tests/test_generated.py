"""Generated files are up to date with their one source, and the tables agree with the code that uses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aigc_kernels import reference
from aigc_kernels.contracts import tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gen_tables.py", "gen_wgmma.py", "gen_dispatch_tables.py"])
def test_generated_files_are_up_to_date(script):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_mode_catches_a_stale_and_a_left_over_file(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_tables", ROOT / "scripts" / "gen_tables.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    attn, gemm = tmp_path / "attention", tmp_path / "gemm"
    attn.mkdir()
    gemm.mkdir()
    monkeypatch.setattr(gen, "ATTN", attn)
    monkeypatch.setattr(gen, "GEMM", gemm)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{gen.KW_BEGIN}\nstale\n{gen.KW_END}\n\nafter\n")
    monkeypatch.setattr(gen, "README", readme)
    assert gen.main(["--check"]) == 1  # nothing written yet
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    (attn / "flash_fwd_f16_d48.cu").write_text("// a head dim the tables do not list\n")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and not (attn / "flash_fwd_f16_d48.cu").exists()
    (gemm / "act_table.h").write_text("edited by hand\n")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    text = readme.read_text()  # the keywords block regenerated in place, the rest kept
    assert text.startswith("# title\n") and text.endswith("\nafter\n") and "stale" not in text
    assert "| `shift_labels`" not in text and "| `softcap` | honoured |" in text and "| `head_mask` | refused |" in text
    readme.write_text(text.replace("| `head_mask` | refused |", "| `head_mask` | ignored |"))
    assert gen.main(["--check"]) == 1


def test_the_kernels_read_the_tables():
    from aigc_kernels.contracts import limits
    from aigc_kernels.models import convert

    assert reference.ACTIVATIONS == tables.ACTIVATIONS
    assert limits.CUDA_HEAD_DIMS == tables.CUDA_FWD_HEAD_DIMS
    assert limits.CUDA_BWD_MAX_HEAD_DIM == max(tables.CUDA_BWD_HEAD_DIMS)
    assert convert._activation("gelu_fast") == "gelu_tanh"
    header = (ROOT / "csrc" / "gemm" / "act_table.h").read_text()
    for name, i in tables.ACTIVATION_IDS.items():
        assert f'"{name}"' in header and f"= {i}" in header
    if "triton" in sys.modules or __import__("importlib").util.find_spec("triton"):
        from aigc_kernels.triton import linear as triton_linear

        assert triton_linear.ACT_IDS == {None: tables.NO_ACTIVATION_ID, **tables.ACTIVATION_IDS}


def test_every_hf_activation_is_the_function_it_maps_to():
    acts = pytest.importorskip("transformers.activations")
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    for hf_name, ours in tables.HF_ACTIVATIONS.items():
        assert ours in tables.ACTIVATIONS
        torch.testing.assert_close(acts.ACT2FN[hf_name](x), reference.apply_activation(x, ours), atol=1e-9, rtol=1e-9,
                                   msg=lambda m, hf_name=hf_name: f"{hf_name}: {m}")


def test_layers_only_reach_down():
    """Kernel modules (triton/, cuda/) and the shared layer (contracts/) never import the public functions (ops/),
    the reference or the native backend; contracts/ imports no backend."""
    import ast

    pkg = ROOT / "aigc_kernels"
    banned = {"triton": ("ops", "reference", "native", "cuda"), "cuda": ("ops", "reference", "native", "triton"),
              "contracts": ("ops", "reference", "native", "cuda", "triton")}
    for layer, names in banned.items():
        for path in sorted((pkg / layer).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    module = node.module or ""
                    target = module.split(".")[0] if node.level == 2 else layer
                    if node.level == 2 and not module:  # from .. import x
                        targets = [a.name for a in node.names]
                    else:
                        targets = [target]
                    bad = [t for t in targets if t in names]
                    assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad}"
                elif isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    for m in mods:
                        parts = m.split(".")
                        assert not (parts[0] == "aigc_kernels" and len(parts) > 1 and parts[1] in names), \
                            f"{path.relative_to(ROOT)}:{node.lineno} imports {m}"

"""auto's dispatch table: keys, loading (hit, miss, stale versions, other GPUs), nearest-size lookup,
the choice it makes (never the reference, never a backend that cannot take the call), tune, and
the per-call cost of getting to a kernel."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import backend as B
from aigc_kernels import dispatch, tune
from aigc_kernels.validation import make_call

NAME, CAP = "NVIDIA H200", (9, 0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_KERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AIGC_KERNELS_DISPATCH_TABLE", raising=False)
    dispatch.reload()
    yield tmp_path
    dispatch.reload()


def write_table(path, entries, versions=None, device=NAME, capability=CAP):
    table = dispatch.Table(device, capability, versions or dispatch.current_versions(),
                           [dispatch.Entry(dispatch.Key.parse(k), best, ms) for k, best, ms in entries])
    return table.write(path)


def qkv(lq=64, lk=64, d=32, hkv=4, grad=False):
    return (torch.randn(2, 4, lq, d, requires_grad=grad), torch.randn(2, hkv, lk, d, requires_grad=grad),
            torch.randn(2, hkv, lk, d, requires_grad=grad))


def test_keys_bucket_sizes_and_name_features():
    q, k, v = qkv(lq=100, lk=300, hkv=2)
    key = dispatch.key(make_call("attention", q, k, v, causal=True, attn_mask=torch.ones(100, 300, dtype=torch.bool)))
    assert key.features == ("float32", "causal", "mask_bool", "gqa")
    assert dict(key.sizes) == {"d": 32, "lq": 128, "lk": 512, "bh": 8}
    assert dispatch.Key.parse(str(key)) == key
    x = torch.randn(3, 5, 1000, requires_grad=True)
    want = "layer_norm|float32|residual|grad|n=1024|rows=16"
    assert str(dispatch.key(make_call("layer_norm", x, residual=x))) == want
    with torch.no_grad():
        assert "grad" not in dispatch.key(make_call("layer_norm", x)).features
    w = torch.randn(64, 1000)
    assert dispatch.key(make_call("ffn", x, w, None, w.T, None, activation="silu", w_gate=w)).features == \
        ("float32", "act_silu", "gated", "grad")


def test_load_hit_miss_stale_and_other_devices(cache):
    assert dispatch.load(NAME, CAP) is None  # miss: nothing measured
    path = dispatch.user_table_path(NAME, CAP)
    write_table(path, [("layer_norm|bfloat16|n=1024|rows=4096", "triton", {"triton": 1.0, "torch": 2.0})])
    table = dispatch.load(NAME, CAP)
    assert table is not None and table.source == str(path) and len(table.entries) == 1
    assert dispatch.load("NVIDIA H100", CAP) is None  # another GPU's file is never read for this one
    stale = dict(dispatch.current_versions(), torch="1.13.0")
    write_table(path, [("layer_norm|bfloat16|n=1024|rows=4096", "triton", {"triton": 1.0})], versions=stale)
    with pytest.warns(UserWarning, match="stale dispatch table .*measured with torch 1.13.0"):
        assert dispatch.load(NAME, CAP) is None
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        assert dispatch.load(NAME, CAP) is None


def test_explicit_table_and_capability_mismatch(cache, monkeypatch, tmp_path):
    other = write_table(tmp_path / "t.json", [("linear|float16|act_gelu|m=4096|n=4096|k=4096", "cuda", {"cuda": 1})],
                        capability=(8, 0))
    monkeypatch.setenv("AIGC_KERNELS_DISPATCH_TABLE", str(other))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert dispatch.load(NAME, CAP) is None
    assert any("measured on sm_80, running on sm_90" in str(w.message) for w in seen)
    monkeypatch.setenv("AIGC_KERNELS_DISPATCH_TABLE", str(write_table(tmp_path / "u.json", [], capability=CAP)))
    assert dispatch.load(NAME, CAP).source.endswith("u.json")


def test_nearest_size_lookup():
    table = dispatch.Table(NAME, CAP, dispatch.current_versions(), [
        dispatch.Entry(dispatch.Key.parse("rms_norm|bfloat16|n=1024|rows=1024"), "torch", {}),
        dispatch.Entry(dispatch.Key.parse("rms_norm|bfloat16|n=8192|rows=16384"), "triton", {}),
    ])
    assert table.lookup(dispatch.Key.parse("rms_norm|bfloat16|n=4096|rows=16384")).best == "triton"
    assert table.lookup(dispatch.Key.parse("rms_norm|bfloat16|n=1024|rows=2048")).best == "torch"
    assert table.lookup(dispatch.Key.parse("rms_norm|float16|n=1024|rows=2048")) is None  # other features: no entry


def _auto_with(monkeypatch, entries, op, *args, **kwargs):
    """What auto picks on a (simulated) GPU with this dispatch table."""
    table = dispatch.Table(NAME, CAP, dispatch.current_versions(),
                           [dispatch.Entry(dispatch.Key.parse(k), best, ms) for k, best, ms in entries], "test table")
    monkeypatch.setattr(dispatch, "table_for", lambda device: table)
    B._explaining.append(True)
    try:
        B._auto(op, B._REGISTRY[op], torch.device("cuda"), make_call(op, *args, **kwargs))
    except B._Explained as done:
        return done.explanation
    finally:
        B._explaining.pop()
    raise AssertionError("auto did not decide")


def test_auto_follows_the_table_but_never_the_reference(monkeypatch):
    x = torch.randn(4096, 1024)
    key = str(dispatch.key(make_call("rms_norm", x)))
    monkeypatch.setattr(B, "_available", lambda name: True)
    monkeypatch.setattr(B, "_device_reason", lambda backend, device: None)
    chosen = _auto_with(monkeypatch, [(key, "triton", {"triton": 1.0, "torch": 2.0})], "rms_norm", x)
    assert chosen.backend == "triton" and chosen.timings_ms == {"triton": 1.0, "torch": 2.0}
    assert "measured fastest" in chosen.reason and chosen.key == key
    chosen = _auto_with(monkeypatch, [(key, "reference", {"reference": 0.1})], "rms_norm", x)
    assert chosen.backend == "torch"
    chosen = _auto_with(monkeypatch, [], "rms_norm", x)
    assert chosen.backend == "torch" and "no entry" in chosen.reason


def test_auto_skips_a_winner_that_cannot_take_the_call(monkeypatch):
    monkeypatch.setattr(B, "_available", lambda name: True)
    monkeypatch.setattr(B, "_device_reason", lambda backend, device: None)
    q, k, v = qkv(d=8)  # head dim 8: the Triton kernel takes 16..256
    key = str(dispatch.key(make_call("attention", q, k, v)))
    chosen = _auto_with(monkeypatch, [(key, "triton", {"triton": 1.0, "torch": 3.0})], "attention", q, k, v)
    assert chosen.backend == "torch" and "cannot run this call" in chosen.reason and "head dims" in chosen.reason


def test_no_table_means_torch_on_gpu(monkeypatch):
    monkeypatch.setattr(dispatch, "table_for", lambda device: None)
    B._explaining.append(True)
    try:
        call = make_call("layer_norm", torch.randn(2, 8))
        B._auto("layer_norm", B._REGISTRY["layer_norm"], torch.device("cuda"), call)
    except B._Explained as done:
        assert done.explanation.backend == "torch" and "aigc-kernels tune" in done.explanation.reason
    finally:
        B._explaining.pop()


def _calls():
    """Calls that differ in every field a key reads, each with grad on and off."""
    out = []
    for grad in (False, True):
        for lq, lk, hkv, d in ((1, 16, 4, 32), (3, 16, 4, 32), (3, 17, 4, 32), (3, 40, 2, 32), (5, 40, 2, 64)):
            q, k, v = qkv(lq=lq, lk=lk, d=d, hkv=hkv, grad=grad)
            out += [make_call("attention", q, k, v), make_call("attention", q, k, v, causal=True),
                    make_call("attention", q, k, v, attn_mask=torch.ones(lq, lk, dtype=torch.bool)),
                    make_call("attention", q, k, v, attn_mask=torch.zeros(lq, lk)),
                    make_call("attention", q, k, v, window_size=(2, 0)), make_call("attention", q, k, v, softcap=3.0),
                    make_call("attention", q.half(), k.half(), v.half()),
                    make_call("attention", q, k, v, dropout_p=0.1)]
            kc = torch.zeros(2, hkv, lk + 8, d)
            lens = torch.full((2,), 3, dtype=torch.int32)
            out += [make_call("attention_with_kvcache", q.detach(), kc, kc, lens),
                    make_call("attention_with_kvcache", q.detach(), kc, kc, lens, causal=False),
                    make_call("attention_with_kvcache", q.detach(), kc, kc, lens, k_new=kc[:, :, :lq],
                              v_new=kc[:, :, :lq]),
                    make_call("kvcache_append", kc, kc, kc[:, :, :lq], kc[:, :, :lq], lens)]
            cu = torch.tensor([0, lq, 2 * lq], dtype=torch.int32)
            packed = [t.transpose(1, 2)[:, :lq].reshape(2 * lq, t.shape[1], d) for t in (q, k, v)]
            out.append(make_call("attention_varlen", *packed, cu, cu, lq, lq, causal=lq > 3))
        for rows, n in ((4, 64), (5, 64), (4, 65), (300, 64)):
            x, w = torch.randn(rows, n, requires_grad=grad), torch.randn(n)
            out += [make_call("layer_norm", x, w, w), make_call("layer_norm", x, w, w, residual=x),
                    make_call("rms_norm", x, w), make_call("rms_norm", x.detach(), w, residual=x.detach()),
                    make_call("linear", x, torch.randn(n, n)),
                    make_call("linear", x, torch.randn(2 * n, n), torch.randn(2 * n), "gelu"),
                    make_call("ffn", x, torch.randn(4 * n, n), None, torch.randn(n, 4 * n), None, "silu",
                              torch.randn(4 * n, n)),
                    make_call("ffn", x, torch.randn(4 * n, n), None, torch.randn(n, 4 * n), None, "gelu",
                              recompute=True)]
    return out


def test_a_signature_determines_the_key():
    """auto memoizes the table's entry by the call's signature: two calls with one signature must have
    one key (and the signatures must not be so coarse that different keys share one)."""
    calls = _calls()
    by_sig = {}
    for call in calls:
        by_sig.setdefault(dispatch.signature(call), set()).add(dispatch.key(call))
    assert all(len(keys) == 1 for keys in by_sig.values()), [k for k in by_sig.values() if len(k) > 1]
    assert len(by_sig) > len(calls) // 2  # and they tell most of these calls apart


def test_auto_without_explaining_chooses_what_explain_says(monkeypatch):
    """The per-call path of auto on a GPU (memoized by signature, no reasons built) picks what the
    explained path picks: the winner when it takes the call, else torch; the key is built once."""
    monkeypatch.setattr(B, "_available", lambda name: True)
    monkeypatch.setattr(B, "_device_reason", lambda backend, device: None)
    calls = _calls()
    winners = ("triton", "cuda", "reference", "torch", "nobody")
    entries = [(str(dispatch.key(c)), winners[i % len(winners)], {}) for i, c in enumerate(calls) if i % 7]
    table = dispatch.Table(NAME, CAP, dispatch.current_versions(),
                           [dispatch.Entry(dispatch.Key.parse(k), best, ms) for k, best, ms in entries], "test table")
    monkeypatch.setattr(dispatch, "table_for", lambda device: table)
    built = []
    real_key = dispatch.key
    monkeypatch.setattr(dispatch, "key", lambda call: built.append(1) or real_key(call))
    cuda = torch.device("cuda")
    picked = set()
    for _ in range(2):
        for call in calls:
            impls = B._REGISTRY[call.op]
            B._explaining.append(True)
            try:
                B._auto(call.op, impls, cuda, call)
            except B._Explained as done:
                want = done.explanation.backend
            finally:
                B._explaining.pop()
            got = B._auto(call.op, impls, cuda, call)
            assert got is impls[want].fn(), (call.op, want)
            picked.add(want)
    assert {"triton", "cuda", "torch"} <= picked
    sigs = {dispatch.signature(c) for c in calls}
    assert len(built) == 2 * len(calls) + len(sigs)  # explain builds a key each time; auto once per signature


def test_explain_names_backend_and_reason_and_checks_arguments():
    x = torch.randn(3, 8)
    assert ak.explain("layer_norm", x, backend="reference").backend == "reference"
    assert "runs on 'torch'" in str(ak.explain("layer_norm", x))
    with pytest.raises(ValueError, match="expected weight of shape"):
        ak.explain("layer_norm", x, torch.ones(7))
    with pytest.raises(ValueError, match="expected an op"):
        ak.explain("softmax", x)


def test_tune_picks_the_fastest_only_beyond_the_margin(monkeypatch):
    assert tune.choose({"torch": 1.0, "triton": 0.99}, 0.03) == "torch"  # within the noise margin
    assert tune.choose({"torch": 1.0, "triton": 0.9}, 0.03) == "triton"
    assert tune.choose({"torch": 1.0, "triton": float("inf")}, 0.03) == "torch"
    assert tune.choose({}, 0.03) == "torch"


def test_tune_writes_a_table_auto_can_read(cache, monkeypatch):
    """tune on the CPU with a fake timer and a registered fake backend: the table it writes loads, and
    its entries are what the timings say."""
    calls = []

    def fast_rms(x, weight=None, eps=1e-6, residual=None):
        calls.append(1)
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)

    monkeypatch.setitem(B._REGISTRY, "rms_norm", dict(B._REGISTRY["rms_norm"]))
    B.register("rms_norm", "triton", lambda: fast_rms, None)
    monkeypatch.setattr(B, "_available", lambda name: True)
    monkeypatch.setattr(tune, "_available", lambda name: True)
    monkeypatch.setattr(tune, "_why_not", lambda impl, call: None)

    def timer(fn, device):
        n = len(calls)
        fn()
        return 1.0 if len(calls) > n else 2.0  # the fake kernel is "twice as fast"

    table = tune.run(["rms_norm"], (torch.float32,), quick=True, device=torch.device("cpu"), timer=timer)
    assert table.entries and all(e.best == "triton" and e.ms == {"triton": 1.0, "torch": 2.0} for e in table.entries)
    assert {("grad" in e.key.features) for e in table.entries} == {True, False}
    path = table.write(cache / "t.json")
    loaded = dispatch.Table.from_json(json.loads(path.read_text()))
    assert [str(e.key) for e in loaded.entries] == [str(e.key) for e in table.entries]


def test_tune_survives_a_failing_backend_and_says_why(cache, monkeypatch):
    """A kernel that raises on a case (a compile error, say) is not timed there, auto keeps 'torch' for
    that key, the failure is in the table's meta, and the run measures the remaining cases."""
    def broken_rms(x, weight=None, eps=1e-6, residual=None):
        raise ValueError("planted: this config does not compile")

    monkeypatch.setitem(B._REGISTRY, "rms_norm", dict(B._REGISTRY["rms_norm"]))
    B.register("rms_norm", "triton", lambda: broken_rms, None)
    monkeypatch.setattr(tune, "_available", lambda name: True)
    monkeypatch.setattr(tune, "_why_not", lambda impl, call: None)
    monkeypatch.setattr(tune, "candidates", lambda call: ["triton", "torch"])
    table = tune.run(["rms_norm"], (torch.float32,), quick=True, device=torch.device("cpu"),
                     timer=lambda fn, device: (fn(), 1.0)[1])
    assert len(table.entries) == table.meta["of"] == 4
    assert all(e.best == "torch" and e.ms == {"torch": 1.0} for e in table.entries)
    fails = table.meta["failures"]
    assert len(fails) == 4 and all(f["backend"] == "triton" and "planted" in f["error"] for f in fails)
    assert dispatch.Table.from_json(table.to_json()).meta["failures"] == fails


def test_tune_order_takes_the_commonest_keys_of_every_op_first():
    quick, full = tune.cases(tune.TUNE_OPS, quick=True), tune.cases(tune.TUNE_OPS)
    ids = [(c.op, c.label) for c in full]
    assert len(set(ids)) == len(ids)  # the full grid measures each case once
    assert ids[:len(quick)] == [(c.op, c.label) for c in quick]  # the quick keys come first
    assert {c.op for c in full[:len(tune.TUNE_OPS)]} == set(tune.TUNE_OPS)  # one case of every op, then the next
    assert {c.op for c in quick} == set(tune.TUNE_OPS) and {c.grad for c in quick} == {True, False}
    assert len(full) > 2 * len(quick)
    with pytest.raises(ValueError, match="expected ops among"):
        tune.cases(["attention", "softmax"])


def test_tune_stops_at_its_budget_and_checkpoints_every_case(cache, monkeypatch):
    """A fake clock that advances 10 s per timing, one candidate per case: a 35 s budget starts four
    cases (at 0, 10, 20, 30 s), every finished case is checkpointed, and the table says how many cases
    it left."""
    monkeypatch.setattr(tune, "candidates", lambda call: ["torch"])
    now = [0.0]

    def timer(fn, device):
        now[0] += 10.0
        return 1.0

    seen = []
    path = cache / "partial.json"

    def checkpoint(t):
        seen.append(len(t.entries))
        t.write(path)

    table = tune.run(["layer_norm", "rms_norm"], (torch.float32,), quick=True, device=torch.device("cpu"),
                     timer=timer, budget_s=35, checkpoint=checkpoint, clock=lambda: now[0])
    total = len(tune.cases(["layer_norm", "rms_norm"], quick=True))
    assert seen == [1, 2, 3, 4] and len(table.entries) == 4
    assert table.meta["cases"] == 4 and table.meta["of"] == total
    assert f"{total - 4} of {total} cases not measured" in table.meta["stopped"]
    loaded = dispatch.Table.from_json(json.loads(path.read_text()))  # the last checkpoint: 4 entries, its meta
    assert len(loaded.entries) == 4 and loaded.meta["cases"] == 4 and "stopped" not in loaded.meta
    assert [p.name for p in cache.iterdir()] == ["partial.json"]  # written atomically: no temporary left over
    finished = tune.run(["rms_norm"], (torch.float32,), quick=True, device=torch.device("cpu"), timer=timer)
    assert finished.meta["cases"] == finished.meta["of"] == len(finished.entries) and "stopped" not in finished.meta


def test_cli_tune_budget_and_output(tmp_path, capsys):
    from aigc_kernels import cli

    out = tmp_path / "t.json"
    assert cli.main(["tune", "--device", "cpu", "--quick", "--op", "rms_norm", "--dtype", "float32",
                     "--budget-s", "0", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "measured 0 of 4 cases" in text and "time budget of 0 s spent" in text
    data = json.loads(out.read_text())
    assert data["entries"] == [] and data["measured"]["stopped"].startswith("time budget")


def test_cli_tune_without_a_gpu_says_why(capsys):
    from aigc_kernels import cli

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    assert cli.main(["tune", "--quick"]) == 2
    assert "nothing to choose" in capsys.readouterr().out


def _gen_module():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_dispatch_tables", root / "scripts" / "gen_dispatch_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_tables_are_generated_from_recorded_runs(tmp_path):
    gen = _gen_module()
    assert gen.main(["--check"]) == 0  # what the package ships is what the recorded runs give
    versions = dispatch.current_versions()
    for day, best in (("2026-01-01", "triton"), ("2026-02-01", "cuda")):
        write_table(tmp_path / f"tune-h200-{day}.json",
                    [("rms_norm|bfloat16|n=1024|rows=4096", best, {best: 1.0, "torch": 2.0}),
                     (f"layer_norm|bfloat16|n={1024 if day.endswith('01-01') else 2048}|rows=4096", "torch", {})],
                    versions=versions)
    (tmp_path / "bench-run.json").write_text('{"schema": 1, "env": {}, "results": []}')  # not a table
    write_table(tmp_path / "tune-cpu-2026-03-01.json", [("rms_norm|float32|n=1024|rows=4096", "torch", {})],
                versions=versions, device="cpu", capability=(0, 0))  # a dry run's CPU table: no arch to ship
    out = gen.generate(tmp_path)
    assert list(out) == ["sm_90.json"]
    table = dispatch.Table.from_json(json.loads(out["sm_90.json"]))
    by_key = {str(e.key): e.best for e in table.entries}
    assert by_key["rms_norm|bfloat16|n=1024|rows=4096"] == "cuda"  # the newer run wins
    assert len(by_key) == 3

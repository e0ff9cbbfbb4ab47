"""Checking an op on a backend against the reference: the rule, the inputs, the report.

The rule (FlashAttention's): run the reference in float64 to get the truth, and again in the
kernel's own dtype to learn how much error that precision alone causes; the kernel passes when
its error is at most ``factor`` (2) times that, plus a small absolute floor. Used by the test
suite and by ``aigc-kernels check``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch

from . import backend as backend_registry
from . import reference
from .backend import use_backend
from .validation import make_call

# Absolute floors added to the bound: what one rounding of an O(1) value costs, roughly.
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_abs_err(a, b) -> float:
    """Largest |a - b| over tensors or tuples of tensors, computed in float64."""
    if isinstance(a, (tuple, list)):
        if len(a) != len(b):
            raise ValueError(f"max_abs_err: {len(a)} outputs against {len(b)} in the reference")
        return max((max_abs_err(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if a is None and b is None:
        return 0.0
    if a.numel() == 0:
        return 0.0
    diff = (a.double() - b.double()).abs()
    # NaN where the reference is also NaN counts as agreement (propagation is the contract).
    both_nan = torch.isnan(a.double()) & torch.isnan(b.double())
    diff = diff.masked_fill(both_nan, 0.0)
    return float(diff.nan_to_num(float("inf")).max())


def error_bound(ref_lowp, ref_fp64, dtype: torch.dtype, factor: float = 2.0) -> float:
    return factor * max_abs_err(ref_lowp, ref_fp64) + ATOL[dtype]


def assert_close_to_reference(out, ref_fp64, ref_lowp, *, dtype: torch.dtype | None = None,
                              factor: float = 2.0, name: str = "output") -> None:
    """Assert |out - ref_fp64| <= factor * |ref_lowp - ref_fp64| + ATOL[dtype]."""
    first = out[0] if isinstance(out, (tuple, list)) else out
    dtype = dtype or first.dtype
    err, bound = max_abs_err(out, ref_fp64), error_bound(ref_lowp, ref_fp64, dtype, factor)
    assert err <= bound, (f"{name}: max |out - ref| = {err:.3g} exceeds the bound {bound:.3g} "
                          f"({factor} x the {dtype} reference's own error + {ATOL[dtype]:.1g})")


def fwd_bwd(fn: Callable, tensors, grad_seed: int = 1) -> tuple[torch.Tensor, ...]:
    """(out, grad of each input) of fn(*tensors) for a fresh random output gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(grad_seed)
    dout = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    return (out.detach(), *torch.autograd.grad(out, leaves, dout))


def check_fwd_bwd(kernel_fn: Callable, ref_fn: Callable, tensors, dtype: torch.dtype, *, grads: bool = True,
                  names=("out", "dq", "dk", "dv")) -> None:
    """kernel_fn vs ref_fn in float64 (output and, with grads, input gradients), each finite and within
    2x the same-dtype reference's own error (assert_close_to_reference)."""
    if grads:
        got, ref64, lowp = (fwd_bwd(kernel_fn, tensors), fwd_bwd(ref_fn, [t.double() for t in tensors]),
                            fwd_bwd(ref_fn, tensors))
    else:
        with torch.no_grad():
            got, ref64, lowp = (kernel_fn(*tensors),), (ref_fn(*[t.double() for t in tensors]),), (ref_fn(*tensors),)
    assert len(got) == len(ref64) == len(lowp), f"{len(got)} outputs, the reference gives {len(ref64)}"
    for name, a, b, c in zip(names[:len(got)], got, ref64, lowp, strict=True):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        assert_close_to_reference(a, b, c, dtype=dtype, name=name)


# ----------------------------------------------------------------------------------------------
# sample inputs
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One call: op(*args, **kwargs). ``grad`` lists the arg names whose gradients are compared."""

    name: str
    args: dict
    kwargs: dict
    grad: tuple[str, ...] = ()
    mutates: tuple[str, ...] = ()  # args written in place (compared after the call)


def _rand(gen, *shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def cases(op: str, dtype: torch.dtype, device: torch.device | str, seed: int = 0) -> Iterator[Case]:
    """Small random inputs covering the features of ``op`` (odd sizes, masks, GQA, residual, ...)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, **kw: _rand(g, *s, dtype=dtype, device=device, **kw)  # noqa: E731
    i32 = lambda values: torch.tensor(values, dtype=torch.int32, device=device)  # noqa: E731
    if op == "attention":
        q, k, v = r(2, 4, 37, 32), r(2, 2, 45, 32), r(2, 2, 45, 32)  # head dim 32: every kernel takes it
        qkv = dict(q=q, k=k, v=v)
        yield Case("gqa", qkv, {}, ("q", "k", "v"))
        yield Case("gqa causal", qkv, dict(causal=True), ("q", "k", "v"))
        yield Case("window (8, 3)", qkv, dict(window_size=(8, 3)), ("q", "k", "v"))
        keep = torch.rand(2, 1, 37, 45, generator=g).to(device) > 0.3
        keep[:, :, 5] = False  # a row that sees no key
        yield Case("bool mask + empty row", qkv, dict(attn_mask=keep), ("q", "k", "v"))
        yield Case("float mask", qkv, dict(attn_mask=r(37, 45)), ("q", "k", "v"))
        yield Case("Lq > Lk causal", dict(q=r(1, 2, 45, 32), k=r(1, 2, 37, 32), v=r(1, 2, 37, 32)),
                   dict(causal=True, scale=0.3), ("q", "k", "v"))
    elif op == "attention_varlen":
        cu_q, cu_k = i32([0, 5, 5, 18]), i32([0, 7, 9, 22])
        args = dict(q=r(18, 4, 32), k=r(22, 2, 32), v=r(22, 2, 32), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                    max_seqlen_q=13, max_seqlen_k=13)
        yield Case("packed", args, {}, ("q", "k", "v"))
        yield Case("packed causal", args, dict(causal=True), ("q", "k", "v"))
    elif op == "attention_with_kvcache":
        for lq in (1, 3):
            args = dict(q=r(2, 4, lq, 32), k_cache=r(2, 2, 32, 32), v_cache=r(2, 2, 32, 32),
                        cache_seqlens=i32([5, 17]))
            yield Case(f"Lq={lq} append", args, dict(k_new=r(2, 2, lq, 32), v_new=r(2, 2, lq, 32)),
                       mutates=("k_cache", "v_cache"))
        yield Case("no append, not causal", dict(q=r(2, 4, 2, 32), k_cache=r(2, 2, 32, 32),
                                                 v_cache=r(2, 2, 32, 32), cache_seqlens=i32([0, 31])),
                   dict(causal=False))
        t = torch.arange(40, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(12) / 12)
        rot = dict(rotary_cos=t.cos().to(device, dtype), rotary_sin=t.sin().to(device, dtype))
        for causal, interleaved in ((True, False), (False, True)):  # rotary 24 of 32 features
            args = dict(q=r(2, 4, 2, 32), k_cache=r(2, 2, 32, 32), v_cache=r(2, 2, 32, 32), cache_seqlens=i32([3, 29]))
            yield Case(f"append 2, rotary {'GPT-J' if interleaved else 'NeoX'}{', not causal' if not causal else ''}",
                       args, dict(k_new=r(2, 2, 2, 32), v_new=r(2, 2, 2, 32), causal=causal,
                                  rotary_interleaved=interleaved, **rot), mutates=("k_cache", "v_cache"))
        # a paged cache: pages of 4 rows in shuffled order, the table wider than the rows used (padding ids)
        table = torch.randperm(14, generator=g)[:12].view(2, 6).to(device=device, dtype=torch.int32)
        table[0, 4:] = 99
        yield Case("paged (page 4), append 3", dict(q=r(2, 4, 3, 32), k_cache=r(14, 4, 2, 32), v_cache=r(14, 4, 2, 32),
                                                     cache_seqlens=i32([9, 21])),
                   dict(k_new=r(2, 2, 3, 32), v_new=r(2, 2, 3, 32), block_table=table), mutates=("k_cache", "v_cache"))
    elif op == "kvcache_append":
        yield Case("append 3 rows", dict(k_cache=r(2, 2, 16, 8), v_cache=r(2, 2, 16, 8), k_new=r(2, 2, 3, 8),
                                         v_new=r(2, 2, 3, 8), cache_seqlens=i32([0, 13])), {},
                   mutates=("k_cache", "v_cache"))
        table = torch.tensor([[5, 1, 7], [0, 3, 2]], dtype=torch.int32, device=device)
        yield Case("paged (page 4), append 3", dict(k_cache=r(8, 4, 2, 8), v_cache=r(8, 4, 2, 8), k_new=r(2, 2, 3, 8),
                                                     v_new=r(2, 2, 3, 8), cache_seqlens=i32([2, 9])),
                   dict(block_table=table), mutates=("k_cache", "v_cache"))
    elif op in ("layer_norm", "rms_norm"):
        bias = (lambda n: {"bias": r(n)}) if op == "layer_norm" else (lambda n: {})  # noqa: E731
        yield Case("3x7x33 affine", dict(x=r(3, 7, 33), weight=r(33), **bias(33)), {}, ("x", "weight", *bias(1)))
        yield Case("1023, no affine", dict(x=r(4, 1023, scale=3.0)), {}, ("x",))
        yield Case("residual", dict(x=r(5, 40), weight=r(40), **bias(40)), dict(residual=r(5, 40)),
                   ("x", "weight", *bias(1), "residual"))
    elif op == "linear":
        x, w, b = r(17, 40), r(72, 40, scale=0.2), r(72)
        for act in (None, *reference.ACTIVATIONS):
            yield Case(f"17x40x72 {act}", dict(x=x, weight=w, bias=b), dict(activation=act), ("x", "weight", "bias"))
        yield Case("3-D, no bias", dict(x=r(2, 3, 40), weight=w), dict(activation="gelu_tanh"), ("x", "weight"))
    elif op == "ffn":
        x = r(3, 5, 24)
        plain = dict(x=x, w_in=r(40, 24, scale=0.2), b_in=r(40), w_out=r(24, 40, scale=0.2), b_out=r(24))
        yield Case("plain gelu", plain, dict(activation="gelu"), tuple(plain))
        gate = dict(w_gate=r(40, 24, scale=0.2), b_gate=r(40))
        yield Case("SwiGLU", plain, dict(activation="silu", **gate), (*plain, "w_gate", "b_gate"))
        yield Case("GeGLU, recompute", plain, dict(activation="gelu", recompute=True, **gate),
                   (*plain, "w_gate", "b_gate"))
        yield Case("plain relu, recompute", plain, dict(activation="relu", recompute=True), tuple(plain))
    elif op == "rotary":
        def angles(lmax, half):  # cos/sin rows of real angles (p * inv_freq), in the case's dtype
            t = torch.arange(lmax, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(half) / half)
            return t.cos().to(device=device, dtype=dtype), t.sin().to(device=device, dtype=dtype)

        cos, sin = angles(40, 16)
        x = r(2, 3, 11, 32)
        yield Case("NeoX", dict(x=x, cos=cos, sin=sin), {}, ("x",))
        yield Case("GPT-J (interleaved)", dict(x=x, cos=cos, sin=sin), dict(interleaved=True), ("x",))
        pos = torch.randint(0, 40, (2, 11), generator=g).to(device)
        cos24, sin24 = angles(40, 12)  # partial: 24 of 40 features rotate
        yield Case("partial 24/40, position_ids, grad cos/sin", dict(x=r(2, 3, 11, 40), cos=cos24, sin=sin24),
                   dict(position_ids=pos), ("x", "cos", "sin"))
        yield Case("in place, interleaved, (1, L) positions", dict(x=r(2, 3, 11, 40), cos=cos24, sin=sin24),
                   dict(position_ids=pos[:1], interleaved=True, inplace=True), mutates=("x",))
    else:
        raise ValueError(f"cases: unknown op {op!r}")


# ----------------------------------------------------------------------------------------------
# running a case
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CheckResult:
    op: str
    backend: str
    dtype: str
    case: str
    fwd_err: float
    fwd_bound: float
    grad_err: float | None
    grad_bound: float | None
    error: str | None = None
    unsupported: str | None = None  # why the backend's kernel does not take this case (not run)

    @property
    def status(self) -> str:
        """"pass", "fail", or "n/a" (the backend's kernel does not take this case: nothing ran)."""
        if self.unsupported is not None:
            return "n/a"
        ok = (self.error is None and self.fwd_err <= self.fwd_bound
              and (self.grad_err is None or self.grad_err <= self.grad_bound))
        return "pass" if ok else "fail"

    @property
    def passed(self) -> bool:
        """It ran and it passed (an "n/a" case did not run, so it did not pass)."""
        return self.status == "pass"

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def _clone(v, dtype=None, requires_grad=False):
    if not isinstance(v, torch.Tensor):
        return v
    t = v.detach().clone()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.requires_grad_(requires_grad and t.is_floating_point())


def _run(fn: Callable, case: Case, dtype, gen_seed: int):
    """Call fn on copies of the case's inputs (in ``dtype`` when given); return (outputs, grads)."""
    args = {name: _clone(v, dtype, name in case.grad) for name, v in case.args.items()}
    kwargs = {name: _clone(v, dtype, name in case.grad) for name, v in case.kwargs.items()}
    out = fn(*args.values(), **kwargs)
    if case.mutates:
        out = (out, *(args[n] for n in case.mutates))
    outs = out if isinstance(out, tuple) else (out,)
    grads = None
    leaves = [t for t in (*args.values(), *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    if leaves:
        g = torch.Generator().manual_seed(gen_seed)
        diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        cot = [torch.randn(o.shape, generator=g).to(device=o.device, dtype=o.dtype) for o in diff]
        grads = torch.autograd.grad(diff, leaves, cot, allow_unused=True)
        grads = tuple(torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads, strict=True))
    outs = tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in outs if o is not None)
    return outs, grads


def check_case(op: str, backend: str, case: Case, dtype: torch.dtype, factor: float = 2.0,
               fn: Callable | None = None) -> CheckResult:
    """Run ``case`` on ``backend`` (or through ``fn``, e.g. a torch.ops op, labelled ``backend``) and
    judge it against the float64 and same-dtype references."""
    from . import ops

    public = getattr(ops, op) if fn is None else fn
    ref = getattr(reference, op)
    result = CheckResult(op, backend, str(dtype).removeprefix("torch."), case.name, float("nan"), 0.0, None, None)
    if fn is None:  # a case outside what this backend's kernel takes (e.g. masks on "cuda") is not a failure
        impl = backend_registry.implementation(op, backend)
        why = impl.why_not(make_call(op, *case.args.values(), **case.kwargs)) if impl is not None else None
        if why is not None:
            result.unsupported = why
            return result
    try:
        with use_backend(backend if fn is None else "auto"):
            out, grads = _run(public, case, None, 1)
    except Exception as exc:  # reported in the table, not raised: check covers every op
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    out64, grads64 = _run(ref, case, torch.float64, 1)
    outlp, gradslp = _run(ref, case, None, 1)
    result.fwd_err, result.fwd_bound = max_abs_err(out, out64), error_bound(outlp, out64, dtype, factor)
    if grads is not None:
        result.grad_err = max_abs_err(grads, grads64)
        result.grad_bound = error_bound(gradslp, grads64, dtype, factor)
    return result

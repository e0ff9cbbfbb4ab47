#!/usr/bin/env python3
"""Generate text with a Hugging Face GPT-2 through ``generate()``: with transformers' own attention
("sdpa"), with ``attn_implementation="aigc_kernels"``, and after ``ak.patch`` -- greedy and sampled,
dynamic and static KV cache -- printing tokens/s side by side and checking that greedy decoding
gives the same tokens.

The pretrained GPT-2 is used when it is on this machine (``--model gpt2``, or any local path; nothing
is downloaded); otherwise a small random GPT-2 (its text is gibberish, its speed is real).

    python examples/gpt2_generate.py --prompt "The fastest attention kernel"
    python examples/gpt2_generate.py --tiny                # seconds on a CPU, random weights
"""

from __future__ import annotations

import os
import warnings

import torch
import transformers
from _common import Timer, base_parser, console, show_backends

import aigc_kernels as ak

warnings.filterwarnings("ignore", message=".*generation flags.*")
transformers.logging.set_verbosity_error()


def load(name: str, tiny: bool, device: str, dtype: torch.dtype):
    """(model, tokenizer or None): the local pretrained model, else a random one."""
    if not tiny:
        try:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            tok = transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
            model = transformers.GPT2LMHeadModel.from_pretrained(name, local_files_only=True,
                                                                 attn_implementation="sdpa")
            console.print(f"pretrained {name}")
            return model.to(device=device, dtype=dtype).eval(), tok
        except OSError:
            console.print(f"[yellow]{name} is not on this machine: a random GPT-2 instead (no download)[/]")
    torch.manual_seed(0)
    size = dict(n_embd=64, n_layer=2, n_head=4) if tiny else dict(n_embd=768, n_layer=12, n_head=12)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=1024, attn_implementation="sdpa", **size)
    return transformers.GPT2LMHeadModel(cfg).to(device=device, dtype=dtype).eval(), None


def run(model, ids, mask, new_tokens: int, device: str, **kw):
    torch.manual_seed(0)
    with Timer(device) as t, torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=0, **kw)
    return out, ids.shape[0] * new_tokens / t.seconds


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2", help="a local pretrained GPT-2 name or path (default gpt2)")
    p.add_argument("--prompt", default="The fastest way to run a transformer is")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    if args.tiny:
        args.new_tokens, args.batch = 6, 2
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, tok = load(args.model, args.tiny, args.device, dtype)
    if tok is not None:
        enc = tok([args.prompt] * args.batch, return_tensors="pt")
        ids, mask = enc.input_ids.to(args.device), enc.attention_mask.to(args.device)
    else:
        ids = torch.randint(100, 50000, (args.batch, 8), generator=torch.Generator().manual_seed(args.seed))
        ids, mask = ids.to(args.device), torch.ones_like(ids).to(args.device)
    settings = {"greedy, dynamic cache": dict(do_sample=False),
                "greedy, static cache": dict(do_sample=False, cache_implementation="static"),
                "sampled (top-p 0.9), dynamic cache": dict(do_sample=True, top_p=0.9, temperature=0.8)}
    ak.register_hf()
    rows, ok = [], True
    for label, kw in settings.items():
        model.set_attn_implementation("sdpa")
        ref, tps_ref = run(model, ids, mask, args.new_tokens, args.device, **kw)
        with ak.use_backend(args.backend):
            model.set_attn_implementation("aigc_kernels")
            reg, tps_reg = run(model, ids, mask, args.new_tokens, args.device, **kw)
        model.set_attn_implementation("sdpa")
        report = ak.patch(model, backend=args.backend)
        pat, tps_pat = run(model, ids, mask, args.new_tokens, args.device, **kw)
        ak.unpatch(model)
        same = torch.equal(ref, reg) and torch.equal(ref, pat)
        if kw.get("do_sample") is False:
            ok &= same
        rows.append((label, tps_ref, tps_reg, tps_pat, same))
    show_backends(report)
    console.print(f"{'':38} {'sdpa tok/s':>11} {'registered':>11} {'ak.patch':>11}  same tokens")
    for label, a, b, c, same in rows:
        console.print(f"{label:38} {a:>11.1f} {b:>11.1f} {c:>11.1f}  {same}")
    if tok is not None:
        console.print("[bold]text (ak.patch, greedy):[/] " + tok.decode(pat[0], skip_special_tokens=True))
    if not args.device.startswith("cuda"):
        console.print("[dim]on CPU 'auto' runs PyTorch's own calls: the speed is the CPU path's, not the kernels'[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Train a sequence-to-sequence torch.nn.Transformer on a small text task, once as PyTorch runs it and
once after ``ak.patch``, and print the two loss curves and the speedup side by side.

The task: reverse a string of lowercase letters ("transformer" -> "remrofsnart"), generated on the fly,
character-level. Both runs start from the same weights and see the same batches, so their losses should
agree step by step (up to rounding); the patched run uses the library's attention, LayerNorm and FFN
(on "auto": the backend measured fastest on this GPU, else PyTorch's own calls).

    python examples/seq2seq_transformer.py                 # a GPU run
    python examples/seq2seq_transformer.py --tiny          # seconds on a CPU
    python examples/seq2seq_transformer.py --backend triton --steps 200
"""

from __future__ import annotations

import copy
import math
import random
import string
import warnings

import torch
from _common import base_parser, console, show_backends, train_steps
from torch import nn

import aigc_kernels as ak

warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
PAD, BOS, EOS = 0, 1, 2
VOCAB = [None, "<s>", "</s>", *string.ascii_lowercase]
STOI = {c: i for i, c in enumerate(VOCAB) if c is not None}


def make_batch(batch: int, max_len: int, rng: random.Random, device: str):
    """(src, tgt_in, tgt_out): source strings, decoder inputs (<s> + reversed) and targets (reversed + </s>)."""
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, max_len))) for _ in range(batch)]
    src = torch.full((batch, max_len), PAD)
    tgt_in = torch.full((batch, max_len + 1), PAD)
    tgt_out = torch.full((batch, max_len + 1), PAD)
    for i, w in enumerate(words):
        s = [STOI[c] for c in w]
        r = s[::-1]
        src[i, :len(s)] = torch.tensor(s)
        tgt_in[i, :len(r) + 1] = torch.tensor([BOS, *r])
        tgt_out[i, :len(r) + 1] = torch.tensor([*r, EOS])
    return src.to(device), tgt_in.to(device), tgt_out.to(device)


class Seq2Seq(nn.Module):
    """embedding -> nn.Transformer -> linear, with sinusoidal positions."""

    def __init__(self, d_model: int, heads: int, layers: int, ff: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), d_model, padding_idx=PAD)
        pos = torch.arange(max_len + 1).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len + 1, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe)
        self.transformer = nn.Transformer(d_model, heads, layers, layers, ff, dropout=0.0, batch_first=True,
                                          norm_first=True)
        self.out = nn.Linear(d_model, len(VOCAB))

    def forward(self, src, tgt):
        x = self.embed(src) + self.pe[: src.shape[1]]
        y = self.embed(tgt) + self.pe[: tgt.shape[1]]
        causal = self.transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device, dtype=torch.bool)
        h = self.transformer(x, y, tgt_mask=causal, src_key_padding_mask=src == PAD,
                             tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD)
        return self.out(h)


def train(model, batches, lr: float, device: str, label: str):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)

    def loss_of(batch):
        src, tgt_in, tgt_out = batch
        logits = model(src, tgt_in)
        return loss_fn(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))

    return train_steps(opt, batches, loss_of, device, f"training ({label})")


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.batch = 8, 8
    d_model, heads, layers, ff, max_len = (32, 4, 1, 64, 8) if args.tiny else (256, 8, 3, 1024, 24)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    batches = [make_batch(args.batch, max_len, rng, args.device) for _ in range(args.steps)]
    plain = Seq2Seq(d_model, heads, layers, ff, max_len).to(args.device)
    patched = copy.deepcopy(plain)
    console.print(f"[bold]seq2seq[/]: reverse strings; nn.Transformer d_model={d_model}, {layers}+{layers} layers, "
                  f"batch {args.batch}, {args.steps} steps on {args.device}")
    report = ak.patch(patched, backend=args.backend)
    show_backends(report)
    losses_plain, t_plain = train(plain, batches, 1e-3, args.device, "PyTorch")
    losses_ours, t_ours = train(patched, batches, 1e-3, args.device, f"ak.patch backend={args.backend}")
    console.print(f"{'step':>6} {'PyTorch':>10} {'ak.patch':>10}")
    stride = max(1, args.steps // 10)
    for i in sorted({*range(0, args.steps, stride), args.steps - 1}):
        console.print(f"{i:>6} {losses_plain[i]:>10.4f} {losses_ours[i]:>10.4f}")
    worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(losses_plain, losses_ours, strict=True))
    console.print(f"largest relative loss difference: {worst:.2e}")
    console.print(f"time: PyTorch {t_plain:.2f} s, ak.patch {t_ours:.2f} s -> speedup {t_plain / t_ours:.2f}x"
                  + ("" if args.device.startswith("cuda") else " (CPU: PyTorch's own calls on both sides)"))
    return 0 if worst < 1e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())

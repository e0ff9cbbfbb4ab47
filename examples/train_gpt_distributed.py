"""Train ak.models.GPT with torch.distributed: DDP or FSDP2 (fully_shard), launched by torchrun.

    # 2 CPU processes (gloo), or GPUs (nccl) -- the same script
    torchrun --nproc-per-node 2 examples/train_gpt_distributed.py --mode ddp --steps 20
    torchrun --nproc-per-node 8 examples/train_gpt_distributed.py --mode fsdp2 --size small --backend auto
    # the same global batch in one process, for comparison
    python examples/train_gpt_distributed.py --mode single --steps 20

Every rank builds the same model from the same seed and draws the same synthetic global batch
each step; rank r trains on its contiguous slice of it. Gradients are averaged across ranks (DDP
all-reduce, or FSDP2 reduce-scatter), so each step equals a single-process step on the whole
global batch. The loss printed (and written with --losses-json) is the global-batch mean.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import aigc_kernels as ak
from aigc_kernels.models import GPT, TransformerConfig

SIZES = {
    "tiny": dict(vocab_size=256, d_model=64, n_heads=4, n_layers=2, max_seq_len=64),
    "small": dict(vocab_size=50304, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024),  # GPT-2 124M
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["single", "ddp", "fsdp2"], default="ddp")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=8, help="sequences per step, over all ranks")
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--backend", default=None, help="aigc-kernels backend: auto | cuda | triton | torch")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--losses-json", help="rank 0 writes the per-step losses here")
    return p.parse_args()


def main() -> None:
    args = parse()
    distributed = args.mode != "single"
    if distributed:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} must be divisible by the {world} ranks")
    local_batch = args.global_batch // world

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    cfg = TransformerConfig(**SIZES[args.size])
    dtype = getattr(torch, args.dtype)
    model = GPT(cfg, backend=args.backend).to(device=device, dtype=dtype)
    if args.mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                                          else None)
    elif args.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)  # the root: embeddings, tied head, final norm
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    data_gen = torch.Generator().manual_seed(args.seed + 1)  # the same global batches on every rank
    losses = []
    for step in range(args.steps):
        batch = torch.randint(0, cfg.vocab_size, (args.global_batch, args.seq + 1), generator=data_gen)
        mine = batch[rank * local_batch:(rank + 1) * local_batch].to(device)
        logits = model(mine[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), mine[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        global_loss = loss.detach().clone()
        if distributed:
            dist.all_reduce(global_loss)
            global_loss /= world
        losses.append(global_loss.item())
        if rank == 0:
            print(f"step {step:3d}  loss {losses[-1]:.6f}", flush=True)

    if rank == 0 and args.losses_json:
        with open(args.losses_json, "w") as f:
            json.dump({"mode": args.mode, "world": world, "losses": losses}, f)
    if distributed:
        dist.barrier()  # without it, tearing down right after the last all_reduce can abort (gloo)
        dist.destroy_process_group()


if __name__ == "__main__":
    ak.set_backend(os.environ.get("AIGC_KERNELS_BACKEND") or None)
    main()

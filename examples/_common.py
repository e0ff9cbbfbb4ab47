"""What the examples share: device/backend flags, a progress bar, timing, and printing which backend
runs each op. Not part of the library."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when there is a GPU)")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "triton", "torch", "reference"],
                   help="the aigc_kernels backend to patch in (default auto: the measured fastest, else PyTorch's own)")
    p.add_argument("--tiny", action="store_true", help="a few seconds on a CPU: tiny sizes, few steps (what CI runs)")
    p.add_argument("--seed", type=int, default=0)
    return p


def steps(n: int, what: str) -> Iterator[int]:
    """range(n) with a progress bar."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(what, total=n)
        for i in range(n):
            yield i
            progress.advance(task)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._t0


def train_steps(opt: torch.optim.Optimizer, batches: list, loss_of, device: str,
                what: str) -> tuple[list[float], float]:
    """One optimizer step per batch (loss_of(batch) -> loss), with a progress bar; returns the losses
    and the seconds spent in the steps (device-synchronized)."""
    losses, timer = [], Timer(device)
    for i in steps(len(batches), what):
        with timer:
            loss = loss_of(batches[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(loss.item())
    return losses, timer.seconds


def show_backends(report) -> None:
    """One line per op family: which backend ak.patch set for it (and the report's notes)."""
    console.print("[bold]aigc_kernels.patch:[/] " + ", ".join(f"{op} on '{b}'" for op, b in report.op_backends.items())
                  + f" ({len(report.replaced)} modules replaced, {len(report.left_alone)} left alone)")
    for note in report.notes:
        console.print(f"  note: {note}")


def explain_first_call(op: str, args: Iterable, kwargs: dict | None = None) -> None:
    import aigc_kernels as ak

    console.print(f"  {ak.explain(op, *args, **(kwargs or {}))}".splitlines()[0])

"""The ``aigc-kernels`` command: info | check | bench | tune | audit | compare.

    aigc-kernels info                  device, versions, build flags, backends and ops available here
    aigc-kernels check [--op OP ...] [--backend B ...] [--json FILE]
                                       every op x backend against the float64 reference; exit 1 on failure
    aigc-kernels bench [--op OP ...] [--backend P ...] [--mode M ...] [--quick] [--json F] [--csv F] [--plots DIR]
                                       time every op x provider x mode (CUDA events), check what it times
    aigc-kernels tune [--op OP ...] [--dtype D] [--quick] [--budget-s S] [--output F]
                                       time every backend per op and bucketed shape on this GPU; write the
                                       dispatch table "auto" reads
    aigc-kernels audit [--arch 90a,80] [--json F]
                                       compile every Triton kernel for GPU targets (no GPU needed): errors,
                                       shared memory, registers, spills, wgmma/TMA use; exit 1 on a finding
    aigc-kernels audit --perf [--json F]
                                       the performance model: our CUDA attention kernels' bounds beside FA2's
    aigc-kernels compare BASE.json NEW.json [--threshold PCT]
                                       per-case ratios; exit 1 when a case is slower by more than PCT %
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from . import _files

# aigc_kernels.audit.FAMILIES' names (the audit imports triton: the parser must not; a test compares them)
AUDIT_FAMILIES = ["attention", "norm", "gemm", "rotary", "tune"]

SPEED_NOTE = ("No CUDA GPU here: kernel speed needs a CUDA GPU. Timings on this machine (the torch reference on "
              "CPU, or Triton's interpreter) say nothing about kernel speed.")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    from . import __version__

    return {"aigc-kernels": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torch CUDA": torch.version.cuda or "none (CPU build)", "triton": version("triton"),
            "transformers": version("transformers")}


def _console() -> Console:
    # Wide tables stay readable when the output goes to a file or a CI log.
    return Console() if sys.stdout.isatty() else Console(width=160)


def cmd_info(args: argparse.Namespace) -> int:
    from . import _ext, backend, ops

    console = _console()
    gpu = torch.cuda.is_available()
    device = (f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}, "
              f"{torch.cuda.device_count()} visible)") if gpu else f"CPU only ({platform.processor() or 'cpu'})"
    table = Table(title="aigc-kernels info", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("device", device)
    for name, value in _versions().items():
        table.add_row(name, value)
    built, why = _ext.status()
    build = _ext.build_info()
    table.add_row("extension aigc_kernels._C", ("loaded: " if built else "unavailable: ") + why)
    if build:
        table.add_row("  built for archs", build.get("archs", "?"))
        built_with = (f"torch {build.get('torch_version', '?')}, CUDA {build.get('cuda_version', '?')}, "
                      f"{build.get('cuda_home', '?')}")
        table.add_row("  built with", built_with)
    if built:
        compiled = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("aigc_kernels::"))
        table.add_row("  torch.ops.aigc_kernels", ", ".join(compiled) or "none")
    table.add_row("default backend", backend.get_backend())
    table.add_row("auto's dispatch table", _dispatch_status())
    console.print(table)

    impls = backend.implementations()
    status = backend.backend_status()
    bt = Table(title="backends")
    bt.add_column("backend")
    bt.add_column("available")
    bt.add_column("why")
    bt.add_column("ops implemented")
    for name in backend.BACKENDS:
        ok, reason = status[name]
        have = [op for op in ops.PUBLIC_OPS if name in impls.get(op, [])]
        bt.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", reason, ", ".join(have) or "none yet")
    console.print(bt)
    if not gpu:
        console.print(f"[yellow]{SPEED_NOTE}[/]")
    return 0


def _dispatch_status() -> str:
    """Which dispatch table "auto" uses on this machine, or why none."""
    if not torch.cuda.is_available():
        return "none on CPU: 'auto' runs PyTorch's own calls ('torch') for CPU tensors"
    from . import dispatch

    table = dispatch.table_for(torch.device("cuda", torch.cuda.current_device()))
    if table is None:
        path = dispatch.user_table_path(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
        return f"none for this GPU: 'auto' runs PyTorch's own calls ('torch') until `aigc-kernels tune` writes {path}"
    return f"{table.source}: {len(table.entries)} measured keys"


def _check_dtypes(device: torch.device, name: str) -> list[torch.dtype]:
    if device.type == "cuda":
        return [torch.float16, torch.bfloat16, torch.float32]
    if name == "triton":  # the interpreter has no bfloat16 tl.dot
        return [torch.float32, torch.float16]
    return [torch.float32]


def cmd_check(args: argparse.Namespace) -> int:
    from . import backend, ops, testing

    console = _console()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wanted_ops = args.op or list(ops.PUBLIC_OPS)
    unknown = sorted(set(wanted_ops) - set(ops.PUBLIC_OPS))
    if unknown:
        console.print(f"[red]unknown op(s) {unknown}; expected some of {list(ops.PUBLIC_OPS)}[/]")
        return 2
    available = backend.available_backends()
    # the reference is the oracle every backend is judged by: checking it against itself proves nothing
    wanted_backends = args.backend or [b for b in backend.BACKENDS if b != "reference"]
    status = backend.backend_status()
    table = Table(title=f"aigc-kernels check on {device} (float64 reference; pass = err <= 2x the same-dtype "
                        "reference's error + floor)")
    for col in ("op", "backend", "dtype", "case", "fwd err", "bound", "grad err", "bound", "result"):
        table.add_column(col, justify="right" if "err" in col or col == "bound" else "left")
    results, skipped = [], []
    t0 = time.perf_counter()

    def save() -> None:
        _files.write_json(args.json, {"device": str(device), "versions": _versions(),
                                      "results": [dict(vars(r), passed=r.passed, status=r.status) for r in results],
                                      "skipped": [dict(op=o, backend=b, why=w) for o, b, w in skipped]}, indent=2)

    for op in wanted_ops:
        for name in wanted_backends:
            if name not in backend.implementations(op)[op]:
                skipped.append((op, name, "not implemented yet"))
                continue
            if name not in available:
                skipped.append((op, name, status[name][1]))
                continue
            if args.json:  # what is checked so far: a run cut off (a time limit) keeps it
                save()
            done, t_group = len(results), time.perf_counter()
            for dtype in _check_dtypes(device, name):
                for case in testing.cases(op, dtype, device, seed=args.seed):
                    r = testing.check_case(op, name, case, dtype)
                    results.append(r)
                    verdict = {"pass": "[green]pass[/]", "fail": f"[red]FAIL[/] {r.error or ''}",
                               "n/a": f"[dim]n/a: {r.unsupported}[/]"}[r.status]
                    g = "-" if r.grad_err is None else f"{r.grad_err:.2e}"
                    gb = "-" if r.grad_bound is None else f"{r.grad_bound:.2e}"
                    table.add_row(op, name, r.dtype, r.case, f"{r.fwd_err:.2e}", f"{r.fwd_bound:.2e}", g, gb, verdict)
            group = results[done:]
            console.print(f"check {op} {name}: {sum(r.status == 'pass' for r in group)} pass, "
                          f"{sum(r.failed for r in group)} failed, {sum(r.status == 'n/a' for r in group)} n/a "
                          f"({time.perf_counter() - t_group:.1f} s)", highlight=False)
    # The compiled ops themselves, on this device's kernel (the CPU kernels exist to prove the
    # schema -> kernel -> fake impl chain on machines without a GPU).
    if _ext_loaded():
        for op in ("kvcache_append",):
            if op not in wanted_ops:
                continue
            fn = getattr(torch.ops.aigc_kernels, op)
            for case in testing.cases(op, torch.float32, device, seed=args.seed):
                r = testing.check_case(op, f"torch.ops ({device.type})", case, torch.float32, fn=fn)
                results.append(r)
                verdict = "[green]pass[/]" if r.passed else f"[red]FAIL[/] {r.error or ''}"
                table.add_row(op, r.backend, r.dtype, r.case, f"{r.fwd_err:.2e}", f"{r.fwd_bound:.2e}", "-", "-",
                              verdict)
    console.print(table)
    if skipped:
        st = Table(title="not checked here")
        st.add_column("op")
        st.add_column("backend")
        st.add_column("why")
        for row in skipped:
            st.add_row(*row)
        console.print(st)
    failed = [r for r in results if r.failed]
    na = [r for r in results if r.status == "n/a"]
    console.print(f"{len(results) - len(failed) - len(na)} passed, {len(failed)} failed, {len(na)} n/a (not taken "
                  f"by that backend's kernel) ({time.perf_counter() - t0:.1f} s on {device})")
    if device.type != "cuda":
        console.print(f"[yellow]{SPEED_NOTE}[/]")
    if args.json:
        save()
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .bench import report, run

    console = _console()
    if not torch.cuda.is_available():
        console.print(f"[yellow]{SPEED_NOTE} Only the torch reference is timed here, and every timed output is "
                      "checked against the float64 reference.[/]")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=None)

        def update(i, n, what):
            progress.update(task, completed=i, total=n, description=f"bench {what}")

        result = run(args.op, args.backend, args.mode, quick="headline" if args.headline else args.quick,
                     progress=update, cpu_reps=args.reps, checkpoint=args.checkpoint)
    console.print(report.table(result, show_skipped=args.show_skipped))
    if args.json:
        report.write_json(result, args.json)
        console.print(f"wrote {args.json}")
    if args.csv:
        report.write_csv(result, args.csv)
        console.print(f"wrote {args.csv}")
    if args.plots:
        for path in report.plots(result, args.plots):
            console.print(f"wrote {path}")
    wrong = [r for r in result["results"] if r["status"] == "wrong"]
    errors = [r for r in result["results"] if r["status"] == "error"]
    timed = sum(r["median_ms"] is not None for r in result["results"])
    console.print(f"{timed} timed, {len(wrong)} wrong, {len(errors)} errors, "
                  f"{sum(r['status'] == 'skipped' for r in result['results'])} skipped")
    for r in errors:
        console.print(f"[yellow]error[/] {r['op']} {r['provider']} {r['mode']} {r['label']}: {r['note']}")
    gaps = []
    if args.fail_if_auto_slower is not None:
        gaps = report.auto_gaps(result, args.fail_if_auto_slower)
        for g in gaps:
            over = "" if "overhead_us" not in g else \
                f", {g['overhead_us']} us per call, limit {report.DISPATCH_OVERHEAD_US}"
            console.print(f"[red]auto slower[/] {g['op']} {g['label']} {g['dtype']} {g['mode']}: auto "
                          f"{g['auto_ms']:.4g} ms vs {g['best']} {g['best_ms']:.4g} ms ({g['ratio']:.2f}x{over})")
        if not gaps:
            console.print(f"auto is within {args.fail_if_auto_slower}% of the fastest of "
                          f"{', '.join(report.AUTO_RIVALS)} on every case (and within "
                          f"{report.DISPATCH_OVERHEAD_US} us of PyTorch's own call on the dispatch cases)")
    return 1 if wrong or gaps else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .bench import report

    console = _console()
    try:
        base, new = report.load(args.base), report.load(args.new)
    except (OSError, ValueError) as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    t, regressions = report.compare(base, new, args.threshold)
    console.print(t)
    if regressions:
        console.print(f"[red]{len(regressions)} case(s) regressed beyond {args.threshold}%[/]")
        return 1
    console.print(f"no regression beyond {args.threshold}%")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from . import audit

    console = _console()
    if args.perf:
        import json

        from . import perf

        data = perf.model()
        perf.render(data, console)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(data, f, indent=1)
            console.print(f"wrote {args.json}")
        return 0
    targets = [t.strip().removeprefix("sm_") for t in args.arch.split(",") if t.strip()]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("audit", total=None)

        def update(what, i, n):
            progress.update(task, completed=i, total=n, description=f"audit {what}"[:90])

        report = audit.run(targets, args.family, jobs=args.jobs, progress=update)
    audit.render(report, console, verbose=args.verbose)
    if args.json:
        audit.write_json(report, args.json)
        console.print(f"wrote {args.json}")
    return 0 if report.ok() else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from . import dispatch, tune

    console = _console()
    if args.device == "cuda" and not torch.cuda.is_available():
        console.print("[yellow]tune measures CUDA GPUs: there is none here. On CPU tensors 'auto' always runs "
                      "PyTorch's own calls ('torch'), so there is nothing to choose.[/]")
        return 2
    device = torch.device(args.device)
    dtypes = [getattr(torch, d) for d in (args.dtype or ["bfloat16"])]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("tune", total=None)

        def update(what, i, n):
            progress.update(task, completed=i, total=n, description=f"tune {what}"[:90])

        # --output is rewritten after every case (a run cut off keeps what it measured); the per-user table
        # that "auto" reads is replaced only by a finished run
        table = tune.run(args.op or tune.TUNE_OPS, dtypes, quick=args.quick, device=device, margin=args.margin / 100,
                         progress=update, budget_s=args.budget_s,
                         checkpoint=(lambda t: t.write(args.output)) if args.output else None)
    from rich.table import Table

    t = Table(title=f"dispatch table for {table.device} (sm_{table.capability[0]}{table.capability[1]}): "
                    f"a kernel wins only when it beats 'torch' by more than {args.margin}%")
    for col in ("key", "best", "timings (ms)"):
        t.add_column(col)
    for e in table.entries:
        t.add_row(str(e.key), e.best, ", ".join(f"{b} {ms:.4g}" for b, ms in sorted(e.ms.items())))
    console.print(t)
    m = table.meta
    console.print(f"measured {m['cases']} of {m['of']} cases in {m['seconds']} s"
                  + (f" ([yellow]{m['stopped']}[/]; keys not measured take the nearest measured size)"
                     if m.get("stopped") else ""))
    for f in m.get("failures", []):
        console.print(f"[yellow]not timed[/] {f['backend']} on {f['case']}: {f['error']}", highlight=False)
    path = args.output or (dispatch.user_table_path(table.device, table.capability) if device.type == "cuda" else None)
    if path is None:
        console.print("not written (CPU tables are never used); pass --output to keep it")
        return 0
    table.write(path)
    dispatch.reload()
    if args.output:
        console.print(f"wrote {path}; 'auto' reads it where {dispatch.ENV_TABLE} names it")
    else:
        console.print(f"wrote {path}; 'auto' uses it from now on (in new processes, or after dispatch.reload())")
    return 0


def _ext_loaded() -> bool:
    from . import _ext

    return _ext.status()[0]


def build_parser() -> argparse.ArgumentParser:
    from . import backend, ops

    parser = argparse.ArgumentParser(prog="aigc-kernels", description="Fused Transformer kernels: info and checks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="device, versions, build flags, available backends and ops")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("check", help="every op x backend against the float64 reference (exit 1 on failure)")
    p.add_argument("--op", action="append", choices=list(ops.PUBLIC_OPS), help="only this op (repeatable)")
    p.add_argument("--backend", action="append", choices=[b for b in backend.BACKENDS if b != "reference"],
                   help="only this backend (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=cmd_check)
    from .bench import MODES, bench_ops

    p = sub.add_parser("bench", help="time every op x provider x mode; table, JSON, CSV, plots")
    p.add_argument("--op", action="append", choices=sorted(bench_ops()), help="only this op (repeatable)")
    p.add_argument("--backend", "--provider", action="append", dest="backend", metavar="PROVIDER",
                   help="only this provider: cuda, triton, torch, torch_compile, eager, sdpa_flash, ... (repeatable)")
    p.add_argument("--mode", action="append", choices=list(MODES), help="only this mode (repeatable)")
    p.add_argument("--quick", action="store_true", help="a few cases per op (minutes)")
    p.add_argument("--headline", action="store_true",
                   help="the headline cases (README's table, the GPU verification pass)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per case on CPU (default 5)")
    p.add_argument("--checkpoint", metavar="FILE", help="rewrite this JSON after every case (a cut-off run keeps "
                                                       "what it measured)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--csv", metavar="FILE")
    p.add_argument("--plots", metavar="DIR", help="write one PNG per op")
    p.add_argument("--show-skipped", action="store_true", help="list skipped providers in the table")
    p.add_argument("--fail-if-auto-slower", type=float, metavar="PCT", default=None,
                   help="exit 1 when 'auto' is more than PCT %% slower than the fastest of cuda, triton, torch and "
                        "PyTorch's own call on any case (on the dispatch op's tiny calls: more than 3 us over "
                        "PyTorch's own call)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("tune", help="measure the fastest backend per op and shape on this GPU: auto's dispatch table")
    from .tune import TUNE_OPS

    p.add_argument("--op", action="append", choices=list(TUNE_OPS), help="only this op (repeatable)")
    p.add_argument("--dtype", action="append", choices=["bfloat16", "float16", "float32"],
                   help="dtypes to measure (default bfloat16; repeatable)")
    p.add_argument("--quick", action="store_true", help="a few keys per op")
    p.add_argument("--margin", type=float, default=3.0, help="percent a kernel must beat 'torch' by to win a key")
    p.add_argument("--output", metavar="FILE", help="where to write the table, rewritten after every case "
                                                   "(default: the per-user cache, written when the run ends)")
    p.add_argument("--budget-s", type=float, default=None, metavar="S",
                   help="start no new case after S seconds: the table keeps the cases measured, the commonest "
                        "keys of every op first")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": exercise tune without a GPU
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("audit", help="compile every Triton kernel for GPU targets with no GPU; resources, spills")
    p.add_argument("--arch", default="90a,80", help="comma-separated targets: 90a, 80, 100a (default 90a,80)")
    p.add_argument("--family", action="append", choices=AUDIT_FAMILIES,
                   help="only these kernels (tune: the grid `aigc-kernels tune` times)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default: the CPU count)")
    p.add_argument("--json", metavar="FILE", help="also write every record as JSON")
    p.add_argument("--verbose", action="store_true", help="list every compiled config, not only the problems")
    p.add_argument("--perf", action="store_true",
                   help="the performance model instead: each CUDA attention kernel's bound beside FA2's, from the "
                        "recorded SASS and emulator figures (a bound, not a measurement)")
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("compare", help="compare two bench JSON files; exit 1 on a regression")
    p.add_argument("base")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=5.0, help="percent slower that counts as a regression")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

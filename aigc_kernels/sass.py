"""Read compiled GPU code (SASS, from ``cuobjdump -sass``) the way a kernel engineer reads it: per kernel, the
instruction mix, the main loop (the innermost backward branch holding the most tensor-core instructions) and what
one trip through it issues per warp -- MMA instructions and their FLOPs, ``ldmatrix`` (LDSM), plain shared and
global accesses and their widths, asynchronous copies (LDGSTS), branches and convergence barriers (BSSY/BSYNC),
block barriers, special-function (MUFU) work. Derived: instructions per MMA and MMA per LDSM in the main loop.

These are static counts of the code, with no machine behind them: a loop body with an inner branch counts both
sides (an upper bound of what one trip issues), and nothing here is a time. They are one input of the
performance model (``aigc_kernels audit``; the "speed visible without a GPU" issue); the other inputs are the
emulator's memory figures and the problem sizes.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")


@dataclass(frozen=True)
class Instr:
    addr: int
    op: str  # the full opcode with modifiers: "HMMA.16816.F32.BF16"
    pred: str  # "@P0", "@!P1" or ""
    operands: str

    @property
    def base(self) -> str:
        return self.op.split(".", 1)[0]


def parse(text: str) -> dict[tuple[str, str], list[Instr]]:
    """{(arch, mangled function name): its instructions in address order} from ``cuobjdump -sass`` output."""
    out: dict[tuple[str, str], list[Instr]] = {}
    current: list[Instr] | None = None
    arch = "?"
    for line in text.splitlines():
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
            continue
        if m := _FUNCTION.match(line):
            current = out.setdefault((arch, m.group(1)), [])
            continue
        if current is None or not (m := _LINE.match(line)):
            continue
        body = m.group(2).strip()
        pred = ""
        if body.startswith("@"):
            pred, body = body.split(None, 1)
        op, _, operands = body.partition(" ")
        current.append(Instr(int(m.group(1), 16), op, pred, operands.strip()))
    return out


_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_resource_usage(text: str) -> list[dict]:
    """[{arch, function, registers, stack, shared, local}] from ``cuobjdump --dump-resource-usage`` output."""
    rows, arch, fn = [], None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif line.startswith("Function "):
            fn = line[len("Function "):].rstrip(":")
        elif fn is not None and (m := _RESOURCE.search(line)):
            reg, stack, shared, local = map(int, m.groups())
            rows.append(dict(arch=arch, function=fn, registers=reg, stack=stack, shared=shared, local=local))
            fn = None
    return rows


def resource_usage(path: str, tool: str) -> list[dict]:
    """``parse_resource_usage`` of a cubin, fatbinary or shared library."""
    out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
    return parse_resource_usage(out)


def demangle(names: list[str]) -> list[str]:
    """C++ names through c++filt (unchanged where it is missing)."""
    import shutil

    tool = shutil.which("c++filt")
    if tool is None or not names:
        return list(names)
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else list(names)


def dump(path: str, tool: str) -> str:
    """``cuobjdump -sass`` of a cubin, fatbinary or shared library."""
    return subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout


def mma_flops(ins: Instr) -> int:
    """Floating-point operations one warp's (HMMA) or warpgroup's (HGMMA, per warp: a quarter) MMA does."""
    parts = ins.op.split(".")
    if parts[0] == "HMMA" and len(parts) > 1:
        shape = parts[1]  # 16816: m16 n8 k16; 1688: m16 n8 k8
        m, n, k = (16, 8, 16) if shape == "16816" else (16, 8, 8) if shape == "1688" else (0, 0, 0)
        return 2 * m * n * k
    if parts[0] == "HGMMA" and len(parts) > 1:
        dims = re.match(r"(\d+)x(\d+)x(\d+)", parts[1])
        if dims:
            m, n, k = map(int, dims.groups())
            return 2 * m * n * k // 4
    return 0


def hgmma_smem_bytes(ins: Instr) -> float:
    """Shared-memory operand bytes an HGMMA reads, per warp: B (N x K) always, A (M x K) too when it comes from
    shared memory (the "SS" form: the operand after the destination is a descriptor, not a register)."""
    parts = ins.op.split(".")
    if parts[0] != "HGMMA" or len(parts) < 2 or not (dims := re.match(r"(\d+)x(\d+)x(\d+)", parts[1])):
        return 0.0
    m, n, k = map(int, dims.groups())
    args = [a.strip() for a in ins.operands.split(",")]
    a_in_registers = len(args) > 1 and re.match(r"R\d+$", args[1]) is not None
    return ((0 if a_in_registers else m * k) + n * k) * 2 / 4


def _is_mma(ins: Instr) -> bool:
    return ins.base in ("HMMA", "HGMMA")


def loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """(first, last) addresses of every backward branch's body."""
    found = []
    for ins in instrs:
        if ins.base == "BRA" and (m := _TARGET.search(ins.operands)):
            target = int(m.group(1), 16)
            if target <= ins.addr:
                found.append((target, ins.addr))
    return found


def main_loop(instrs: list[Instr]) -> tuple[int, int] | None:
    """The innermost loop holding MMA instructions with the most of them (the smallest such body where several
    hold as many): a loop around MMA loops -- over the heads of a GQA group, or a kernel's masked and unmasked runs
    of blocks -- is not the main loop, the runs inside it are. In a kernel with no MMA in any loop (a norm's loop
    over rows), the outermost loop: the largest body."""
    found = loops(instrs)
    mma = {lp: sum(1 for i in instrs if lp[0] <= i.addr <= lp[1] and _is_mma(i)) for lp in found}
    holding = [lp for lp in found if mma[lp]]
    innermost = [lp for lp in holding
                 if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in holding)]
    if innermost:
        return max(innermost, key=lambda lp: (mma[lp], -(lp[1] - lp[0])))
    return max(found, key=lambda lp: lp[1] - lp[0]) if found else None


@dataclass
class Mix:
    instructions: int = 0
    mma: int = 0  # HMMA + HGMMA
    hgmma: int = 0
    mma_flops: int = 0
    smem_operand_bytes: float = 0.0  # what HGMMA reads from shared memory, per warp (a quarter of the warpgroup's)
    ldsm: int = 0
    lds: int = 0
    sts: int = 0
    ldgsts: int = 0
    ldg: int = 0
    stg: int = 0
    branches: int = 0
    convergence: int = 0  # BSSY + BSYNC
    barriers: int = 0  # BAR.SYNC and friends
    mufu: int = 0
    widths: dict[str, int] = field(default_factory=dict)  # "LDG.E.128": count, per global/shared access kind

    def add(self, ins: Instr) -> None:
        if ins.base == "NOP":
            return
        self.instructions += 1
        b = ins.base
        if _is_mma(ins):
            self.mma += 1
            self.hgmma += ins.base == "HGMMA"
            self.mma_flops += mma_flops(ins)
            self.smem_operand_bytes += hgmma_smem_bytes(ins)
        counters = {"LDSM": "ldsm", "LDS": "lds", "STS": "sts", "LDGSTS": "ldgsts", "LDG": "ldg", "STG": "stg",
                    "BRA": "branches", "BSSY": "convergence", "BSYNC": "convergence", "BAR": "barriers",
                    "MUFU": "mufu"}
        if b in counters:
            setattr(self, counters[b], getattr(self, counters[b]) + 1)
        if b in ("LDS", "STS", "LDG", "STG", "LDGSTS"):
            width = next((p for p in ins.op.split(".")[1:] if p in ("U8", "S8", "U16", "S16", "64", "128")), "32")
            key = f"{b}.{width}"
            self.widths[key] = self.widths.get(key, 0) + 1

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "widths"}
        d["widths"] = dict(sorted(self.widths.items()))
        d["instructions_per_mma"] = round(self.instructions / self.mma, 2) if self.mma else None
        d["flops_per_instruction"] = round(self.mma_flops / self.instructions) if self.instructions else 0
        d["mma_per_ldsm"] = round(self.mma / self.ldsm, 2) if self.ldsm else None
        return d


def figures(instrs: list[Instr]) -> dict:
    """The whole kernel's instruction mix and its main loop's (per trip, per warp)."""
    whole = Mix()
    for ins in instrs:
        whole.add(ins)
    out = {"kernel": whole.as_dict(), "main_loop": None}
    span = main_loop(instrs)
    if span is not None:
        body = Mix()
        for ins in instrs:
            if span[0] <= ins.addr <= span[1]:
                body.add(ins)
        out["main_loop"] = body.as_dict()
    return out

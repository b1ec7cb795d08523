#!/usr/bin/env python3
"""Registers, spills and shared memory of every CUDA kernel, as ptxas reports them (no GPU needed).

For each csrc/cuda/*.cu: ``nvcc -ptx`` gives the kernels and their ``__launch_bounds__`` (PTX
``.maxntid``; a kernel without one is checked at the hardware's 1024 threads), then
``ptxas -v`` gives registers, spills and static shared memory. Fails (exit 1) when a kernel

  * spills (any spill store or load),
  * needs more than the 65,536 registers of an SM for one block (registers x threads),
  * declares more than 48 KB of static shared memory,

and prints an occupancy table for the target (sm_90 by default): resident blocks per SM as
registers, shared memory and threads allow (docs/design.md, "CUDA resource check").

Usage: cuda_resources.py [--nvcc PATH] [--arch sm_90] [--json OUT] [FILE.cu ...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# sm_90 per-SM limits (CUDA occupancy calculator, compute capability 9.0).
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers, allocated per warp
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SMEM_PER_SM = 233472  # 228 KB
SMEM_RESERVED_PER_BLOCK = 1024
STATIC_SMEM_LIMIT = 48 * 1024
MAX_THREADS = 1024


@dataclass
class Kernel:
    source: str
    mangled: str
    name: str
    threads: int
    bounded: bool  # threads came from __launch_bounds__
    registers: int = 0
    smem: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0

    @property
    def warps(self) -> int:
        return math.ceil(self.threads / 32)

    def blocks_per_sm(self) -> int:
        per_warp = math.ceil(self.registers * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
        by_regs = (REGS_PER_SM // per_warp) // self.warps if per_warp else MAX_BLOCKS_PER_SM
        by_smem = SMEM_PER_SM // (self.smem + SMEM_RESERVED_PER_BLOCK)
        by_threads = MAX_WARPS_PER_SM // self.warps
        return min(MAX_BLOCKS_PER_SM, by_regs, by_smem, by_threads)

    def problems(self) -> list[str]:
        out = []
        if self.spill_stores or self.spill_loads:
            out.append(f"spills ({self.spill_stores} bytes stored, {self.spill_loads} loaded)")
        if self.registers * self.threads > REGS_PER_SM:
            out.append(
                f"{self.registers} registers x {self.threads} threads = {self.registers * self.threads} "
                f"> {REGS_PER_SM}"
            )
        if self.smem > STATIC_SMEM_LIMIT:
            out.append(f"{self.smem} bytes of static shared memory > {STATIC_SMEM_LIMIT}")
        return out


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short(name: str) -> str:
    """'void pcmekit::cuda::(anonymous namespace)::f<A, B>(args)' -> 'f<A, B>'."""
    name = name.replace("pcmekit::cuda::(anonymous namespace)::", "").replace("pcmekit::", "")
    name = re.sub(r"^void ", "", name)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    return name[:cut].replace("(anonymous namespace)::", "")


def analyse(source: Path, nvcc: str, arch: str) -> list[Kernel]:
    ptxas = str(Path(nvcc).with_name("ptxas")) if Path(nvcc).with_name("ptxas").exists() else "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / (source.stem + ".ptx")
        subprocess.run(
            [nvcc, f"-arch={arch}", "-std=c++17", "-I", str(ROOT / "csrc"), "-I", str(ROOT / "csrc" / "include"),
             "-ptx", str(source), "-o", str(ptx)],
            check=True,
        )
        text = ptx.read_text()
        kernels: dict[str, Kernel] = {}
        for m in re.finditer(r"\.entry\s+(\S+)\s*\((.*?)\)\s*(.*?)\{", text, re.DOTALL):
            mangled, directives = m.group(1), m.group(3)
            ntid = re.search(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)", directives)
            threads = math.prod(int(x) for x in ntid.groups()) if ntid else MAX_THREADS
            kernels[mangled] = Kernel(source.name, mangled, mangled, threads, ntid is not None)
        report = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", str(ptx), "-o", str(Path(tmp) / "out.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr
    current = None
    for line in report.splitlines():
        if m := re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line):
            current = kernels.get(m.group(1))
        if current is None:
            continue
        if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        if m := re.search(r"Used (\d+) registers", line):
            current.registers = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current.smem = int(smem.group(1)) if smem else 0
    names = demangle(list(kernels))
    for k in kernels.values():
        k.name = short(names[k.mangled])
    return list(kernels.values())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    parser.add_argument("sources", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if not Path(args.nvcc).exists() and shutil.which(args.nvcc) is None:
        print(f"cuda_resources: nvcc not found ({args.nvcc}); nothing checked", file=sys.stderr)
        return 1
    sources = args.sources or sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        kernels = [k for ks in pool.map(lambda s: analyse(s, args.nvcc, args.arch), sources) for k in ks]
    if not kernels:
        print("cuda_resources: no kernels found", file=sys.stderr)
        return 1

    width = min(90, max(len(k.name) for k in kernels))
    header = f"{'kernel':<{width}} {'threads':>7} {'regs':>5} {'regs*thr':>8} {'smem B':>7} {'spill':>5} {'blk/SM':>6} {'occup':>6}"
    print(f"CUDA resources on {args.arch} (ptxas -v; blocks per SM from registers, shared memory, threads)")
    print(header)
    print("-" * len(header))
    failures = []
    for k in sorted(kernels, key=lambda k: (k.source, k.name)):
        blocks = k.blocks_per_sm()
        occupancy = blocks * k.warps / MAX_WARPS_PER_SM
        name = k.name if len(k.name) <= width else k.name[: width - 3] + "..."
        threads = f"{k.threads}{'' if k.bounded else '*'}"
        print(
            f"{name:<{width}} {threads:>7} {k.registers:>5} {k.registers * k.threads:>8} {k.smem:>7} "
            f"{k.spill_stores + k.spill_loads:>5} {blocks:>6} {occupancy:>6.0%}"
        )
        failures += [f"{k.source}: {k.name}: {p}" for p in k.problems()]
    print("(* no __launch_bounds__: checked at 1024 threads)")
    if args.json:
        args.json.write_text(json.dumps([asdict(k) | {"blocks_per_sm": k.blocks_per_sm()} for k in kernels], indent=1))
    if failures:
        print("\nFAILED:", *failures, sep="\n  ")
        return 1
    print(f"\n{len(kernels)} kernels: no spills, every block fits the register file, static shared memory <= 48 KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The ``pcmekit`` command line: ``pcmekit info``, ``pcmekit bench [SUITE ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcmekit", description="pcmekit: probabilistic cross-modal embedding kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="print how pcmekit was built and what it will use")

    from .bench import SUITES

    bench = sub.add_parser("bench", help="benchmark the kernels against pure-PyTorch baselines")
    bench.add_argument("suites", nargs="*", default=["pairwise"], metavar="SUITE",
                       help=f"suites to run: {', '.join(SUITES)} or 'all' (default: pairwise)")
    bench.add_argument("--quick", action="store_true", help="small problem sizes (seconds, for smoke tests)")
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    bench.add_argument("--repeats", type=int, default=10, help="timed repetitions per measurement (median)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (default: torch's)")
    bench.add_argument("--out", type=Path, default=Path("results/bench"), help="folder for CSV/JSON/PNG output")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        from ._core import build_info

        print(json.dumps(build_info(), indent=2))
        return 0
    from .bench import SUITES, BenchConfig, run_suites

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        from ._core import cuda_available

        if not cuda_available():
            print("pcmekit bench: --device cuda requested but pcmekit has no usable CUDA device", file=sys.stderr)
            return 2
    names = list(SUITES) if args.suites == ["all"] else args.suites
    config = BenchConfig(quick=args.quick, device=args.device, repeats=args.repeats, warmup=args.warmup)
    try:
        run_suites(names, config, args.out)
    except ValueError as err:
        print(f"pcmekit bench: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

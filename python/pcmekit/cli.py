"""The ``pcmekit`` command line.

* ``pcmekit info`` -- how pcmekit was built and what it will use.
* ``pcmekit bench [SUITE ...]`` -- kernels against pure-PyTorch baselines.
* ``pcmekit train --out CKPT`` / ``pcmekit eval CKPT`` -- train / evaluate a model on the captioned
  digits (:mod:`pcmekit.data.digits`; needs scikit-learn).
* ``pcmekit demo --out DIR`` -- the end-to-end demo report (:mod:`pcmekit.demo`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import torch

if TYPE_CHECKING:
    from .bench import BenchConfig


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
    bench.add_argument("--grid", nargs="+", default=None, metavar="KEY=V1,V2",
                       help="sweep only: replace grid values, keys Q, N, D, op (e.g. --grid Q=1,16 N=2000 D=32,64)")
    bench.add_argument("--max-call-s", type=float, default=None, metavar="SECONDS",
                       help="sweep only: skip a peer (faiss, KeOps) in a cell whose estimated call takes longer (default 30)")

    from .train import LOSSES

    train = sub.add_parser("train", help="train a model on the captioned digits (checkpoint after every epoch)")
    train.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    train.add_argument("--loss", choices=list(LOSSES), default="pcmepp", help="training loss (default: pcmepp)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--head", choices=["gpo", "pie"], default="gpo", help="gpo: PCME++'s head; pie: PCME's")
    train.add_argument("--embed-dim", type=int, default=32)
    train.add_argument("--width", type=int, default=64)
    train.add_argument("--seed", type=int, default=0, help="seeds the split, the model and the batches")
    train.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    train.add_argument("--threads", type=int, default=1,
                       help="CPU threads (default 1: these models are too small to gain from more)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="evaluate a checkpoint on the digits test split (ECCV Caption metrics)")
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--metric", default=None,
                    help="ranking score (default: csd for PCME++, match_prob for PCME, l2 for InfoNCE)")
    ev.add_argument("--json", type=Path, default=None, help="also write all numbers to this JSON file")

    demo = sub.add_parser("demo", help="train PCME++ / PCME / InfoNCE on captioned digits and write a report")
    demo.add_argument("--out", type=Path, default=Path("results/demo"), help="report folder")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs per model (default 20)")
    demo.add_argument("--losses", default=None, help="comma-separated, from pcmepp,infonce,pcme (default: all)")
    demo.add_argument("--no-bench", action="store_true", help="skip the kernel timings")
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny models, 1 epoch)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        from ._core import build_info

        print(json.dumps(build_info(), indent=2))
        return 0
    if args.command in ("train", "eval", "demo"):
        try:
            return {"train": _train, "eval": _eval, "demo": _demo}[args.command](args)
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"pcmekit {args.command}: {err}", file=sys.stderr)
            return 2
    from .bench import SUITES, BenchConfig, run_suites

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        from ._core import cuda_available

        if not cuda_available():
            print("pcmekit bench: --device cuda requested but pcmekit has no usable CUDA device", file=sys.stderr)
            return 2
    names = list(SUITES) if args.suites == ["all"] else args.suites
    config: BenchConfig = BenchConfig(quick=args.quick, device=args.device, repeats=args.repeats, warmup=args.warmup)
    try:
        if "sweep" in names:
            config = _sweep_config(args, config)
        elif args.grid is not None or args.max_call_s is not None:
            raise ValueError("--grid and --max-call-s apply to the sweep suite only (pcmekit bench sweep ...)")
        run_suites(names, config, args.out)
    except ValueError as err:
        print(f"pcmekit bench: {err}", file=sys.stderr)
        return 2
    return 0


def _sweep_config(args: argparse.Namespace, base: BenchConfig) -> BenchConfig:
    """The sweep's config: the common options plus --grid, --max-call-s and the output folder."""
    import dataclasses

    from .bench.sweep import DEFAULT_MAX_CALL_S, SweepConfig, parse_grid

    max_call_s = DEFAULT_MAX_CALL_S if args.max_call_s is None else args.max_call_s
    if not max_call_s > 0:
        raise ValueError(f"--max-call-s must be positive, got {args.max_call_s}")
    grid = parse_grid(args.grid) if args.grid is not None else None
    return SweepConfig(**dataclasses.asdict(base), grid=grid, max_call_s=max_call_s, out_dir=str(args.out))


def _train(args: argparse.Namespace) -> int:
    from .data.digits import load_digits_captions
    from .models import build_digits_model
    from .train import fit

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    data = load_digits_captions(seed=args.seed)
    model = build_digits_model(len(data.vocab), embed_dim=args.embed_dim, width=args.width, head=args.head,
                               seed=args.seed)
    result = fit(model, data.train, loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 weight_decay=args.weight_decay, seed=args.seed, checkpoint=args.out, resume=args.resume,
                 progress=False if args.no_progress else None, log=print,
                 extra={"dataset": "digits", "seed": args.seed, "captions_per_image": data.captions_per_image,
                        "test_fraction": data.test_fraction})
    print(f"pcmekit train: {result.steps} steps; checkpoint {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .data.digits import load_digits_captions
    from .demo import format_retrieval_table
    from .train import DEFAULT_METRIC, evaluate, load_checkpoint

    model, criterion, state = load_checkpoint(args.checkpoint)
    extra = state.get("extra") or {}
    if extra.get("dataset") != "digits":
        raise ValueError(f"checkpoint {args.checkpoint} does not say it was trained on the digits dataset")
    data = load_digits_captions(captions_per_image=extra["captions_per_image"], test_fraction=extra["test_fraction"],
                                seed=extra["seed"])
    metric = args.metric or DEFAULT_METRIC[state["loss"]]
    res = evaluate(model, data.test, metric=metric, criterion=criterion, uncertainty=state["loss"] != "infonce")
    print(f"{state['loss']} after {state['epoch']} epochs, ranked by {metric} (percent):")
    print(format_retrieval_table({state["loss"]: res}))
    u = res.get("uncertainty")
    if u:
        print(f"Spearman(caption uncertainty, plausible images): {u['spearman_caption_uncertainty_vs_plausible_images']:+.3f}"
              f" (distinct captions: {u['spearman_distinct_captions']:+.3f})")
    if args.json is not None:
        from .demo import _jsonable

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(res), indent=1))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    config = DemoConfig.quick_config() if args.quick else DemoConfig()
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.losses:
        config.losses = tuple(x.strip() for x in args.losses.split(",") if x.strip())
        unknown = [x for x in config.losses if x not in ("pcmepp", "infonce", "pcme")]
        if unknown:
            raise ValueError(f"--losses: unknown {', '.join(unknown)}; choose from pcmepp, infonce, pcme")
    if args.no_bench:
        config.bench = False
    run_demo(args.out, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

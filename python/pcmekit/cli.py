"""The ``pcmekit`` command line.

* ``pcmekit info`` -- how pcmekit was built and what it will use.
* ``pcmekit bench [SUITE ...]`` -- kernels against pure-PyTorch baselines.
* ``pcmekit train --out CKPT`` / ``pcmekit eval CKPT`` -- train / evaluate a model on the captioned
  digits (:mod:`pcmekit.data.digits`; needs scikit-learn).
* ``pcmekit train --features IMAGE.npy TEXT.npy PAIRS.json --out CKPT`` -- probabilistic adapters on
  frozen features (:func:`pcmekit.train.fit_adapters`), evaluated on the held-out pairs;
  ``pcmekit eval CKPT --features ...`` evaluates such a checkpoint again.
* ``pcmekit demo --out DIR`` -- the end-to-end demo report (:mod:`pcmekit.demo`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

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
    bench.add_argument("--precision", default="highest", metavar="MODE[,MODE]",
                       help="float32 matmul precision(s) to run every suite under, for pcmekit and torch "
                            "alike: highest, high, medium, comma-separated (CUDA only; default: highest)")
    bench.add_argument("--out", type=Path, default=Path("results/bench"), help="folder for CSV/JSON/PNG output")
    bench.add_argument("--grid", nargs="+", default=None, metavar="KEY=V1,V2",
                       help="sweep only: replace grid values, keys Q, N, D, op (e.g. --grid Q=1,16 N=2000 D=32,64)")
    bench.add_argument("--max-call-s", type=float, default=None, metavar="SECONDS",
                       help="sweep only: skip a peer (faiss, KeOps) in a cell whose estimated call takes longer (default 30)")

    from .train import LOSSES

    train = sub.add_parser("train", help="train a model on the captioned digits, or probabilistic adapters on frozen "
                                         "features with --features (checkpoint after every epoch)")
    train.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    train.add_argument("--features", nargs=3, type=Path, default=None, metavar=("IMAGE_NPY", "TEXT_NPY", "PAIRS_JSON"),
                       help="train adapters on these frozen features instead of the digits "
                            "(pairs.json format: docs/design.md, 'Frozen-feature adapters')")
    train.add_argument("--hidden", type=int, default=512, help="--features: width of the adapters' MLPs")
    train.add_argument("--test-fraction", type=float, default=0.2,
                       help="--features: share of the paired images held out when pairs.json has no test_images")
    train.add_argument("--json", type=Path, default=None, help="--features: also write the evaluation to this file")
    train.add_argument("--loss", choices=list(LOSSES), default="pcmepp", help="training loss (default: pcmepp)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--head", choices=["gpo", "pie"], default="gpo", help="digits: gpo: PCME++'s head; pie: PCME's")
    train.add_argument("--embed-dim", type=int, default=None,
                       help="embedding size (digits: 32; --features: the features' size when image and text "
                            "features have the same size, else 256)")
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
    ev.add_argument("--features", nargs=3, type=Path, default=None, metavar=("IMAGE_NPY", "TEXT_NPY", "PAIRS_JSON"),
                    help="for an adapter checkpoint: the features to evaluate on (their test split)")
    ev.add_argument("--test-fraction", type=float, default=0.2,
                    help="with --features: as in train (the same value and seed give the same split)")

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
    # "all": every suite but the sweep, which takes tens of minutes and is run by name.
    names = [n for n in SUITES if n != "sweep"] if args.suites == ["all"] else args.suites
    precisions = tuple(m.strip() for m in args.precision.split(",") if m.strip())
    config: BenchConfig = BenchConfig(quick=args.quick, device=args.device, repeats=args.repeats, warmup=args.warmup,
                                      precisions=precisions)
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
    if args.features is not None:
        return _train_features(args)
    data = load_digits_captions(seed=args.seed)
    model = build_digits_model(len(data.vocab), embed_dim=args.embed_dim or 32, width=args.width, head=args.head,
                               seed=args.seed)
    result = fit(model, data.train, loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 weight_decay=args.weight_decay, seed=args.seed, checkpoint=args.out, resume=args.resume,
                 progress=False if args.no_progress else None, log=print,
                 extra={"dataset": "digits", "seed": args.seed, "captions_per_image": data.captions_per_image,
                        "test_fraction": data.test_fraction})
    print(f"pcmekit train: {result.steps} steps; checkpoint {args.out}")
    return 0


def _feature_table(rows: "dict[str, dict]") -> str:
    """Markdown table of :func:`pcmekit.train.evaluate_features` results, one row per model."""
    lines = ["| adapters | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | RSUM |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in rows.items():
        cells = [f"{res[side].get(f'R@{K}', float('nan')):.1f}" for side in ("i2t", "t2i") for K in (1, 5, 10)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res.get('RSUM', float('nan')):.1f} |")
    return "\n".join(lines)


def _eccv_lines(res: dict) -> List[str]:
    scores = res.get("eccv_caption")
    if not scores:
        return [f"ECCV Caption metrics: not computed ({res.get('eccv_caption_note')})"]
    keys = ("eccv_map_at_r", "eccv_rprecision", "eccv_r1", "cxc_r1", "coco_1k_r1", "coco_5k_r1")
    return ["ECCV Caption / CxC / COCO (eccv-caption, percent): " + ", ".join(
        f"{key} i2t {100 * scores[key]['i2t']:.1f} t2i {100 * scores[key]['t2i']:.1f}" for key in keys if key in scores)]


def _report_features(results: "dict[str, dict]", json_path: Optional[Path]) -> None:
    print(_feature_table(results))
    print(*_eccv_lines(list(results.values())[-1]), sep="\n")
    if json_path is not None:
        from .demo import _jsonable

        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(_jsonable(results), indent=1))


def _train_features(args: argparse.Namespace) -> int:
    from .data.features import load_feature_pairs
    from .models import build_adapter_model
    from .train import DEFAULT_METRIC, evaluate_features, fit_adapters

    features = load_feature_pairs(*args.features, test_fraction=args.test_fraction, seed=args.seed)
    print(f"pcmekit train: {features.train.num_images} train / {features.test.num_images} test images, "
          f"{features.train.num_captions} / {features.test.num_captions} texts, features "
          f"{features.image_dim} (image) / {features.text_dim} (text)")
    progress = False if args.no_progress else None
    result = fit_adapters(features, embed_dim=args.embed_dim, hidden=args.hidden, loss=args.loss, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                          checkpoint=args.out, resume=args.resume, progress=progress, log=print)
    metric = DEFAULT_METRIC[args.loss]
    config: Dict[str, Any] = dict(getattr(result.model, "config", None) or {})
    config.pop("builder", None)
    untrained = build_adapter_model(**config)   # the same initialisation, before any step
    results = {
        "untrained": evaluate_features(untrained, features.test, metric=metric, criterion=result.criterion,
                                       eccv=False, progress=progress),
        "trained": evaluate_features(result.model, features.test, metric=metric, criterion=result.criterion,
                                     progress=progress),
    }
    print(f"pcmekit train: {result.steps} steps; checkpoint {args.out}; test split ranked by {metric} (percent):")
    _report_features(results, args.json)
    return 0


def _eval_features(args: argparse.Namespace, model: torch.nn.Module, criterion: torch.nn.Module,
                   state: dict) -> int:
    from .data.features import load_feature_pairs
    from .train import DEFAULT_METRIC, evaluate_features

    if args.features is None:
        raise ValueError(f"checkpoint {args.checkpoint} holds adapters trained on frozen features; give the features "
                         "to evaluate on with --features IMAGE_NPY TEXT_NPY PAIRS_JSON")
    features = load_feature_pairs(*args.features, test_fraction=args.test_fraction,
                                  seed=int(state.get("fit", {}).get("seed", 0)))
    extra = state.get("extra") or {}
    dims = (features.image_dim, features.text_dim)
    if dims != (extra.get("image_dim"), extra.get("text_dim")):
        raise ValueError(f"checkpoint {args.checkpoint} was trained on features of size {extra.get('image_dim')} (image) / "
                         f"{extra.get('text_dim')} (text), got {dims[0]} / {dims[1]} from --features")
    metric = args.metric or DEFAULT_METRIC[state["loss"]]
    res = evaluate_features(model, features.test, metric=metric, criterion=criterion)
    print(f"{state['loss']} adapters after {state['epoch']} epochs, ranked by {metric} (percent):")
    _report_features({"trained": res}, args.json)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .data.digits import load_digits_captions
    from .demo import format_retrieval_table
    from .train import DEFAULT_METRIC, evaluate, load_checkpoint

    model, criterion, state = load_checkpoint(args.checkpoint)
    extra = state.get("extra") or {}
    if extra.get("dataset") == "features":
        return _eval_features(args, model, criterion, state)
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

"""``pcmekit demo``: train PCME++, PCME and an InfoNCE baseline on captioned digits, evaluate them
like ECCV Caption, relate uncertainty to caption generality, classify the digits zero-shot with
uncertainty-based prompt filtering (:func:`digits_zeroshot`), time the kernels, write a report.

Everything runs offline on the CPU in a few minutes: the images are scikit-learn's bundled digits
(:mod:`pcmekit.data.digits`), the models are small (:func:`pcmekit.models.build_digits_model`).
The report folder gets ``README.md`` (tables), ``results.json`` (every number), PNG plots and the
benchmark harness's CSV/JSON/PNG under ``bench/``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["DemoConfig", "digits_zeroshot", "run_demo", "format_retrieval_table"]

MODEL_LABELS = {"pcmepp": "PCME++", "pcme": "PCME", "infonce": "InfoNCE", "random": "random ranking"}


@dataclasses.dataclass
class DemoConfig:
    """What the demo trains. ``quick`` shrinks everything to a smoke test (seconds).

    Each model trains on ``train_threads`` threads (1: for models this small, intra-op threads
    cost more than they save; measured 0.13 s per step on one thread against 1.1 s on two while
    other processes shared the machine), and ``workers`` models train at once in separate
    processes, so a 2-core machine trains two models in the time of one.
    """

    losses: Sequence[str] = ("pcmepp", "infonce", "pcme")
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    embed_dim: int = 32
    width: int = 64
    seed: int = 0
    train_threads: int = 1
    workers: int = 2
    bench: bool = True
    quick: bool = False
    #: zero-shot: the share of each class's prompts dropped as the most uncertain (floor(0.3 * 35) = 10)
    zeroshot_drop: float = 0.3

    @classmethod
    def quick_config(cls) -> "DemoConfig":
        return cls(epochs=1, width=16, embed_dim=8, bench=False, quick=True, workers=1)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _fmt(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def format_retrieval_table(results: Dict[str, Dict[str, Any]]) -> str:
    """Markdown table: one row per (model, ground truth) with R@1 / R-P / mAP@R per direction,
    RSUM and PMRP (percent)."""
    lines = [
        "| model | ground truth | i2t R@1 | i2t R-P | i2t mAP@R | t2i R@1 | t2i R-P | t2i mAP@R | RSUM | PMRP i2t | PMRP t2i |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        for gt in ("original", "plausible"):
            e = res[gt]
            pm = res.get("pmrp", {})
            pmrp_cells = ([_fmt(pm["i2t"]["PMRP"]), _fmt(pm["t2i"]["PMRP"])] if gt == "plausible" and pm
                          else ["", ""])
            lines.append("| " + " | ".join([
                MODEL_LABELS.get(name, name), gt,
                _fmt(e["i2t"]["R@1"]), _fmt(e["i2t"]["R-P"]), _fmt(e["i2t"]["mAP@R"]),
                _fmt(e["t2i"]["R@1"]), _fmt(e["t2i"]["R-P"]), _fmt(e["t2i"]["mAP@R"]),
                _fmt(e.get("RSUM")), *pmrp_cells]) + " |")
    return "\n".join(lines)


def _uncertainty_table(results: Dict[str, Dict[str, Any]]) -> str:
    lines = [
        "| model | Spearman: caption uncertainty vs # plausible images (all test captions) | same, distinct caption texts | Spearman: uncertainty bin vs t2i R@1 (original GT) | same, plausible GT |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        if name == "random":
            continue
        u = res.get("uncertainty")
        if not u:
            lines.append(f"| {MODEL_LABELS.get(name, name)} | n/a (variance head untrained) | | | |")
            continue
        lines.append("| " + " | ".join([
            MODEL_LABELS.get(name, name),
            _fmt(u["spearman_caption_uncertainty_vs_plausible_images"], "+.3f"),
            _fmt(u.get("spearman_distinct_captions"), "+.3f") + f" (n = {u.get('num_distinct_captions', '?')})",
            _fmt(u["t2i_bins_original"]["spearman"], "+.3f"),
            _fmt(u["t2i_bins_plausible"]["spearman"], "+.3f"),
        ]) + " |")
    return "\n".join(lines)


def _per_kind(split: Any, results: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    from .data.digits import CAPTION_KINDS

    n_plausible = split.num_plausible_images().double()
    rows = []
    for kind in CAPTION_KINDS:
        sel = [j for j, k in enumerate(split.caption_kind) if k == kind]
        if not sel:
            continue
        row: Dict[str, Any] = {"kind": kind, "example": split.captions[sel[0]], "n_captions": len(sel),
                               "mean_plausible_images": float(n_plausible[sel].mean())}
        for name, res in results.items():
            u = res.get("uncertainty")
            if u:
                cu = np.asarray(u["caption_uncertainty"])
                row[f"uncertainty_{name}"] = float(cu[sel].mean())
        rows.append(row)
    return rows


def _per_kind_table(rows: List[Dict[str, Any]], names: Sequence[str]) -> str:
    cols = [n for n in names if f"uncertainty_{n}" in rows[0]]
    head = "| caption kind | example | test captions | mean # plausible test images | " + \
        " | ".join(f"{MODEL_LABELS.get(n, n)} mean uncertainty" for n in cols) + " |"
    lines = [head, "|---|---|---:|---:|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['example']} | {r['n_captions']} | {r['mean_plausible_images']:.1f} | " +
                     " | ".join(f"{r[f'uncertainty_{n}']:.3g}" for n in cols) + " |")
    return "\n".join(lines)


def _bench_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| case | implementation | median ms | speed-up vs pure PyTorch |", "|---|---|---:|---:|"]
    for r in rows:
        impl = r["impl"] + (" (baseline)" if r.get("baseline") else "")
        sp = r.get("speedup")
        lines.append(f"| {r['suite']}: {r['case']} | {impl} | {r['median_ms']:.2f} | {_fmt(sp, '.2f')}{'x' if sp else ''} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Kernel timing
# --------------------------------------------------------------------------------------------


def _run_bench(out: Path, echo: Callable[[str], None]) -> List[Dict[str, Any]]:
    """The benchmark harness at its quick sizes: the pairwise suite (CSD matrix, PCME++-style loss
    step) and, where this build has it, the top-k suite; each checks before it times."""
    from .bench import SUITES, BenchConfig, run_suites

    suites = [name for name in ("pairwise", "topk") if name in SUITES]
    return run_suites(suites, BenchConfig(quick=True, repeats=5, warmup=1), out / "bench", echo=echo)


# --------------------------------------------------------------------------------------------
# Zero-shot classification with uncertainty
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def digits_zeroshot(model: Any, split: Any, vocab: Any, *, drop: float = 0.3, n_bins: int = 10,
                    random_repeats: int = 5, seed: int = 0) -> Dict[str, Any]:
    """Zero-shot digit classification with a trained caption model (docs/design.md, "Zero-shot
    classification"): every class's prompts (:func:`pcmekit.data.digits.class_prompts`, 35 each)
    are encoded by the text side, averaged into one Gaussian per class
    (:func:`pcmekit.zeroshot.class_prototypes`), and the split's images are classified by the
    CSD logits (:func:`pcmekit.zeroshot.csd_logits`, argmax; scale and shift change no argmax).

    Filtering (:func:`pcmekit.zeroshot.filter_prompts`) drops each class's ``floor(drop * P)``
    most uncertain prompts. For comparison the same number of prompts is dropped at random
    (``random_repeats`` seeded draws, averaged), and the whole curve is computed for every count.

    Returns (accuracies in percent): ``accuracy_all`` / ``accuracy_filtered`` /
    ``accuracy_random_drop``, ``dropped`` (the count), ``dropped_general`` (share of the dropped
    prompts that do not name the digit), ``curve`` (``dropped``, ``uncertainty``, ``random``:
    accuracy for each count 0..P-1), ``bins_all`` / ``bins_filtered``
    (:func:`pcmekit.metrics.uncertainty_analysis` of correctness over image-uncertainty bins),
    ``prompt_uncertainty_by_kind`` (mean over classes and prompts of a kind),
    ``uncertainty_general`` / ``uncertainty_naming`` (mean over the prompts that do not / do name
    the digit) and sizes.
    """
    from . import metrics as M
    from . import zeroshot
    from .data.digits import NAMING_KINDS, class_prompts
    from .embedding import ProbEmbedding

    prompts, kinds = class_prompts()
    n_cls, n_prompts = len(prompts), len(kinds)
    tokens, lengths = vocab.encode([t for row in prompts for t in row])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        txt = model.encode_text(tokens.to(device), lengths.to(device))
        img = model.encode_image(split.images.to(device))
    finally:
        model.train(was_training)
    mean = txt.mean.reshape(n_cls, n_prompts, -1).double().cpu()
    logvar = txt.logvar.reshape(n_cls, n_prompts, -1).double().cpu()
    images = img.to(dtype=torch.float64, device="cpu")
    labels = split.digit.cpu()

    def correct(masks: List[torch.Tensor]) -> torch.Tensor:
        """``[len(masks), N]`` bool: each image classified right by the prototypes of each mask
        (every mask's prototypes scored in one CSD call)."""
        protos = [zeroshot.class_prototypes(mean, logvar, m) for m in masks]
        classes = ProbEmbedding(torch.cat([c.mean for c in protos]), torch.cat([c.logvar for c in protos]))
        logits = zeroshot.csd_logits(images, classes).reshape(len(labels), len(masks), n_cls)
        return (logits.argmax(-1) == labels[:, None]).t()

    gen = torch.Generator().manual_seed(seed)
    by_uncertainty = [zeroshot.filter_prompts(logvar, n) for n in range(n_prompts)]
    at_random = []
    for n in range(n_prompts):
        for _ in range(random_repeats):
            order = torch.argsort(torch.rand(n_cls, n_prompts, generator=gen), dim=1)
            mask = torch.ones(n_cls, n_prompts, dtype=torch.bool)
            mask.scatter_(1, order[:, :n], False)
            at_random.append(mask)
    curve_u = (100.0 * correct(by_uncertainty).double().mean(dim=1)).tolist()
    curve_r = (100.0 * correct(at_random).double().mean(dim=1)).reshape(n_prompts, random_repeats).mean(dim=1).tolist()
    n_drop = int(math.floor(drop * n_prompts))
    keep = zeroshot.filter_prompts(logvar, n_drop)
    right_all, right_filtered = correct([by_uncertainty[0], keep]).double() * 100.0
    general = torch.tensor([k not in NAMING_KINDS for k in kinds])
    dropped = ~keep
    u = zeroshot.prompt_uncertainty(logvar)
    by_kind: Dict[str, float] = {}
    for kind in dict.fromkeys(kinds):
        cols = [p for p, k in enumerate(kinds) if k == kind]
        by_kind[kind] = float(u[:, cols].mean())
    img_u = images.uncertainty()
    return {
        "classes": n_cls, "prompts_per_class": n_prompts, "images": int(len(labels)),
        "general_prompts_per_class": int(general.sum()),
        "accuracy_all": float(right_all.mean()), "accuracy_filtered": float(right_filtered.mean()),
        "accuracy_random_drop": curve_r[n_drop], "dropped": n_drop,
        "dropped_general": float((dropped & general[None, :]).sum()) / max(int(dropped.sum()), 1),
        "curve": {"dropped": list(range(n_prompts)), "uncertainty": curve_u, "random": curve_r},
        "bins_all": M.uncertainty_analysis(img_u, right_all, n_bins),
        "bins_filtered": M.uncertainty_analysis(img_u, right_filtered, n_bins),
        "prompt_uncertainty_by_kind": by_kind,
        "uncertainty_general": float(u[:, general].mean()), "uncertainty_naming": float(u[:, ~general].mean()),
    }


def _zeroshot_table(results: Dict[str, Dict[str, Any]]) -> str:
    lines = [
        "| model | accuracy, all 35 prompts | accuracy, most uncertain dropped | same number dropped at random | "
        "dropped prompts that do not name the digit | accuracy: most certain image bin / most uncertain bin | "
        "Spearman: image uncertainty bin vs accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        z = res.get("zeroshot")
        if name == "random":
            continue
        if not z:
            lines.append(f"| {MODEL_LABELS.get(name, name)} | n/a (variance head untrained) | | | | | |")
            continue
        b = z["bins_all"]["bin_value"]
        lines.append("| " + " | ".join([
            MODEL_LABELS.get(name, name), _fmt(z["accuracy_all"]),
            f"{_fmt(z['accuracy_filtered'])} ({z['dropped']} dropped)", _fmt(z["accuracy_random_drop"]),
            f"{100 * z['dropped_general']:.0f} %", f"{b[0]:.1f} / {b[-1]:.1f}",
            _fmt(z["bins_all"]["spearman"], "+.2f")]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _plots(out: Path, split: Any, results: Dict[str, Dict[str, Any]], bench_rows: List[Dict[str, Any]]) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the demo extra
        return []
    from .data.digits import CAPTION_KINDS

    written = []
    prob = [n for n in results if results[n].get("uncertainty")]
    if prob:
        n_plausible = split.num_plausible_images().numpy()
        first: Dict[str, int] = {}
        for j, t in enumerate(split.captions):
            first.setdefault(t, j)
        rows = np.array(sorted(first.values()))
        kinds = [split.caption_kind[j] for j in rows]
        cmap = plt.get_cmap("viridis", len(CAPTION_KINDS))
        fig, axes = plt.subplots(1, len(prob), figsize=(5.2 * len(prob), 4.2), squeeze=False)
        for ax, name in zip(axes[0], prob):
            u = np.asarray(results[name]["uncertainty"]["caption_uncertainty"])
            for ki, kind in enumerate(CAPTION_KINDS):
                sel = [r for r, k in zip(rows, kinds) if k == kind]
                if sel:
                    ax.scatter(n_plausible[sel], u[sel], s=14, color=cmap(ki), label=kind, alpha=0.85)
            rho = results[name]["uncertainty"].get("spearman_distinct_captions")
            ax.set_xscale("log")
            ax.set_xlabel("plausible test images of the caption (log)")
            ax.set_ylabel("caption uncertainty (mean variance)")
            ax.set_title(f"{MODEL_LABELS.get(name, name)}: Spearman {rho:+.2f} (distinct captions)", fontsize=9)
        axes[0][-1].legend(fontsize=6, loc="best", ncol=2)
        fig.tight_layout()
        fig.savefig(out / "uncertainty_vs_plausible.png", dpi=110)
        plt.close(fig)
        written.append("uncertainty_vs_plausible.png")

        fig, axes = plt.subplots(1, len(prob), figsize=(5.2 * len(prob), 3.8), squeeze=False)
        for ax, name in zip(axes[0], prob):
            u = results[name]["uncertainty"]
            x = np.arange(1, 11)
            for off, gt, color in ((-0.2, "original", "#999999"), (0.2, "plausible", "#1f77b4")):
                bins = u[f"t2i_bins_{gt}"]
                ax.bar(x + off, bins["bin_value"], width=0.4, color=color,
                       label=f"{gt} GT (Spearman {bins['spearman']:+.2f})")
            ax.set_xticks(x)
            ax.set_xlabel("caption uncertainty bin (1 = most certain)")
            ax.set_ylabel("text-to-image R@1 (%)")
            ax.set_title(MODEL_LABELS.get(name, name), fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "r1_per_uncertainty_bin.png", dpi=110)
        plt.close(fig)
        written.append("r1_per_uncertainty_bin.png")

    zs = [n for n in results if results[n].get("zeroshot")]
    if zs:
        fig, axes = plt.subplots(len(zs), 2, figsize=(11.0, 3.9 * len(zs)), squeeze=False)
        for row, name in enumerate(zs):
            z = results[name]["zeroshot"]
            ax = axes[row][0]
            n_bins = len(z["bins_all"]["bin_value"])
            x = np.arange(1, n_bins + 1)
            ax.bar(x - 0.2, z["bins_all"]["bin_value"], width=0.4, color="#999999",
                   label=f"all {z['prompts_per_class']} prompts ({z['accuracy_all']:.1f} %)")
            ax.bar(x + 0.2, z["bins_filtered"]["bin_value"], width=0.4, color="#1f77b4",
                   label=f"{z['dropped']} most uncertain dropped ({z['accuracy_filtered']:.1f} %)")
            ax.axhline(10.0, color="k", lw=0.6, ls=":")
            ax.set_xticks(x)
            ax.set_ylim(0, 130)
            ax.set_yticks(range(0, 101, 20))
            ax.set_xlabel("image uncertainty bin (1 = most certain)")
            ax.set_ylabel("zero-shot accuracy (%)")
            ax.set_title(f"{MODEL_LABELS.get(name, name)}: accuracy per image-uncertainty bin "
                         "(dotted: chance)", fontsize=9)
            ax.legend(fontsize=7, loc="upper left", ncol=2)
            ax = axes[row][1]
            c = z["curve"]
            ax.plot(c["dropped"], c["uncertainty"], color="#1f77b4", marker=".", label="most uncertain dropped")
            ax.plot(c["dropped"], c["random"], color="#999999", marker=".", label="dropped at random (mean of 5)")
            ax.axvline(z["dropped"], color="k", lw=0.6, ls="--")
            ax.axvline(z["general_prompts_per_class"], color="#d62728", lw=0.6, ls=":",
                       label=f"{z['general_prompts_per_class']} prompts do not name the digit")
            ax.set_xlabel(f"prompts dropped per class (of {z['prompts_per_class']})")
            ax.set_ylabel("zero-shot accuracy (%)")
            ax.set_title(f"{MODEL_LABELS.get(name, name)}: uncertainty-based prompt filtering", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(out / "zeroshot_uncertainty.png", dpi=110)
        plt.close(fig)
        written.append("zeroshot_uncertainty.png")

    ours = [r for r in bench_rows if r["impl"].startswith("pcmekit") and r.get("speedup")]
    if ours:
        fig, ax = plt.subplots(figsize=(9.0, 1.2 + 0.55 * len(ours)))
        labels = [f"{r['suite']}: {r['case']}" for r in ours]
        speed = [r["speedup"] for r in ours]
        ax.barh(labels, speed, color=["#1f77b4" if s >= 1 else "#d62728" for s in speed])
        ax.axvline(1.0, color="k", lw=0.8)
        for y, s in enumerate(speed):
            ax.text(s, y, f" {s:.2f}x", va="center", fontsize=8)
        ax.set_xlabel("speed-up over pure PyTorch (same machine, same threads; > 1 is faster)", fontsize=8)
        ax.set_xlim(0, max(speed) * 1.3)
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "kernel_speedups.png", dpi=110)
        plt.close(fig)
        written.append("kernel_speedups.png")
    return written


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _train_and_evaluate(loss: str, config_dict: Dict[str, Any], data: Any = None,
                        echo: Optional[Callable[[str], None]] = None):
    """Trains one model of the demo and evaluates it on the test split (also in a worker process).
    Returns ``(evaluation, history, (train seconds, eval seconds))``."""
    from .data.digits import load_digits_captions
    from .models import build_digits_model
    from .train import DEFAULT_METRIC, evaluate, fit

    config = DemoConfig(**config_dict)
    if data is None:
        data = load_digits_captions(seed=config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.train_threads)
    log = None if config.quick else (echo or (lambda line: print(line, flush=True)))
    try:
        model = build_digits_model(len(data.vocab), embed_dim=config.embed_dim, width=config.width, seed=config.seed)
        t0 = time.perf_counter()
        fitted = fit(model, data.train, loss=loss, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                     seed=config.seed, log=log, progress=False)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = evaluate(fitted.model, data.test, metric=DEFAULT_METRIC[loss], criterion=fitted.criterion,
                       seed=config.seed, uncertainty=loss != "infonce")
        if loss != "infonce":  # InfoNCE trains no variance: there is no uncertainty to filter by
            res["zeroshot"] = digits_zeroshot(fitted.model, data.test, data.vocab, drop=config.zeroshot_drop,
                                              seed=config.seed)
        t_eval = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return res, fitted.history, (t_train, t_eval)


def run_demo(out_dir: Path, config: Optional[DemoConfig] = None, echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Runs the demo and writes the report to ``out_dir``; returns every number (as results.json)."""
    from ._core import build_info
    from .data.digits import load_digits_captions

    config = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}

    t0 = time.perf_counter()
    data = load_digits_captions(seed=config.seed)
    timings["data"] = time.perf_counter() - t0
    train, test = data.train, data.test
    echo(f"[pcmekit demo] digits: {train.num_images} train / {test.num_images} test images, "
         f"{train.num_captions} / {test.num_captions} captions, vocabulary {len(data.vocab)}")

    results: Dict[str, Dict[str, Any]] = {}
    histories: Dict[str, Any] = {}
    jobs = list(config.losses)
    t0 = time.perf_counter()
    if config.workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Longest first (PCME's Monte-Carlo loss and PCME++ take longer than InfoNCE).
        order = sorted(jobs, key=lambda n: {"pcme": 0, "pcmepp": 1}.get(n, 2))
        with ProcessPoolExecutor(max_workers=min(config.workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {n: pool.submit(_train_and_evaluate, n, dataclasses.asdict(config)) for n in order}
            done = {n: f.result() for n, f in futures.items()}
    else:
        done = {n: _train_and_evaluate(n, dataclasses.asdict(config), data=data, echo=echo) for n in jobs}
    timings["train_and_eval_all"] = time.perf_counter() - t0
    for loss in jobs:
        res, history, times = done[loss]
        results[loss], histories[loss] = res, history
        timings[f"train_{loss}"], timings[f"eval_{loss}"] = times
        echo(f"[pcmekit demo] {MODEL_LABELS[loss]}: trained {config.epochs} epochs in {times[0]:.1f} s, "
             f"plausible RSUM {res['plausible']['RSUM']:.1f}, original RSUM {res['original']['RSUM']:.1f}")
    from .train import random_baseline

    results["random"] = random_baseline(test, seed=config.seed)  # what every model has to beat

    bench_rows: List[Dict[str, Any]] = []
    if config.bench:
        t0 = time.perf_counter()
        bench_rows = _run_bench(out, echo)
        timings["bench"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_kind = _per_kind(test, results)
    plots = _plots(out, test, results, bench_rows)
    timings["plots"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    report = {
        "config": dataclasses.asdict(config),
        "build_info": build_info(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "data": {"train_images": train.num_images, "test_images": test.num_images,
                 "train_captions": train.num_captions, "test_captions": test.num_captions,
                 "vocabulary": len(data.vocab), "captions_per_image": data.captions_per_image,
                 "test_fraction": data.test_fraction},
        "results": results,
        "per_kind": per_kind,
        "history": histories,
        "bench": bench_rows,
        "timings_s": timings,
        "plots": plots,
    }
    (out / "results.json").write_text(json.dumps(_jsonable(report), indent=1))
    (out / "README.md").write_text(_readme(report, config))
    echo(f"[pcmekit demo] wrote {out / 'README.md'}, results.json" + "".join(f", {p}" for p in plots) +
         f" in {timings['total']:.1f} s")
    return report


def _readme(report: Dict[str, Any], config: DemoConfig) -> str:
    results = report["results"]
    t = report["timings_s"]
    d = report["data"]
    names = list(results)
    info = report["build_info"]
    lines = [
        "# pcmekit demo: probabilistic image-caption retrieval on handwritten digits",
        "",
        f"Generated by `pcmekit demo` on {report['date']} (pcmekit {info.get('version')}, torch {report['torch']}, "
        f"CPU SIMD path {info.get('cpu_simd', info.get('simd', '?'))}, CUDA available: {info.get('cuda_available')}). "
        f"Total wall time {t['total']:.0f} s"
        + "".join(f"; {k} {v:.1f} s" for k, v in t.items() if k != "total") + ".",
        "",
        "## Data",
        "",
        f"scikit-learn's bundled 8x8 digits: {d['train_images']} train / {d['test_images']} test images "
        f"(stratified, seed {config.seed}), {d['captions_per_image']} captions per image "
        f"({d['train_captions']} / {d['test_captions']}), vocabulary of {d['vocabulary']} words. "
        "Each caption is a predicate over the digit and facts measured on the pixels (ink, slant from image "
        "moments, width; judged against the image's own digit class), so every (image, caption) pair is known "
        "to match or not. *Original* ground truth is one-to-one (a caption matches the image it was written "
        "for; an image its own captions); *plausible* ground truth is every pair whose predicate holds "
        "(ECCV Caption's idea, here complete).",
        "",
        "## Retrieval on the test split",
        "",
        f"Models: image CNN + 1 transformer block, caption transformer (1 block), width {config.width}, "
        f"D = {config.embed_dim}, PCME++ heads (GPO pooling, uncertainty block); AdamP, lr {config.lr}, "
        f"batch {config.batch_size}, {config.epochs} epochs, identity match matrix (the original annotation) "
        f"for every loss; each model on {config.train_threads} thread(s), {config.workers} at a time. Ranking: the whole gallery with `pcmekit.topk` by each method's own score "
        "(PCME++: CSD; PCME: Monte-Carlo match probability, 7 samples; InfoNCE: cosine of the means). "
        "All numbers in percent.",
        "",
        format_retrieval_table(results),
        "",
        "Against the *original* ground truth a caption query has 1 positive and an image query 5, although "
        "a test caption is true of 30 % of the test images on average: ranking another plausible image first "
        "counts as a miss, which is why ECCV Caption argues for the plausible ground truth. The random-ranking "
        "rows are what a model has to beat.",
        "",
        "## Uncertainty vs caption generality",
        "",
        "Uncertainty of a caption = mean variance of its Gaussian over the D dimensions. PCME / PCME++ argue it "
        "should grow with the number of images a caption plausibly matches.",
        "",
        _uncertainty_table(results),
        "",
        _per_kind_table(report["per_kind"], names),
        "",
    ]
    for p, title in (("uncertainty_vs_plausible.png", "Uncertainty vs number of plausible images"),
                     ("r1_per_uncertainty_bin.png", "Text-to-image R@1 per uncertainty bin")):
        if p in report["plots"]:
            lines += [f"![{title}]({p})", ""]
    if any(r.get("zeroshot") for r in results.values()):
        z0 = next(r["zeroshot"] for r in results.values() if r.get("zeroshot"))
        lines += [
            "## Zero-shot classification with uncertainty",
            "",
            f"The ten digit classes, classified without a classifier: each class's {z0['prompts_per_class']} prompts "
            f"(every caption of the grammar true of some image of that digit; {z0['general_prompts_per_class']} of them, "
            "such as \"a digit\" or \"an odd digit\", do not name it) are encoded by the caption side, averaged into "
            "one Gaussian per class (means averaged and renormalised, variances averaged: `pcmekit.zeroshot.class_prototypes`), "
            f"and each of the {z0['images']} test images goes to the class with the smallest CSD "
            "(`zeroshot.csd_logits`). Filtering drops each class's "
            f"{z0['dropped']} most uncertain prompts (`zeroshot.filter_prompts`, {config.zeroshot_drop:g} of them); "
            "the random column drops as many at random (mean of 5 draws). Chance is 10 %.",
            "",
            _zeroshot_table(results),
            "",
        ]
        if "zeroshot_uncertainty.png" in report["plots"]:
            lines += ["![Zero-shot accuracy per image-uncertainty bin and vs prompts dropped](zeroshot_uncertainty.png)", ""]
    if "kernel_speedups.png" in report["plots"]:
        lines += ["![Kernel speed-ups](kernel_speedups.png)", ""]
    if report["bench"]:
        lines += [
            "## Kernels vs pure PyTorch (this machine)",
            "",
            "Quick-size runs of the benchmark harness (`pcmekit bench pairwise topk --quick`, medians of 5; "
            "full-size runs: `make bench`), each checked against the pure-PyTorch baseline before timing; "
            "other contenders (faiss) where installed. At these small sizes fixed costs weigh more than at the "
            f"issue sizes, and the machine was shared. Threads: {torch.get_num_threads()}.",
            "",
            _bench_table(report["bench"]),
            "",
        ]
    lines += [
        "## Reading the numbers",
        "",
        _observations(report),
        "",
        "Every number above is in `results.json`; the training curves are under `history`.",
        "",
    ]
    return "\n".join(lines)


def _observations(report: Dict[str, Any]) -> str:
    """Plain statements derived from the numbers (no claims the numbers do not support)."""
    res = report["results"]
    out = []
    rnd = res.get("random")
    res = {n: r for n, r in res.items() if n != "random"}
    ranked = sorted(res, key=lambda n: res[n]["plausible"]["RSUM"], reverse=True)
    out.append("- Plausible-GT RSUM, best first: " + ", ".join(
        f"{MODEL_LABELS.get(n, n)} {res[n]['plausible']['RSUM']:.1f}" for n in ranked) + ".")
    ranked_o = sorted(res, key=lambda n: res[n]["original"]["RSUM"], reverse=True)
    out.append("- Original-GT RSUM, best first: " + ", ".join(
        f"{MODEL_LABELS.get(n, n)} {res[n]['original']['RSUM']:.1f}" for n in ranked_o) + ".")
    if rnd is not None:
        out.append(f"- A random ranking scores plausible RSUM {rnd['plausible']['RSUM']:.1f} (a general caption such as "
                   f"'a digit' is true of every image), original RSUM {rnd['original']['RSUM']:.1f}, PMRP "
                   f"{rnd['pmrp']['i2t']['PMRP']:.1f} / {rnd['pmrp']['t2i']['PMRP']:.1f} (i2t / t2i).")
    for n in res:
        u = res[n].get("uncertainty")
        if not u:
            continue
        rho = u["spearman_caption_uncertainty_vs_plausible_images"]
        rho_d = u.get("spearman_distinct_captions", float("nan"))
        sign = "grows" if rho_d > 0.1 else ("shrinks" if rho_d < -0.1 else "barely changes")
        out.append(f"- {MODEL_LABELS.get(n, n)}: caption uncertainty {sign} with the number of plausible images "
                   f"(Spearman {rho_d:+.2f} over distinct captions, {rho:+.2f} over all test captions).")
        z = res[n].get("zeroshot")
        if z:
            change = z["accuracy_filtered"] - z["accuracy_all"]
            verb = "raises" if change > 0.05 else ("lowers" if change < -0.05 else "leaves")
            out.append(f"- {MODEL_LABELS.get(n, n)} zero-shot: dropping the {z['dropped']} most uncertain prompts per class "
                       f"{verb} accuracy {'from' if verb != 'leaves' else 'at'} {z['accuracy_all']:.1f} %"
                       + (f" to {z['accuracy_filtered']:.1f} %" if verb != "leaves" else "")
                       + f" (at random: {z['accuracy_random_drop']:.1f} %); {100 * z['dropped_general']:.0f} % of the "
                       f"dropped prompts do not name the digit ({z['general_prompts_per_class']} of "
                       f"{z['prompts_per_class']} do; mean prompt uncertainty {z['uncertainty_general']:.3g} for those, "
                       f"{z['uncertainty_naming']:.3g} for the prompts that name it).")
    if report["bench"]:
        for r in report["bench"]:
            if r["impl"].startswith("pcmekit") and r.get("speedup"):
                faster = f"{r['speedup']:.2f}x faster than" if r["speedup"] >= 1 else \
                    f"{1 / r['speedup']:.2f}x slower than"
                out.append(f"- {r['suite']} / {r['case']}: pcmekit {r['median_ms']:.1f} ms, {faster} pure PyTorch.")
    return "\n".join(out)

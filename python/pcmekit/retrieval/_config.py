"""The configuration and arguments of a gallery index: metric, metric arguments, device, dtype,
seed, k, batch size and the rows it is given. Shared by the index, its file format and the
sharded index; the argument rules of the ops themselves live in :mod:`pcmekit.ops._args`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..ops._args import (
    HALF,
    as_int,
    as_scalar,
    as_tensor,
    check_bool,
    check_device,
    check_metric,
    check_num_samples,
)
from ..ops._args import check_no_nan as check_nan
from ..ops.topk import TOPK_METRICS

DEFAULT_BATCH_SIZE = 4096
DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
MATCH_KWARGS = ("scale", "shift", "num_samples", "squared")
# Independent random streams derived from the seed (numpy SeedSequence([seed, stream, rank])).
GALLERY_STREAM, QUERY_STREAM = 0, 1


def check_index_metric(metric: Any) -> str:
    return check_metric(metric, TOPK_METRICS)


def metric_config(metric: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The metric's arguments, normalised to JSON-serialisable values (empty for distances)."""
    if metric != "match_prob":
        if kwargs:
            raise TypeError(f"metric {metric!r} takes no metric arguments, got {', '.join(sorted(kwargs))}")
        return {}
    unknown = sorted(set(kwargs) - set(MATCH_KWARGS))
    if unknown:
        raise TypeError(
            f"unknown argument(s) {', '.join(unknown)} for metric 'match_prob'; expected {', '.join(MATCH_KWARGS)}"
        )
    config: Dict[str, Any] = {}
    for name in ("scale", "shift"):
        value = kwargs.get(name)
        if value is None:
            raise ValueError(f"metric 'match_prob' needs {name} (logit = -scale * d + shift), got None")
        # Stored in the file's JSON header, so checked (finite) here, once, at construction.
        number = float(as_scalar(value, name, accepts="a float or a 1-element tensor").detach())
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite, got {value}")
        config[name] = number
    config["num_samples"] = check_num_samples(kwargs.get("num_samples", 7))
    config["squared"] = check_bool(kwargs.get("squared", False), "squared")
    return config


def check_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if isinstance(dtype, str) and dtype in DTYPES:
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise TypeError(f"dtype must be one of torch.{', torch.'.join(DTYPES)}, got {dtype!r}")
    if device.type == "cpu" and dtype in HALF:
        raise TypeError(f"dtype {dtype} is supported on CUDA only; use torch.float32 or torch.float64 on the CPU")
    return dtype


def check_index_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    check_device(dev, "device")
    return dev


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


def check_k(k: Any) -> int:
    if k is None:
        raise TypeError("k is required: the number of results per query")
    k = as_int(k, "k")
    # Checked here, not left to the core: a ShardedIndex must know before its collectives.
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def check_batch_size(batch_size: Any) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    return int(batch_size)


def as_float_tensor(x: Any, name: str) -> Tuple[torch.Tensor, bool]:
    """(tensor, came_from_numpy) of a floating-point argument (numpy wrapped without a copy)."""
    t, was_numpy = as_tensor(x, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    return t, was_numpy


def check_rows(t: torch.Tensor, name: str, rows: str, dim: Optional[int], dim_owner: str) -> None:
    """``t`` is ``[rows, D]`` with ``D == dim`` when ``dim`` is known."""
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [{rows}, D] (2-D), got {list(t.shape)} ({t.dim()}-D)")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have shape [{rows}, D] with D == {dim_owner} ({dim}), got {list(t.shape)}")


def check_no_nan(t: torch.Tensor, name: str) -> None:
    check_nan([(name, t)])


def derived_seed(seed: int, stream: int, rank: int = 0) -> int:
    """A 64-bit seed for one random stream: independent streams for gallery and query noise and
    for each rank's gallery shard."""
    return int(np.random.SeedSequence([seed, stream, rank]).generate_state(1, np.uint64)[0])

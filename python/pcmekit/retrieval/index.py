"""Gallery indexes for top-k retrieval: :class:`GalleryIndex` (one process) and
:class:`ShardedIndex` (a gallery sharded over the ranks of a torch.distributed group).

Both store the gallery's Gaussians in growable buffers and search by streaming batches of queries
through :func:`pcmekit.topk`; neither ever holds a query x gallery score matrix.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple, Union

import numpy as np
import torch

from .._core import cuda_compiled
from ..embedding import ProbEmbedding
from ._topk import topk

__all__ = ["GalleryIndex", "ShardedIndex", "FORMAT_NAME", "FORMAT_VERSION"]

Array = Union[torch.Tensor, np.ndarray]

FORMAT_NAME = "pcmekit.GalleryIndex"
FORMAT_VERSION = 1
DEFAULT_BATCH_SIZE = 4096

_DISTANCES = ("csd", "w2", "l2", "kl", "bhattacharyya", "elk")
_METRICS = _DISTANCES + ("match_prob",)
_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# How each dtype is stored in the file (numpy has no bfloat16; bfloat16 -> float32 is exact).
_FILE_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": np.float32}
_MATCH_KWARGS = ("scale", "shift", "num_samples", "squared")
# Independent random streams derived from the seed (numpy SeedSequence([seed, stream, rank])).
_GALLERY_STREAM, _QUERY_STREAM = 0, 1


# ---------------------------------------------------------------------------------------------
# Argument checks.


def _check_metric(metric: Any) -> str:
    if not isinstance(metric, str) or metric not in _METRICS:
        raise ValueError(f"metric must be one of {', '.join(_METRICS)}; got {metric!r}")
    return metric


def _metric_config(metric: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The metric's arguments, normalised to JSON-serialisable values (empty for distances)."""
    if metric != "match_prob":
        if kwargs:
            raise TypeError(f"metric {metric!r} takes no metric arguments, got {', '.join(sorted(kwargs))}")
        return {}
    unknown = sorted(set(kwargs) - set(_MATCH_KWARGS))
    if unknown:
        raise TypeError(
            f"unknown argument(s) {', '.join(unknown)} for metric 'match_prob'; expected {', '.join(_MATCH_KWARGS)}"
        )
    config: Dict[str, Any] = {}
    for name in ("scale", "shift"):
        value = kwargs.get(name)
        if value is None:
            raise ValueError(f"metric 'match_prob' needs {name} (logit = -scale * d + shift), got None")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name} must be a float or a 1-element tensor, got shape {list(value.shape)}")
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value}")
        config[name] = float(value)
    num_samples = kwargs.get("num_samples", 7)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    config["num_samples"] = int(num_samples)
    squared = kwargs.get("squared", False)
    if not isinstance(squared, bool):
        raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
    config["squared"] = squared
    return config


def _check_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if isinstance(dtype, str) and dtype in _DTYPES:
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise TypeError(f"dtype must be one of torch.{', torch.'.join(_DTYPES)}, got {dtype!r}")
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"dtype {dtype} is supported on CUDA only; use torch.float32 or torch.float64 on the CPU")
    return dtype


def _check_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a cpu or cuda device, got {dev}")
    if dev.type == "cuda" and not cuda_compiled():
        raise ValueError(
            "device is a CUDA device, but pcmekit was built without CUDA support; rebuild with nvcc on "
            "PATH (PCMEKIT_CUDA=ON) or use device='cpu'"
        )
    return dev


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


def _check_k(k: Any) -> int:
    if k is None:
        raise TypeError("k is required: the number of results per query")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def _check_batch_size(batch_size: Any) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    return int(batch_size)


def _as_tensor(x: Any, name: str) -> Tuple[torch.Tensor, bool]:
    """(tensor, came_from_numpy); numpy arrays are wrapped without a copy."""
    if isinstance(x, torch.Tensor):
        t, was_numpy = x, False
    elif isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array, got numpy {x.dtype}")
        t, was_numpy = torch.from_numpy(x), True
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    return t, was_numpy


def _check_rows(t: torch.Tensor, name: str, rows: str, dim: Optional[int], dim_owner: str) -> None:
    """``t`` is ``[rows, D]`` with ``D == dim`` when ``dim`` is known."""
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [{rows}, D] (2-D), got {list(t.shape)} ({t.dim()}-D)")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have shape [{rows}, D] with D == {dim_owner} ({dim}), got {list(t.shape)}")


def _check_no_nan(t: torch.Tensor, name: str) -> None:
    nan = torch.isnan(t)
    if bool(nan.any()):
        row = int(nan.reshape(t.shape[0], -1).any(dim=1).nonzero()[0])
        raise ValueError(f"{name} contains NaN (first in row {row}); NaN has no place in a ranking")


def _derived_seed(seed: int, stream: int, rank: int = 0) -> int:
    """A 64-bit seed for one random stream: independent streams for gallery and query noise and
    for each rank's gallery shard."""
    return int(np.random.SeedSequence([seed, stream, rank]).generate_state(1, np.uint64)[0])


def _value_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the scores pcmekit.topk returns for inputs of ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ---------------------------------------------------------------------------------------------
# A progress bar on stderr (tqdm is not a dependency).


class _ProgressBar:
    """``search  42.0% |############        | 2100/5000 queries [1.2s<1.7s, 1750 q/s]``,
    redrawn in place at most 10 times a second; a final newline on close."""

    def __init__(self, total: int, desc: str, enabled: bool, stream: Optional[TextIO] = None) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.stream is not None
        self.start = time.monotonic()
        self.last = -math.inf
        self.drawn = False
        self.width = 0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self.last < 0.1:
            return
        self.last = now
        frac = done / self.total if self.total else 1.0
        bar_width = 24
        bar = "#" * int(round(bar_width * frac))
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        line = (
            f"{self.desc} {100 * frac:5.1f}% |{bar:<{bar_width}}| {done}/{self.total} queries "
            f"[{elapsed:.1f}s<{eta:.1f}s, {rate:.0f} q/s]"
        )
        self.stream.write("\r" + line.ljust(self.width))  # pad over a longer previous line
        self.width = len(line)
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


# ---------------------------------------------------------------------------------------------
# Loading: every failure is a ValueError naming the file and the problem.


class IndexFormatError(ValueError):
    """The file is not a readable pcmekit GalleryIndex (a ValueError)."""


def _file_error(path: str, what: str) -> IndexFormatError:
    return IndexFormatError(f"cannot load GalleryIndex from {path!r}: {what}")


def _read_index_file(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(header, arrays) of an index file, validated against each other."""
    with open(path, "rb") as f:  # our own handle: np.load(path) leaks it when the zip is broken
        magic = f.read(4)
        if magic[:2] != b"PK":
            raise _file_error(
                path,
                f"not an npz (zip) archive (it starts with {magic!r}); GalleryIndex.save writes npz files",
            )
        f.seek(0)
        return _read_npz(path, f)


def _read_npz(path: str, f: Any) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    try:
        with np.load(f, allow_pickle=False) as npz:
            names = list(npz.files)
            if "header" not in names:
                held = ", ".join(names) or "nothing"
                raise _file_error(path, f"no 'header' entry, so it is not a GalleryIndex file (it holds: {held})")
            header = _parse_header(path, npz["header"])
            expected = _expected_arrays(header)
            missing = [n for n in expected if n not in names]
            if missing:
                raise _file_error(path, f"the header announces {', '.join(missing)} but the file lacks it")
            arrays = {n: npz[n] for n in expected}
    except IndexFormatError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as err:
        raise _file_error(path, f"the file is corrupt or truncated ({type(err).__name__}: {err})") from err
    _check_arrays(path, header, arrays)
    return header, arrays


def _parse_header(path: str, raw: np.ndarray) -> Dict[str, Any]:
    if raw.shape != () or raw.dtype.kind != "U":
        raise _file_error(path, f"'header' must be a JSON string, got a {raw.dtype} array of shape {list(raw.shape)}")
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise _file_error(path, f"'header' is not valid JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise _file_error(path, f"the header's format is {found!r}, expected {FORMAT_NAME!r}")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _file_error(path, f"the header's version must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise _file_error(
            path, f"format version {version} was written by a newer pcmekit; this one reads up to {FORMAT_VERSION}"
        )
    try:
        _check_metric(header.get("metric"))
        kwargs = header.get("metric_kwargs")
        if not isinstance(kwargs, dict):
            raise ValueError(f"metric_kwargs must be an object, got {kwargs!r}")
        _metric_config(header["metric"], kwargs)
        if header.get("dtype") not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {header.get('dtype')!r}")
        _check_seed(header.get("seed"))
    except (TypeError, ValueError) as err:
        raise _file_error(path, f"bad header: {err}") from err
    count, dim = header.get("count"), header.get("dim")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise _file_error(path, f"the header's count must be an int >= 0, got {count!r}")
    if dim is None:
        if count:
            raise _file_error(path, f"the header has count {count} but no dim")
    elif isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise _file_error(path, f"the header's dim must be an int >= 1 or null, got {dim!r}")
    return header


def _expected_arrays(header: Dict[str, Any]) -> List[str]:
    names = ["mean"]
    if header["metric"] != "l2":
        names.append("logvar")
    if header["metric"] == "match_prob":
        names += ["eps", "rng_state"]
    return names


def _check_arrays(path: str, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    count, dim = header["count"], header["dim"] or 0
    file_dtype = np.dtype(_FILE_DTYPES[header["dtype"]])
    shapes: Dict[str, Tuple[int, ...]] = {"mean": (count, dim), "logvar": (count, dim)}
    if "eps" in arrays:
        shapes["eps"] = (count, header["metric_kwargs"].get("num_samples", 7), dim)
    for name, shape in shapes.items():
        if name not in arrays:
            continue
        a = arrays[name]
        if a.shape != shape:
            raise _file_error(path, f"'{name}' must have shape {list(shape)} (from the header), got {list(a.shape)}")
        if a.dtype != file_dtype:
            raise _file_error(
                path, f"'{name}' must have dtype {file_dtype} (the header says {header['dtype']}), got {a.dtype}"
            )
    if "rng_state" in arrays:
        state = arrays["rng_state"]
        if state.dtype != np.uint8 or state.ndim != 1:
            raise _file_error(path, f"'rng_state' must be a 1-D uint8 array, got {state.dtype} {list(state.shape)}")


# ---------------------------------------------------------------------------------------------
# The index.


class GalleryIndex:
    """A growable gallery of diagonal Gaussians, searched with :func:`pcmekit.topk`.

    ``index = GalleryIndex(metric="csd", device="cpu", dtype=torch.float32, seed=0, **metric_kwargs)``

    * ``metric``: ``csd``, ``w2``, ``l2``, ``kl``, ``bhattacharyya``, ``elk`` (distances, smallest
      first) or ``match_prob`` (PCME's Monte-Carlo match probability, largest first), as in
      :func:`pcmekit.topk`. ``kl`` is KL(query || gallery item).
    * ``metric_kwargs`` (``match_prob`` only): ``scale`` and ``shift`` (required floats),
      ``num_samples`` (J, default 7) and ``squared`` (default False).
    * ``device``, ``dtype``: where and how the gallery is stored and searched. Added embeddings
      and queries are converted to them (so a float32 index rounds float64 inputs).
    * ``seed``: only for ``match_prob``. The gallery's noise ``eps [N, J, D]`` is drawn once, at
      :meth:`add` time, from a CPU ``torch.Generator`` seeded from ``seed``, and stored (and
      saved), so repeated searches give identical results. The query noise of a search is drawn
      for all queries at once, before batching, from a generator seeded from ``seed`` afresh for
      every call (an independent stream), so a search is deterministic and does not depend on
      ``batch_size``; pass ``eps_q`` to :meth:`search` to choose it yourself.

    Storage grows by doubling its capacity (amortised O(1) copying per added row); search
    results index rows in the order they were added, from 0. ``len(index)`` is the number of
    rows. The stored rows can be read through :attr:`mean`, :attr:`logvar` and :attr:`noise`
    (views of the storage: do not write to them).

    **File format** (:meth:`save` / :meth:`load`): an uncompressed numpy ``.npz`` archive with

    * ``header``: a 0-d unicode array holding a JSON object: ``format`` = ``"pcmekit.GalleryIndex"``,
      ``version`` (1), ``metric``, ``metric_kwargs`` (object), ``dtype`` (``"float32"``,
      ``"float64"``, ``"float16"`` or ``"bfloat16"``), ``count`` (N), ``dim`` (D; null while the
      index has never seen an embedding), ``seed``, and ``pcmekit_version`` (informative);
    * ``mean``: ``[N, D]``; ``logvar``: ``[N, D]`` (absent for ``metric="l2"``, which ignores
      log-variances), in the numpy dtype named by ``dtype`` (bfloat16 is stored as float32, exactly);
    * for ``match_prob`` only: ``eps``: ``[N, J, D]``, the gallery noise, and ``rng_state``: 1-D
      uint8, the state of the noise generator, so that adding after a load draws what adding
      without the save/load would have drawn.

    The file is written to a temporary file in the same directory, flushed to disk and renamed
    over ``path`` (``os.replace``, atomic on POSIX and Windows): a crash leaves either the old
    file or the new one, never a torn one. Loading checks the format name and version, the
    header fields and every array's shape and dtype; a truncated, corrupt or foreign file raises
    ``ValueError`` (:class:`IndexFormatError`) naming the path and what is wrong.
    """

    def __init__(
        self,
        metric: str = "csd",
        device: Union[str, torch.device] = "cpu",
        dtype: Union[torch.dtype, str] = torch.float32,
        *,
        seed: int = 0,
        **metric_kwargs: Any,
    ) -> None:
        self._metric = _check_metric(metric)
        self._metric_kwargs = _metric_config(self._metric, metric_kwargs)
        self._device = _check_device(device)
        self._dtype = _check_dtype(dtype, self._device)
        self._seed = _check_seed(seed)
        self._n = 0
        self._dim: Optional[int] = None
        self._mean: Optional[torch.Tensor] = None  # [capacity, D]
        self._logvar: Optional[torch.Tensor] = None  # [capacity, D]; None for l2
        self._eps: Optional[torch.Tensor] = None  # [capacity, J, D]; match_prob only
        self._generator: Optional[torch.Generator] = None
        if self._metric == "match_prob":
            seed = _derived_seed(self._seed, _GALLERY_STREAM, self._noise_rank())
            self._generator = torch.Generator().manual_seed(seed)

    def _noise_rank(self) -> int:
        return 0

    # -- properties ------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def metric_kwargs(self) -> Dict[str, Any]:
        """The metric's arguments (a copy; empty for distances)."""
        return dict(self._metric_kwargs)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def dim(self) -> Optional[int]:
        """D, fixed by the first :meth:`add` (None before)."""
        return self._dim

    @property
    def mean(self) -> Optional[torch.Tensor]:
        """The stored means ``[N, D]`` (a view of the storage; None before the first add)."""
        return None if self._mean is None else self._mean[: self._n]

    @property
    def logvar(self) -> Optional[torch.Tensor]:
        """The stored log-variances ``[N, D]`` (None for ``l2`` and before the first add)."""
        return None if self._logvar is None else self._logvar[: self._n]

    @property
    def noise(self) -> Optional[torch.Tensor]:
        """The gallery noise ``[N, J, D]`` of ``match_prob`` (None for other metrics)."""
        return None if self._eps is None else self._eps[: self._n]

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        kwargs = "".join(f", {k}={v!r}" for k, v in self._metric_kwargs.items())
        return (
            f"{type(self).__name__}(metric={self._metric!r}{kwargs}, N={self._n}, D={self._dim}, "
            f"dtype={self._dtype}, device={self._device})"
        )

    # -- adding ----------------------------------------------------------------------------

    def add(
        self, mean: Union[Array, ProbEmbedding], logvar: Optional[Array] = None, *, eps: Optional[Array] = None
    ) -> None:
        """Appends ``n`` Gaussians: ``mean [n, D]``, ``logvar [n, D]`` (torch or numpy; or one
        :class:`~pcmekit.ProbEmbedding`). Their indices are ``len(index) .. len(index) + n - 1``.

        ``logvar`` may be omitted (and is ignored) for ``metric="l2"``. For ``match_prob`` the
        noise ``eps [n, J, D]`` is drawn from the index's seeded generator unless given. The
        first add fixes D. Either every row is added or, on an error, none.

        Raises:
            ValueError: wrong shapes, D different from the index's, NaN in the inputs.
            TypeError: non-floating inputs.
        """
        if isinstance(mean, ProbEmbedding):
            if logvar is not None:
                raise TypeError("pass either a ProbEmbedding or (mean, logvar), not both")
            embedding = mean
            mean, logvar = embedding.mean, embedding.logvar
        m, _ = _as_tensor(mean, "mean")
        _check_rows(m, "mean", "n", self._dim, "the index's D")
        lv: Optional[torch.Tensor] = None
        if self._metric != "l2":
            if logvar is None:
                raise ValueError(f"metric {self._metric!r} needs logvar (the log-variances), got None")
            lv, _ = _as_tensor(logvar, "logvar")
            if lv.shape != m.shape:
                raise ValueError(f"logvar must have the shape of mean {list(m.shape)}, got {list(lv.shape)}")
        e: Optional[torch.Tensor] = None
        if eps is not None:
            if self._metric != "match_prob":
                raise ValueError(f"eps (sampling noise) is only used by metric 'match_prob', not {self._metric!r}")
            e, _ = _as_tensor(eps, "eps")
            j = self._metric_kwargs["num_samples"]
            if tuple(e.shape) != (m.shape[0], j, m.shape[1]):
                raise ValueError(f"eps must have shape [n, J, D] = {[m.shape[0], j, m.shape[1]]}, got {list(e.shape)}")

        n, rows = self._n, m.shape[0]
        if self._dim is None:
            self._dim = m.shape[1]
        self._reserve(n + rows)
        assert self._mean is not None
        self._mean[n : n + rows].copy_(m)
        _check_no_nan(self._mean[n : n + rows], "mean")
        if lv is not None:
            assert self._logvar is not None
            self._logvar[n : n + rows].copy_(lv)
            _check_no_nan(self._logvar[n : n + rows], "logvar")
        if self._eps is not None:
            if e is None:
                e = self._draw_noise(rows)
            self._eps[n : n + rows].copy_(e)
            _check_no_nan(self._eps[n : n + rows], "eps")
        self._n = n + rows  # commit only when every check passed

    def _draw_noise(self, rows: int) -> torch.Tensor:
        assert self._generator is not None and self._dim is not None
        draw = torch.float64 if self._dtype == torch.float64 else torch.float32
        return torch.randn((rows, self._metric_kwargs["num_samples"], self._dim), generator=self._generator, dtype=draw)

    def _reserve(self, rows: int) -> None:
        """Capacity for ``rows`` rows, doubling (amortised O(1) copying per row)."""
        capacity = 0 if self._mean is None else self._mean.shape[0]
        if rows <= capacity and self._mean is not None:
            return
        assert self._dim is not None
        capacity = max(rows, 2 * capacity, 16)
        d = self._dim

        def grow(old: Optional[torch.Tensor], tail: Tuple[int, ...]) -> torch.Tensor:
            new = torch.empty((capacity, *tail), dtype=self._dtype, device=self._device)
            if old is not None and self._n:
                new[: self._n].copy_(old[: self._n])
            return new

        self._mean = grow(self._mean, (d,))
        if self._metric != "l2":
            self._logvar = grow(self._logvar, (d,))
        if self._metric == "match_prob":
            self._eps = grow(self._eps, (self._metric_kwargs["num_samples"], d))

    # -- searching -------------------------------------------------------------------------

    def search(
        self,
        q_mean: Union[Array, ProbEmbedding],
        q_logvar: Optional[Array] = None,
        k: Optional[int] = None,
        batch_size: Optional[int] = None,
        progress: Optional[bool] = None,
        *,
        eps_q: Optional[Array] = None,
    ) -> Tuple[Array, Array]:
        """The ``k`` best gallery items for each query: ``(values [Q, k], indices [Q, k] int64)``.

        ``q_mean``, ``q_logvar``: ``[Q, D]`` (torch or numpy; ``q_logvar`` may be None for
        ``l2``), or a :class:`~pcmekit.ProbEmbedding` followed by ``k``. Values are sorted best
        first (ascending distances, descending match probabilities); ties go to the lower
        gallery index. Exactly :func:`pcmekit.topk` of the queries against the stored gallery.

        The queries are streamed through :func:`pcmekit.topk` in batches of ``batch_size``
        (default 4096) rows, moved to the index's device and dtype one batch at a time; the
        results do not depend on ``batch_size``. ``progress``: a progress bar on stderr; None
        (default) shows it when stderr is a terminal and there is more than one batch, True
        always, False never. ``eps_q [Q, J, D]`` (``match_prob`` only): the query noise (drawn
        from the seed when omitted, see the class docstring).

        Results are on the queries' device (numpy for numpy queries).

        Raises:
            ValueError: empty index, ``k`` outside ``1 .. len(index)``, D mismatch, NaN in the
                queries, bad ``batch_size``.
            TypeError: ``k`` not an int, non-floating queries.
        """
        prepared = self._prepare_search(q_mean, q_logvar, k, batch_size, eps_q)
        qm, ql, k, batch_size, eps, to_numpy = prepared
        if self._n == 0:
            raise ValueError("cannot search an empty GalleryIndex: add() embeddings first")
        if k > self._n:
            raise ValueError(f"k must be <= the number of gallery items ({self._n}), got {k}")
        show = progress if progress is not None else (_stderr_is_terminal() and qm.shape[0] > batch_size)
        values, indices = self._search_local(qm, ql, k, batch_size, bool(show), eps)
        return self._deliver(values, indices, qm.device, to_numpy)

    def _prepare_search(
        self, q_mean: Any, q_logvar: Any, k: Any, batch_size: Any, eps_q: Any
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], int, int, Optional[torch.Tensor], bool]:
        """Validated (queries, query logvars, k, batch_size, query noise, numpy flag). Checks
        that need only this process (k against the index size is left to the caller)."""
        if isinstance(q_mean, ProbEmbedding):
            if k is None and isinstance(q_logvar, (int, np.integer)) and not isinstance(q_logvar, bool):
                q_logvar, k = None, q_logvar  # search(embedding, k)
            elif q_logvar is not None:
                raise TypeError("with a ProbEmbedding as queries, pass k as the second argument or by keyword")
            q_mean, q_logvar = q_mean.mean, q_mean.logvar
        k = _check_k(k)
        batch_size = _check_batch_size(batch_size)
        qm, to_numpy = _as_tensor(q_mean, "q_mean")
        _check_rows(qm, "q_mean", "Q", self._dim, "the index's D")
        ql: Optional[torch.Tensor] = None
        if self._metric != "l2":
            if q_logvar is None:
                raise ValueError(f"metric {self._metric!r} needs q_logvar (the queries' log-variances), got None")
            ql, _ = _as_tensor(q_logvar, "q_logvar")
            if ql.shape != qm.shape:
                raise ValueError(f"q_logvar must have the shape of q_mean {list(qm.shape)}, got {list(ql.shape)}")
            if ql.device != qm.device:
                raise ValueError(f"q_logvar is on {ql.device} but q_mean is on {qm.device}; they must be on one device")
        _check_no_nan(qm, "q_mean")
        if ql is not None:
            _check_no_nan(ql, "q_logvar")
        eps: Optional[torch.Tensor] = None
        if self._metric == "match_prob":
            j, q, d = self._metric_kwargs["num_samples"], qm.shape[0], qm.shape[1]
            if eps_q is None:
                gen = torch.Generator().manual_seed(_derived_seed(self._seed, _QUERY_STREAM))
                draw = torch.float64 if self._dtype == torch.float64 else torch.float32
                eps = torch.randn((q, j, d), generator=gen, dtype=draw)
            else:
                eps, _ = _as_tensor(eps_q, "eps_q")
                if tuple(eps.shape) != (q, j, d):
                    raise ValueError(f"eps_q must have shape [Q, J, D] = {[q, j, d]}, got {list(eps.shape)}")
                _check_no_nan(eps, "eps_q")
        elif eps_q is not None:
            raise ValueError(f"eps_q (sampling noise) is only used by metric 'match_prob', not {self._metric!r}")
        return qm, ql, k, batch_size, eps, to_numpy

    def _search_local(
        self,
        qm: torch.Tensor,
        ql: Optional[torch.Tensor],
        k: int,
        batch_size: int,
        show_progress: bool,
        eps_q: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` (1 <= k <= len) of this process's gallery, on the index's device."""
        q = qm.shape[0]
        values = torch.empty((q, k), dtype=_value_dtype(self._dtype), device=self._device)
        indices = torch.empty((q, k), dtype=torch.int64, device=self._device)
        assert self._mean is not None
        g_mean = self._mean[: self._n]
        g_logvar = None if self._logvar is None else self._logvar[: self._n]
        bar = _ProgressBar(q, f"{type(self).__name__}.search", show_progress)
        try:
            for start in range(0, q, batch_size):
                stop = min(start + batch_size, q)
                qb = qm[start:stop].to(device=self._device, dtype=self._dtype)
                qlb = None if ql is None else ql[start:stop].to(device=self._device, dtype=self._dtype)
                kwargs: Dict[str, Any] = {}
                if self._metric == "match_prob":
                    assert eps_q is not None and self._eps is not None
                    kwargs = dict(self._metric_kwargs)
                    kwargs["eps_q"] = eps_q[start:stop].to(device=self._device, dtype=self._dtype)
                    kwargs["eps_g"] = self._eps[: self._n]
                v, i = topk(qb, qlb, g_mean, g_logvar, k, self._metric, **kwargs)
                values[start:stop] = torch.as_tensor(v)
                indices[start:stop] = torch.as_tensor(i)
                bar.update(stop)
        finally:
            bar.close()
        return values, indices

    @staticmethod
    def _deliver(
        values: torch.Tensor, indices: torch.Tensor, device: torch.device, to_numpy: bool
    ) -> Tuple[Array, Array]:
        if to_numpy:
            return values.cpu().numpy(), indices.cpu().numpy()
        return values.to(device), indices.to(device)

    # -- files -----------------------------------------------------------------------------

    def _header(self) -> Dict[str, Any]:
        from .._core import build_info

        dtype_name = next(name for name, dt in _DTYPES.items() if dt == self._dtype)
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "metric": self._metric,
            "metric_kwargs": self._metric_kwargs,
            "dtype": dtype_name,
            "count": self._n,
            "dim": self._dim,
            "seed": self._seed,
            "pcmekit_version": build_info()["version"],
        }

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the index to ``path`` (exactly that name; no suffix is added) in the format of
        the class docstring, atomically: a temporary file in the same directory, flushed to disk,
        then renamed over ``path``."""
        path = os.fspath(path)
        header = self._header()
        file_dtype = _FILE_DTYPES[header["dtype"]]
        d = self._dim or 0

        def host(t: Optional[torch.Tensor], shape: Tuple[int, ...]) -> np.ndarray:
            if t is None:
                return np.empty(shape, dtype=file_dtype)
            stored = torch.float32 if self._dtype == torch.bfloat16 else self._dtype
            return t[: self._n].detach().cpu().to(stored).numpy()

        arrays: Dict[str, np.ndarray] = {"header": np.array(json.dumps(header)), "mean": host(self._mean, (0, d))}
        if self._metric != "l2":
            arrays["logvar"] = host(self._logvar, (0, d))
        if self._metric == "match_prob":
            assert self._generator is not None
            arrays["eps"] = host(self._eps, (0, self._metric_kwargs["num_samples"], d))
            arrays["rng_state"] = self._generator.get_state().numpy()
        _atomic_write(path, arrays)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> "GalleryIndex":
        """Reads an index written by :meth:`save` onto ``device``. Metric, metric arguments,
        dtype, seed, gallery noise and the noise generator's state come from the file.

        Raises:
            FileNotFoundError: no such file.
            ValueError: (:class:`IndexFormatError`) the file is truncated, corrupt, of another
                format or version, or its arrays disagree with its header.
        """
        return cls._load(path, device, {})

    @classmethod
    def _load(cls, path: Union[str, os.PathLike], device: Union[str, torch.device], extra: Dict[str, Any]) -> Any:
        path = os.fspath(path)
        header, arrays = _read_index_file(path)
        index = cls(header["metric"], device=device, dtype=header["dtype"], seed=header["seed"], **extra,
                    **header["metric_kwargs"])
        index._restore(path, header, arrays)
        return index

    def _restore(self, path: str, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
        count, dim = header["count"], header["dim"]
        self._dim = dim
        if dim is None:
            return
        self._n = 0
        self._reserve(count)
        assert self._mean is not None
        self._mean[:count].copy_(torch.from_numpy(arrays["mean"]))
        if self._logvar is not None:
            self._logvar[:count].copy_(torch.from_numpy(arrays["logvar"]))
        if self._eps is not None:
            self._eps[:count].copy_(torch.from_numpy(arrays["eps"]))
        if self._generator is not None:
            try:
                self._generator.set_state(torch.from_numpy(arrays["rng_state"].copy()))
            except RuntimeError as err:
                raise _file_error(path, f"'rng_state' is not a torch CPU generator state ({err})") from err
        self._n = count


def _atomic_write(path: str, arrays: Dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file as 0600; give it the mode a plain open() would have.
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


# ---------------------------------------------------------------------------------------------
# Sharded search over torch.distributed.

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


class ShardedIndex(GalleryIndex):
    """A gallery sharded over the ranks of a torch.distributed process group.

    ``ShardedIndex(metric="csd", device="cpu", dtype=torch.float32, *, group=None, seed=0, **metric_kwargs)``

    Each rank holds one shard: the rows of its own :meth:`add` calls (a shard may stay empty).
    Global indices number the shards in rank order: rank r's local row ``i`` is global index
    ``sum(len of shards of ranks < r) + i``, so the global gallery is the concatenation of the
    shards of ranks 0, 1, ...

    :meth:`search` is a *collective*: every rank of ``group`` (default: the default group) calls
    it with the same queries and ``k``, and every rank gets the same ``(values [Q, k],
    indices [Q, k])``, identical to a :class:`GalleryIndex` search over the concatenated gallery.
    Each rank searches its shard for ``min(k, shard size)`` results, adds its offset, pads to
    ``k`` and all-gathers values and indices (two tensor ``all_gather`` calls: on CUDA tensors for
    NCCL, CPU tensors for gloo); the lists are merged by a stable sort on the values in rank
    order, which keeps the lower global index first among ties. Shard sizes, ``Q``, ``k``, D,
    dtype and the index configuration are exchanged (and checked to agree) first; when a rank
    rejects its arguments, every rank raises instead of leaving the others waiting.

    ``len(index)`` is this rank's shard size (no communication); :meth:`shard_sizes` and
    :meth:`global_size` are collectives. ``match_prob``: rank r draws its gallery noise from a
    stream seeded from ``(seed, r)``; query noise comes from ``seed`` alone, so ranks must share
    the seed (checked). :meth:`save` writes this rank's shard; :meth:`load` reads one (call it on
    every rank with that rank's file).
    """

    def __init__(
        self,
        metric: str = "csd",
        device: Union[str, torch.device] = "cpu",
        dtype: Union[torch.dtype, str] = torch.float32,
        *,
        group: Any = None,
        seed: int = 0,
        **metric_kwargs: Any,
    ) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("ShardedIndex needs torch.distributed, which this torch build lacks")
        if not dist.is_initialized():
            raise RuntimeError(
                "ShardedIndex needs an initialised torch.distributed process group (call "
                "torch.distributed.init_process_group first), or use GalleryIndex in one process"
            )
        self._group = group
        self._rank = dist.get_rank(group)
        self._world_size = dist.get_world_size(group)
        if self._rank < 0:
            raise RuntimeError("this process is not a member of the ShardedIndex's group")
        super().__init__(metric, device, dtype, seed=seed, **metric_kwargs)

    def _noise_rank(self) -> int:
        return self._rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def group(self) -> Any:
        return self._group

    def _collective_device(self) -> torch.device:
        import torch.distributed as dist

        backend = str(dist.get_backend(self._group)).lower()
        if "nccl" in backend:
            if self._device.type == "cuda":
                return self._device
            if "gloo" not in backend:  # NCCL only: its tensors must live on a GPU
                return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _all_gather(self, local: torch.Tensor) -> List[torch.Tensor]:
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(self._world_size)]
        dist.all_gather(parts, local.contiguous(), group=self._group)
        return parts

    def _exchange(self, values: Sequence[int]) -> List[List[int]]:
        local = torch.tensor(list(values), dtype=torch.int64, device=self._collective_device())
        return [p.tolist() for p in self._all_gather(local)]

    def shard_sizes(self) -> List[int]:
        """Every rank's shard size, in rank order (collective)."""
        return [m[0] for m in self._exchange([self._n])]

    def global_size(self) -> int:
        """The number of items over all shards (collective)."""
        return sum(self.shard_sizes())

    def _config_checksum(self) -> int:
        config = json.dumps([self._metric, self._metric_kwargs, self._seed], sort_keys=True)
        return zlib.crc32(config.encode())

    def search(
        self,
        q_mean: Union[Array, ProbEmbedding],
        q_logvar: Optional[Array] = None,
        k: Optional[int] = None,
        batch_size: Optional[int] = None,
        progress: Optional[bool] = None,
        *,
        eps_q: Optional[Array] = None,
    ) -> Tuple[Array, Array]:
        """Collective top-``k`` over the whole sharded gallery: ``(values [Q, k], indices [Q, k])``
        with global indices, the same on every rank. Arguments as :meth:`GalleryIndex.search`;
        ``progress=None`` shows the bar of rank 0 only (when its stderr is a terminal).

        Raises (on every rank): ValueError when any rank's arguments are bad, ranks disagree on
        Q, k, D, dtype or configuration, every shard is empty, or ``k`` exceeds the global size.
        """
        error: Optional[BaseException] = None
        try:
            qm, ql, k_, batch_size_, eps, to_numpy = self._prepare_search(q_mean, q_logvar, k, batch_size, eps_q)
            meta = [0, self._n, -1 if self._dim is None else self._dim, qm.shape[0], qm.shape[1], k_,
                    _DTYPE_CODES[self._dtype], self._config_checksum()]
        except (TypeError, ValueError) as err:
            error = err
            meta = [1, 0, -1, 0, 0, 0, 0, 0]
        metas = self._exchange(meta)
        if error is not None:
            raise error
        failed = [r for r, m in enumerate(metas) if m[0]]
        if failed:
            raise RuntimeError(
                f"ShardedIndex.search: rank(s) {failed} rejected their arguments (see the error raised there); "
                "every rank stops so that none waits in a collective"
            )
        self._check_agreement(metas)
        sizes = [m[1] for m in metas]
        total = sum(sizes)
        if total == 0:
            raise ValueError("cannot search a ShardedIndex whose shards are all empty: add() embeddings first")
        if k_ > total:
            raise ValueError(f"k must be <= the number of gallery items over all shards ({total}), got {k_}")

        q = qm.shape[0]
        value_dtype = _value_dtype(self._dtype)
        if q == 0:  # every rank knows Q == 0: no data to exchange
            empty = torch.empty((0, k_), dtype=value_dtype, device=self._device)
            return self._deliver(empty, empty.long(), qm.device, to_numpy)
        offset = sum(sizes[: self._rank])
        k_local = min(k_, self._n)
        descending = self._metric == "match_prob"
        comm = self._collective_device()
        pad_values = torch.full((q, k_), -math.inf if descending else math.inf, dtype=value_dtype, device=comm)
        pad_indices = torch.full((q, k_), -1, dtype=torch.int64, device=comm)
        if k_local > 0:
            show = progress if progress is not None else (
                self._rank == 0 and _stderr_is_terminal() and q > batch_size_
            )
            v, i = self._search_local(qm, ql, k_local, batch_size_, bool(show), eps)
            pad_values[:, :k_local] = v
            pad_indices[:, :k_local] = i + offset
        all_values = self._all_gather(pad_values)
        all_indices = self._all_gather(pad_indices)
        # Rank order = ascending global indices, and each rank's list has ties in index order:
        # a stable sort of the concatenation keeps the lower global index first among ties.
        counts = [min(k_, s) for s in sizes]
        merged_v = torch.cat([v[:, :c] for v, c in zip(all_values, counts)], dim=1)
        merged_i = torch.cat([i[:, :c] for i, c in zip(all_indices, counts)], dim=1)
        order = torch.sort(merged_v, dim=1, descending=descending, stable=True).indices[:, :k_]
        values = torch.gather(merged_v, 1, order)
        indices = torch.gather(merged_i, 1, order)
        return self._deliver(values, indices, qm.device, to_numpy)

    def _check_agreement(self, metas: List[List[int]]) -> None:
        def column(c: int) -> List[int]:
            return [m[c] for m in metas]

        dims = {d for d in column(2) if d >= 0} | set(column(4))
        problems = []
        if len(set(column(3))) > 1:
            problems.append(f"Q per rank {column(3)}")
        if len(set(column(5))) > 1:
            problems.append(f"k per rank {column(5)}")
        if len(dims) > 1:
            problems.append(f"shard D per rank {column(2)} (-1: empty) and query D per rank {column(4)}")
        if len(set(column(6))) > 1:
            problems.append(f"dtype codes per rank {column(6)}")
        if len(set(column(7))) > 1:
            problems.append("metric, metric arguments or seed")
        if problems:
            raise ValueError(
                "ShardedIndex.search: every rank must pass the same queries and k to an index of the same "
                "configuration; ranks disagree on " + "; ".join(problems)
            )

    @classmethod
    def load(  # type: ignore[override]
        cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", *, group: Any = None
    ) -> "ShardedIndex":
        """Reads one rank's shard written by :meth:`save` (or any GalleryIndex file) into a
        ShardedIndex of ``group``. Not a collective; errors as :meth:`GalleryIndex.load`."""
        return cls._load(path, device, {"group": group})

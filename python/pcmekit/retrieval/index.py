"""Gallery indexes for top-k retrieval: :class:`GalleryIndex` (one process) here, and
:class:`~pcmekit.retrieval.sharded.ShardedIndex` (a gallery sharded over the ranks of a
torch.distributed group) in :mod:`pcmekit.retrieval.sharded`.

Both store the gallery's Gaussians in growable buffers and search by streaming batches of queries
through :func:`pcmekit.topk`; neither ever holds a query x gallery score matrix. The file format
is :mod:`pcmekit.retrieval._format`; the argument rules are :mod:`pcmekit.retrieval._config`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .._core import build_info
from .._progress import Progress, stderr_is_terminal
from ..embedding import ProbEmbedding
from ..ops._args import out_dtype
from ..ops.topk import PREPARABLE_METRICS, PreparedGallery, prepare_gallery, topk, topk_prepared
from ._config import (
    DTYPES,
    GALLERY_STREAM,
    QUERY_STREAM,
    as_float_tensor,
    check_batch_size,
    check_dtype,
    check_index_device,
    check_index_metric,
    check_k,
    check_no_nan,
    check_rows,
    check_seed,
    derived_seed,
    metric_config,
)
from ._format import FILE_DTYPES, FORMAT_NAME, FORMAT_VERSION, IndexFormatError, file_error, read_index_file, write_index_file

__all__ = ["GalleryIndex", "FORMAT_NAME", "FORMAT_VERSION", "IndexFormatError"]

Array = Union[torch.Tensor, np.ndarray]
#: (queries, query logvars, k, batch_size, query noise, numpy flag), validated.
PreparedSearch = Tuple[torch.Tensor, Optional[torch.Tensor], int, int, Optional[torch.Tensor], bool]


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
    * ``prepare``: on the CPU, for ``csd``, ``w2``, ``l2`` and ``kl`` in float32 / float64, keep
      the gallery prepared for searching (its column terms and its packed GEMM operand, made at
      the first search after an :meth:`add` and reused until the next): a search then reads
      the gallery once instead of taking exp of its log-variances and repacking it on every
      call, which matters for small query batches (1.5-3x at Q = 1). Results are the same bit
      for bit. It costs one more copy of the means (two for w2 and kl); ``prepare=False``
      saves that memory. Ignored (nothing is prepared) for other metrics, dtypes and devices.
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
        prepare: bool = True,
        **metric_kwargs: Any,
    ) -> None:
        self._metric = check_index_metric(metric)
        self._metric_kwargs = metric_config(self._metric, metric_kwargs)
        self._device = check_index_device(device)
        self._dtype = check_dtype(dtype, self._device)
        self._seed = check_seed(seed)
        if not isinstance(prepare, bool):
            raise TypeError(f"prepare must be a bool, got {type(prepare).__name__}")
        self._prepare = (
            prepare
            and self._metric in PREPARABLE_METRICS
            and self._device.type == "cpu"
            and self._dtype in (torch.float32, torch.float64)
        )
        self._prepared: Optional[PreparedGallery] = None  # of the first _n rows; None = stale
        # The CPU top-k kernel refuses NaN queries with the message check_no_nan gives, and in one
        # batch its row numbers are the queries' own; so a one-batch CPU search leaves the check
        # to it (a few microseconds of a search that can take ten).
        self._kernel_checks_nan = self._device.type == "cpu"
        self._n = 0
        self._dim: Optional[int] = None
        self._mean: Optional[torch.Tensor] = None  # [capacity, D]
        self._logvar: Optional[torch.Tensor] = None  # [capacity, D]; None for l2
        self._eps: Optional[torch.Tensor] = None  # [capacity, J, D]; match_prob only
        self._generator: Optional[torch.Generator] = None
        if self._metric == "match_prob":
            seed = derived_seed(self._seed, GALLERY_STREAM, self._noise_rank())
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
        m, lv, _ = self._rows(mean, logvar, "", "n", "the log-variances")
        e: Optional[torch.Tensor] = None
        if eps is not None:
            if self._metric != "match_prob":
                raise ValueError(f"eps (sampling noise) is only used by metric 'match_prob', not {self._metric!r}")
            e, _ = as_float_tensor(eps, "eps")
            j = self._metric_kwargs["num_samples"]
            if tuple(e.shape) != (m.shape[0], j, m.shape[1]):
                raise ValueError(f"eps must have shape [n, J, D] = {[m.shape[0], j, m.shape[1]]}, got {list(e.shape)}")

        n, rows = self._n, m.shape[0]
        if self._dim is None:
            self._dim = m.shape[1]
        self._reserve(n + rows)
        assert self._mean is not None
        self._mean[n : n + rows].copy_(m)
        check_no_nan(self._mean[n : n + rows], "mean")
        if lv is not None:
            assert self._logvar is not None
            self._logvar[n : n + rows].copy_(lv)
            check_no_nan(self._logvar[n : n + rows], "logvar")
        if self._eps is not None:
            if e is None:
                e = self._draw_noise(rows)
            self._eps[n : n + rows].copy_(e)
            check_no_nan(self._eps[n : n + rows], "eps")
        self._n = n + rows  # commit only when every check passed
        self._prepared = None

    def _rows(
        self, mean: Any, logvar: Any, prefix: str, rows: str, what: str
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], bool]:
        """``{prefix}mean [rows, D]`` and (unless the metric is l2) ``{prefix}logvar`` of its shape
        and device, as tensors, and whether the means were a numpy array."""
        m, to_numpy = as_float_tensor(mean, f"{prefix}mean")
        check_rows(m, f"{prefix}mean", rows, self._dim, "the index's D")
        if self._metric == "l2":
            return m, None, to_numpy
        if logvar is None:
            raise ValueError(f"metric {self._metric!r} needs {prefix}logvar ({what}), got None")
        lv, _ = as_float_tensor(logvar, f"{prefix}logvar")
        if lv.shape != m.shape:
            raise ValueError(f"{prefix}logvar must have the shape of {prefix}mean {list(m.shape)}, got {list(lv.shape)}")
        if lv.device != m.device:
            raise ValueError(f"{prefix}logvar is on {lv.device} but {prefix}mean is on {m.device}; they must be on one device")
        return m, lv, to_numpy

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
        return self._search(lambda: self._prepare_search(q_mean, q_logvar, k, batch_size, eps_q), progress)

    def _search(self, prepare: Callable[[], "PreparedSearch"], progress: Optional[bool]) -> Tuple[Array, Array]:
        """:meth:`search` once its arguments are known: ``prepare()`` validates them (a
        :class:`ShardedIndex` calls it where a failure can still be announced to every rank)."""
        qm, ql, k, batch_size, eps, to_numpy = prepare()
        if self._n == 0:
            raise ValueError("cannot search an empty GalleryIndex: add() embeddings first")
        if k > self._n:
            raise ValueError(f"k must be <= the number of gallery items ({self._n}), got {k}")
        show = progress if progress is not None else (stderr_is_terminal() and qm.shape[0] > batch_size)
        values, indices = self._search_local(qm, ql, k, batch_size, bool(show), eps)
        return self._deliver(values, indices, qm.device, to_numpy)

    def _prepare_search(self, q_mean: Any, q_logvar: Any, k: Any, batch_size: Any, eps_q: Any) -> "PreparedSearch":
        """Validated (queries, query logvars, k, batch_size, query noise, numpy flag). Checks
        that need only this process (k against the index size is left to the caller)."""
        if isinstance(q_mean, ProbEmbedding):
            if k is None and isinstance(q_logvar, (int, np.integer)) and not isinstance(q_logvar, bool):
                q_logvar, k = None, q_logvar  # search(embedding, k)
            elif q_logvar is not None:
                raise TypeError("with a ProbEmbedding as queries, pass k as the second argument or by keyword")
            q_mean, q_logvar = q_mean.mean, q_mean.logvar
        k = check_k(k)
        batch_size = check_batch_size(batch_size)
        qm, ql, to_numpy = self._rows(q_mean, q_logvar, "q_", "Q", "the queries' log-variances")
        if not (self._kernel_checks_nan and qm.shape[0] <= batch_size):
            check_no_nan(qm, "q_mean")
            if ql is not None:
                check_no_nan(ql, "q_logvar")
        eps: Optional[torch.Tensor] = None
        if self._metric == "match_prob":
            j, q, d = self._metric_kwargs["num_samples"], qm.shape[0], qm.shape[1]
            if eps_q is None:
                gen = torch.Generator().manual_seed(derived_seed(self._seed, QUERY_STREAM))
                draw = torch.float64 if self._dtype == torch.float64 else torch.float32
                eps = torch.randn((q, j, d), generator=gen, dtype=draw)
            else:
                eps, _ = as_float_tensor(eps_q, "eps_q")
                if tuple(eps.shape) != (q, j, d):
                    raise ValueError(f"eps_q must have shape [Q, J, D] = {[q, j, d]}, got {list(eps.shape)}")
                check_no_nan(eps, "eps_q")
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
        assert self._mean is not None
        if self._prepare and self._prepared is None:
            # Made from these rows; add() and load() drop it (the storage may move).
            self._prepared = prepare_gallery(self._mean[: self._n], self.logvar, self._metric)
        same = qm.dtype == self._dtype and qm.device == self._device

        def search_batch(start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor]:
            whole = start == 0 and stop == q
            qb = qm if whole else qm[start:stop]
            qlb = ql if ql is None or whole else ql[start:stop]
            if not same:
                qb = qb.to(device=self._device, dtype=self._dtype)
                qlb = None if qlb is None else qlb.to(device=self._device, dtype=self._dtype)
            if self._prepared is not None:
                return topk_prepared(qb, qlb, self._prepared, k)
            kwargs: Dict[str, Any] = {}
            if self._metric == "match_prob":
                assert eps_q is not None and self._eps is not None
                kwargs = dict(self._metric_kwargs)
                kwargs["eps_q"] = eps_q[start:stop].to(device=self._device, dtype=self._dtype)
                kwargs["eps_g"] = self._eps[: self._n]
            v, i = topk(qb, qlb, self.mean, self.logvar, k, self._metric, **kwargs)
            return torch.as_tensor(v), torch.as_tensor(i)

        if q <= batch_size and not show_progress:
            # One batch: the kernel's outputs are the results (a search of a few queries costs
            # tens of microseconds, as much as copying them would).
            return search_batch(0, q)
        values = torch.empty((q, k), dtype=out_dtype(self._dtype), device=self._device)
        indices = torch.empty((q, k), dtype=torch.int64, device=self._device)
        bar = Progress(q, f"{type(self).__name__}.search", show_progress, unit="queries")
        try:
            for start in range(0, q, batch_size):
                stop = min(start + batch_size, q)
                values[start:stop], indices[start:stop] = search_batch(start, stop)
                bar.update(stop - start)
        finally:
            bar.close()
        return values, indices

    @staticmethod
    def _deliver(
        values: torch.Tensor, indices: torch.Tensor, device: torch.device, to_numpy: bool
    ) -> Tuple[Array, Array]:
        if to_numpy:
            return values.cpu().numpy(), indices.cpu().numpy()
        if values.device == device:
            return values, indices
        return values.to(device), indices.to(device)

    # -- files -----------------------------------------------------------------------------

    def _header(self) -> Dict[str, Any]:
        dtype_name = next(name for name, dt in DTYPES.items() if dt == self._dtype)
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
        file_dtype = FILE_DTYPES[header["dtype"]]
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
        write_index_file(path, arrays)

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
        header, arrays = read_index_file(path)
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
                raise file_error(path, f"'rng_state' is not a torch CPU generator state ({err})") from err
        self._n = count
        self._prepared = None

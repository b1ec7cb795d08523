"""The optional KeOps contender of the ``topk`` and ``sweep`` suites: CSD top-k with LazyTensor.

KeOps (``pip install pykeops``, or ``pcmekit[bench]``) generates C++ for a formula and compiles it
with the system compiler the first time the formula is used (one formula per D, dtype and k),
then loads it from its cache. Two things follow:

* **Where it writes.** pykeops creates its cache folder when it is *imported*, by default under
  ``~/.cache``. :func:`load` sets ``KEOPS_CACHE_FOLDER`` before the import, unless the caller set
  it already: ``PCMEKIT_KEOPS_CACHE`` if given, else ``<tmp>/pcmekit-keops-<user>`` (a tmp folder,
  so a benchmark never writes into the home directory; it persists between runs, so a formula is
  compiled once per machine). ``KEOPS_VERBOSE`` and ``PYKEOPS_VERBOSE`` are set to ``0`` unless
  given, so its build messages do not tear the progress bar (the compile time is in the notes).
* **Compile time is not run time.** :class:`KeOpsCSD` records the first call of each formula
  (compile or cache load included) separately from the steady state; the suites report both.

The reduction: ``Kmin_argKmin`` over the gallery index j of the exact CSD,
``|mu_q - mu_g|^2 + s_q + s_g`` with ``s = sum(exp(logvar))``, written as a LazyTensor formula
(``SqDist`` plus the two variance terms), so KeOps streams the gallery without a score matrix.
``s_g`` is computed once per gallery, outside the timing (like the faiss index); ``s_q`` is part
of every call. KeOps' CPU back end runs the formula with OpenMP, compiled with its own flags
(``-O3``, no ``-march``; ``CXXFLAGS`` is added when set).

PCME's match probability has a KeOps counterpart in ``bench match_prob``'s top-k case only
(:class:`KeOpsMatchProb`): a KeOps reduction returns a fixed-size result per query row, not the
row of N values that suite's dense ``log p`` / ``log(1 - p)`` cases measure. The formula is the
mean over the J x J sample pairs of sigmoid(shift - scale d), written out term by term, so its
generated code (and its compile time, about 25 s at J = 7 on one core) grows with J^2.
"""

from __future__ import annotations

import getpass
import os
import tempfile
import time
from typing import Any, Dict, Optional, Sequence, Set, Tuple

import torch

__all__ = ["load", "cache_folder", "import_seconds", "KeOpsCSD", "KeOpsMatchProb", "first_calls", "compile_note", "compile_seconds",
           "take_compile", "describe_error", "probe"]

_state: Dict[str, Any] = {"module": None, "error": None, "import_s": None}

# A formula's key: (D, dtype, device, k) for the CSD top-k, with the formula's name appended for
# the others, e.g. (D, dtype, device, k, "match_prob J=7").
Key = Tuple[Any, ...]

# Formula key -> seconds of its first call in this process (compile or cache load included) and
# the steady-state seconds of the same call repeated; filled by first_call.
first_calls: Dict[Key, Tuple[float, float]] = {}


def cache_folder() -> str:
    """The folder pykeops caches compiled formulas in (see the module docstring)."""
    given = os.environ.get("KEOPS_CACHE_FOLDER") or os.environ.get("PCMEKIT_KEOPS_CACHE")
    if given:
        return given
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (e.g. a uid without passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"pcmekit-keops-{user}")


def load() -> Tuple[Optional[Any], str]:
    """``(pykeops.torch.LazyTensor, "")``, or ``(None, why)`` when pykeops cannot be imported.

    The first call sets the cache folder and verbosity (module docstring) and imports pykeops;
    later calls return the same answer. Never raises: a benchmark reports and goes on.
    """
    if _state["module"] is not None or _state["error"] is not None:
        return _state["module"], _state["error"] or ""
    os.environ.setdefault("KEOPS_CACHE_FOLDER", cache_folder())
    os.environ.setdefault("KEOPS_VERBOSE", "0")
    os.environ.setdefault("PYKEOPS_VERBOSE", "0")
    start = time.perf_counter()
    try:
        from pykeops.torch import LazyTensor  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as err:
        why = f"pykeops not installed (pip install pykeops): {err}"
        _state["error"] = why
        return None, why
    except Exception as err:  # noqa: BLE001 - a broken install must not stop the other contenders
        why = f"pykeops failed to import: {type(err).__name__}: {_first_line(err)}"
        _state["error"] = why
        return None, why
    _state["import_s"] = time.perf_counter() - start
    _state["module"] = LazyTensor
    return LazyTensor, ""


def import_seconds() -> Optional[float]:
    """How long importing pykeops took in this process (None before :func:`load` succeeded)."""
    return _state["import_s"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""


def describe_error(err: BaseException) -> str:
    """A one-line reason for a failed KeOps call, for the notes."""
    return f"keops failed: {type(err).__name__}: {_first_line(err)}"


class _Formula:
    """What the KeOps contenders share: a formula ``key`` and the timed first call."""

    key: Key
    on_cuda: bool

    def __call__(self, *queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def first_call(self, *queries: torch.Tensor) -> Tuple[Tuple[torch.Tensor, torch.Tensor], str]:
        """Calls once and returns ``(result, note)``. The first call of this formula in the process
        is timed against an immediate second one, and the pair is kept in :data:`first_calls`:
        their difference is the compile (or cache-load) time."""
        sync = torch.cuda.synchronize if self.on_cuda else (lambda: None)
        if self.key in first_calls:
            return self(*queries), ""
        start = time.perf_counter()
        result = self(*queries)
        sync()
        first = time.perf_counter() - start
        start = time.perf_counter()
        self(*queries)
        sync()
        steady = time.perf_counter() - start
        first_calls[self.key] = (first, steady)
        return result, compile_note(self.key)


class KeOpsCSD(_Formula):
    """CSD top-``k`` of queries against one gallery, as a KeOps ``Kmin_argKmin`` reduction.

    ``g_mean``, ``g_logvar``: ``[N, D]`` float32 (or float64), on the CPU or a CUDA device KeOps
    supports. Calling with ``q_mean``, ``q_logvar`` ``[Q, D]`` returns ``(values [Q, k],
    indices [Q, k] int64)``, ascending, like :func:`pcmekit.topk` with ``metric="csd"``.
    """

    def __init__(self, lazy_tensor: Any, g_mean: torch.Tensor, g_logvar: torch.Tensor, k: int) -> None:
        if g_mean.dim() != 2 or g_mean.shape != g_logvar.shape:
            raise ValueError(
                f"g_mean and g_logvar must both have shape [N, D], got {list(g_mean.shape)} and {list(g_logvar.shape)}"
            )
        if not 1 <= k <= g_mean.shape[0]:
            raise ValueError(f"k must be in [1, N={g_mean.shape[0]}], got {k}")
        self.lazy = lazy_tensor
        self.k = k
        self.g_mean = g_mean.contiguous()
        self.g_var_sum = g_logvar.exp().sum(1, keepdim=True).contiguous()  # [N, 1], outside the timing
        self.key = (g_mean.shape[1], str(g_mean.dtype), g_mean.device.type, k)
        self.on_cuda = g_mean.is_cuda

    def __call__(self, *queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        q_mean, q_logvar = queries
        if q_mean.dim() != 2 or q_mean.shape[1] != self.g_mean.shape[1] or q_mean.shape != q_logvar.shape:
            raise ValueError(
                f"q_mean and q_logvar must both have shape [Q, D] with D == gallery D ({self.g_mean.shape[1]}), "
                f"got {list(q_mean.shape)} and {list(q_logvar.shape)}"
            )
        q_var_sum = q_logvar.exp().sum(1, keepdim=True)
        # axis=0: indexed by i (queries), axis=1: by j (gallery). Given explicitly, so that Q = 1
        # is still an i-variable (KeOps would read a [1, 1, D] tensor as a parameter and compile
        # a second formula for it).
        x = self.lazy(q_mean.contiguous(), axis=0)
        y = self.lazy(self.g_mean, axis=1)
        s_q = self.lazy(q_var_sum, axis=0)
        s_g = self.lazy(self.g_var_sum, axis=1)
        csd = x.sqdist(y) + s_q + s_g
        values, indices = csd.Kmin_argKmin(self.k, dim=1)
        return values, indices.long()


class KeOpsMatchProb(_Formula):
    """Top-``k`` by PCME's Monte-Carlo match probability, as a KeOps ``Kmin_argKmin`` of -p.

    p(q, g) = 1/J^2 sum_{a, b} sigmoid(shift - scale d(z_q,a, z_g,b)), with the samples
    z = mu + exp(logvar / 2) eps of :func:`pcmekit.match_prob` and d the Euclidean distance (its
    square when ``squared``). The gallery's samples ``[N, J D]`` are formed once, here, outside
    any timing (as a faiss index is built); each call forms the queries' and reduces. Returns
    ``(values [Q, k], indices [Q, k] int64)``, values descending, like :func:`pcmekit.topk` with
    ``metric="match_prob"`` on the same noise. Forward only (no gradients through it).
    """

    def __init__(self, lazy_tensor: Any, g_mean: torch.Tensor, g_logvar: torch.Tensor, eps_g: torch.Tensor,
                 k: int, scale: float, shift: float, squared: bool = False) -> None:
        if g_mean.dim() != 2 or g_mean.shape != g_logvar.shape:
            raise ValueError(
                f"g_mean and g_logvar must both have shape [N, D], got {list(g_mean.shape)} and {list(g_logvar.shape)}"
            )
        n, d = g_mean.shape
        if eps_g.dim() != 3 or eps_g.shape[0] != n or eps_g.shape[2] != d:
            raise ValueError(f"eps_g must have shape [N, J, D] = [{n}, J, {d}], got {list(eps_g.shape)}")
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, N={n}], got {k}")
        self.lazy = lazy_tensor
        self.k, self.d, self.j = k, d, eps_g.shape[1]
        self.scale, self.shift, self.squared = float(scale), float(shift), bool(squared)
        self.z_g = _samples(g_mean, g_logvar, eps_g)
        self.key = (d, str(g_mean.dtype), g_mean.device.type, k,
                    f"match_prob J={self.j}" + (" squared" if squared else ""))
        self.on_cuda = g_mean.is_cuda

    def __call__(self, *queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        q_mean, q_logvar, eps_q = queries
        if q_mean.dim() != 2 or q_mean.shape[1] != self.d or q_mean.shape != q_logvar.shape:
            raise ValueError(
                f"q_mean and q_logvar must both have shape [Q, D] with D == gallery D ({self.d}), "
                f"got {list(q_mean.shape)} and {list(q_logvar.shape)}"
            )
        if tuple(eps_q.shape) != (q_mean.shape[0], self.j, self.d):
            raise ValueError(f"eps_q must have shape [Q, J, D] = [{q_mean.shape[0]}, {self.j}, {self.d}], "
                             f"got {list(eps_q.shape)}")
        x = self.lazy(_samples(q_mean, q_logvar, eps_q), axis=0)
        y = self.lazy(self.z_g, axis=1)
        d, total = self.d, None
        for a in range(self.j):
            x_a = x[a * d:(a + 1) * d]
            for b in range(self.j):
                dist = (x_a - y[b * d:(b + 1) * d]).sqnorm2()
                if not self.squared:
                    dist = dist.sqrt()
                # sigmoid(shift - scale d) = 1 / (1 + exp(scale d - shift)); exp may overflow to
                # inf, which gives the right 0 (forward only, so no inf * 0 in a gradient).
                term = 1.0 / (1.0 + (self.scale * dist - self.shift).exp())
                total = term if total is None else total + term
        assert total is not None  # J >= 1
        neg_p = total * (-1.0 / (self.j * self.j))
        values, indices = neg_p.Kmin_argKmin(self.k, dim=1)
        return -values, indices.long()


def _samples(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``[rows, J D]``: row i holds its J samples mu_i + exp(logvar_i / 2) eps_i,j one after another."""
    z = mean[:, None, :] + (0.5 * logvar).exp()[:, None, :] * eps
    return z.reshape(mean.shape[0], -1).contiguous()


def formula_name(key: Key) -> str:
    """``keops formula D=64`` (the CSD top-k) or ``keops formula match_prob J=7 D=64``."""
    return f"keops formula {key[4]} D={key[0]}" if len(key) > 4 else f"keops formula D={key[0]}"


def compile_note(key: Key) -> str:
    """What :data:`first_calls` knows about a formula, for the notes."""
    if key not in first_calls:
        return ""
    first, steady = first_calls[key]
    return (f"{formula_name(key)}: first call {first:.2f} s (compile or cache load, "
            f"cache {os.environ.get('KEOPS_CACHE_FOLDER', cache_folder())}), then {steady * 1e3:.1f} ms")


def compile_seconds(key: Key) -> Optional[float]:
    """First call minus steady state of a formula (its compile or cache-load time), if recorded."""
    if key not in first_calls:
        return None
    first, steady = first_calls[key]
    return max(0.0, first - steady)


_reported: Set[Key] = set()


def take_compile(key: Key) -> Tuple[Optional[float], str]:
    """``(compile seconds, note)`` for the first row that reports this formula; later rows get
    ``(None, "... earlier in this run")``, so a column of compile times adds up to the time spent."""
    if key not in first_calls:
        return None, ""
    if key in _reported:
        return None, f"{formula_name(key)} compiled or loaded earlier in this run"
    _reported.add(key)
    return compile_seconds(key), compile_note(key)


def probe(formula: _Formula, queries: Sequence[torch.Tensor], calls: int, budget_s: float,
          probe_rows: int, device: str = "cpu") -> Tuple[bool, str, Optional[float]]:
    """Whether ``calls`` calls of ``formula`` on all of ``queries`` (tensors with the queries
    along dim 0) fit in ``budget_s`` seconds, estimated from its first ``probe_rows`` queries:
    their first call compiles (or loads) the formula, one more is timed and scaled to all of them.
    Returns ``(fits, note, compile seconds)``; the note says the compile time, or why it was
    skipped. Exceptions of the formula propagate (the caller reports them)."""
    rows = queries[0].shape[0]
    probe_rows = min(rows, probe_rows)
    head = [t[:probe_rows] for t in queries]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        formula.first_call(*head)
        sync()
        start = time.perf_counter()
        formula(*head)
        sync()
        seconds = time.perf_counter() - start
    estimate = seconds * rows / max(probe_rows, 1)
    compile_s, compile_note = take_compile(formula.key)
    if estimate * calls > budget_s:
        return False, (f"keops skipped: about {estimate:.0f} s per call (from {probe_rows} queries) x {calls} "
                       f"calls exceeds {budget_s:.0f} s; {compile_note}"), compile_s
    return True, compile_note, compile_s

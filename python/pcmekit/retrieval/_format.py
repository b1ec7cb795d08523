"""The GalleryIndex file format: an uncompressed numpy ``.npz`` archive (the layout is in
:class:`pcmekit.retrieval.GalleryIndex`'s docstring), written atomically and read back with every
field checked. Every failure to read is a :class:`IndexFormatError` (a ValueError) naming the file
and the problem.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from typing import Any, Dict, List, Tuple

import numpy as np

from .._io import atomic_write
from ._config import DTYPES, check_index_metric, check_seed, metric_config

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "IndexFormatError", "read_index_file", "write_index_file"]

FORMAT_NAME = "pcmekit.GalleryIndex"
FORMAT_VERSION = 1
# How each dtype is stored in the file (numpy has no bfloat16; bfloat16 -> float32 is exact).
FILE_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": np.float32}


def write_index_file(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Writes the archive's entries (``header`` first) to ``path``, atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


class IndexFormatError(ValueError):
    """The file is not a readable pcmekit GalleryIndex (a ValueError)."""


def file_error(path: str, what: str) -> IndexFormatError:
    return IndexFormatError(f"cannot load GalleryIndex from {path!r}: {what}")


def read_index_file(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(header, arrays) of an index file, validated against each other."""
    with open(path, "rb") as f:  # our own handle: np.load(path) leaks it when the zip is broken
        magic = f.read(4)
        if magic[:2] != b"PK":
            raise file_error(
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
                raise file_error(path, f"no 'header' entry, so it is not a GalleryIndex file (it holds: {held})")
            header = _parse_header(path, npz["header"])
            expected = _expected_arrays(header)
            missing = [n for n in expected if n not in names]
            if missing:
                raise file_error(path, f"the header announces {', '.join(missing)} but the file lacks it")
            arrays = {n: npz[n] for n in expected}
    except IndexFormatError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as err:
        raise file_error(path, f"the file is corrupt or truncated ({type(err).__name__}: {err})") from err
    _check_arrays(path, header, arrays)
    return header, arrays


def _parse_header(path: str, raw: np.ndarray) -> Dict[str, Any]:
    if raw.shape != () or raw.dtype.kind != "U":
        raise file_error(path, f"'header' must be a JSON string, got a {raw.dtype} array of shape {list(raw.shape)}")
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise file_error(path, f"'header' is not valid JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise file_error(path, f"the header's format is {found!r}, expected {FORMAT_NAME!r}")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise file_error(path, f"the header's version must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise file_error(
            path, f"format version {version} was written by a newer pcmekit; this one reads up to {FORMAT_VERSION}"
        )
    try:
        check_index_metric(header.get("metric"))
        kwargs = header.get("metric_kwargs")
        if not isinstance(kwargs, dict):
            raise ValueError(f"metric_kwargs must be an object, got {kwargs!r}")
        metric_config(header["metric"], kwargs)
        if header.get("dtype") not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {header.get('dtype')!r}")
        check_seed(header.get("seed"))
    except (TypeError, ValueError) as err:
        raise file_error(path, f"bad header: {err}") from err
    count, dim = header.get("count"), header.get("dim")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise file_error(path, f"the header's count must be an int >= 0, got {count!r}")
    if dim is None:
        if count:
            raise file_error(path, f"the header has count {count} but no dim")
    elif isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise file_error(path, f"the header's dim must be an int >= 1 or null, got {dim!r}")
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
    file_dtype = np.dtype(FILE_DTYPES[header["dtype"]])
    shapes: Dict[str, Tuple[int, ...]] = {"mean": (count, dim), "logvar": (count, dim)}
    if "eps" in arrays:
        shapes["eps"] = (count, header["metric_kwargs"].get("num_samples", 7), dim)
    for name, shape in shapes.items():
        if name not in arrays:
            continue
        a = arrays[name]
        if a.shape != shape:
            raise file_error(path, f"'{name}' must have shape {list(shape)} (from the header), got {list(a.shape)}")
        if a.dtype != file_dtype:
            raise file_error(
                path, f"'{name}' must have dtype {file_dtype} (the header says {header['dtype']}), got {a.dtype}"
            )
    if "rng_state" in arrays:
        state = arrays["rng_state"]
        if state.dtype != np.uint8 or state.ndim != 1:
            raise file_error(path, f"'rng_state' must be a 1-D uint8 array, got {state.dtype} {list(state.shape)}")

"""pytest configuration: devices are a parameter (CUDA appended when present)."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

import pcmekit
from _helpers import DEVICES


def _tested_copy_location_error() -> str | None:
    """With PCMEKIT_TEST_INSTALLED_IN=DIR (set by `make test` and `make sanitize`), the tests must
    import the pcmekit installed under DIR (a virtual environment: its site-packages), not the
    source tree. Returns what is wrong, or None."""
    expected = os.environ.get("PCMEKIT_TEST_INSTALLED_IN")
    if not expected:
        return None
    root = Path(expected).resolve()
    if (root / "pyvenv.cfg").is_file():
        if Path(sys.prefix).resolve() != root:
            return f"pytest runs in {sys.prefix}, not in the virtual environment {root}"
        root = Path(sysconfig.get_paths()["platlib"]).resolve()
    package = Path(pcmekit.__file__).resolve().parent
    if root not in package.parents:
        return f"pcmekit was imported from {package}, expected the copy installed under {root}"
    return None


def pytest_configure(config):
    del config
    error = _tested_copy_location_error()
    if error is not None:
        raise pytest.UsageError(error)


def pytest_report_header(config):
    del config
    info = pcmekit.build_info()
    return (
        f"pcmekit {pcmekit.__version__} from {Path(pcmekit.__file__).parent} "
        f"(cuda_compiled={info['cuda_compiled']}, cuda_available={info['cuda_available']}, "
        f"cpu_simd={info['cpu_simd']})"
    )


def pytest_collection_modifyitems(config, items):
    del config
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_cuda = "cuda" in item.keywords or (callspec is not None and callspec.params.get("device") == "cuda")
        # The device shows in JUnit XML reports (scripts/gpu_check.sh counts CUDA tests by it).
        item.user_properties.append(("device", "cuda" if on_cuda else "cpu"))
        if "cuda" in item.keywords and not pcmekit.cuda_available():
            item.add_marker(pytest.mark.skip(reason="no CUDA device (or pcmekit built without CUDA)"))


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param

"""pytest configuration: devices are a parameter (CUDA appended when present)."""

from __future__ import annotations

import pytest

import pcmekit
from _helpers import DEVICES


def pytest_collection_modifyitems(config, items):
    del config
    for item in items:
        if "cuda" in item.keywords and not pcmekit.cuda_available():
            item.add_marker(pytest.mark.skip(reason="no CUDA device (or pcmekit built without CUDA)"))


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param

"""Peak memory of one call, for the benchmark suites.

On the CPU a measurement runs in a fresh interpreter, so nothing the parent process allocated
earlier hides in the high-water mark. The child imports the suite module and calls its
``memory_workload(args, small)``, which prepares what should *not* be counted and returns a
callable doing what should be: first on a tiny problem (``small=True``, to pay one-time costs
such as thread pools, code pages and lazy imports), then on the real one. Between preparing and
calling, the peak resident set size is reset through ``/proc/self/clear_refs`` (Linux), else
``ru_maxrss`` is used and start-up may dominate; the result is the growth of the peak above the
resident size at the reset. On CUDA, torch's allocator statistics are used instead.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import torch

__all__ = ["peak_rss_mb", "cuda_peak_mb"]

_CHILD = "import sys; from pcmekit.bench._memory import _child_main; _child_main(sys.argv[1], sys.argv[2])"


def peak_rss_mb(suite_module: str, args: Dict[str, Any], timeout: float) -> Tuple[Optional[float], str]:
    """``(MB, how)``: the peak RSS growth of ``suite_module.memory_workload(args, small=False)``'s
    call in a fresh interpreter, with torch's and pcmekit's thread count; ``(None, why)`` if the
    measurement failed (it never raises: a benchmark reports and goes on)."""
    payload = json.dumps({**args, "threads": torch.get_num_threads()})
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, suite_module, payload], capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ))
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return result["peak_kb"] * 1024 / 1e6, f"peak RSS growth in a subprocess ({result['method']})"
    except Exception as err:  # noqa: BLE001 - report, do not abort the timings
        return None, f"peak memory not measured ({type(err).__name__})"


def cuda_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak of torch's CUDA allocator during ``fn()`` above the memory in use before it, in MB."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 1e6


def _status_kb(field: str) -> Optional[int]:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _child_main(suite_module: str, payload: str) -> None:
    import pcmekit

    args = json.loads(payload)
    torch.set_num_threads(args["threads"])
    pcmekit.set_num_threads(args["threads"])
    suite = importlib.import_module(suite_module)
    suite.memory_workload(args, small=True)()
    run = suite.memory_workload(args, small=False)
    method = "VmHWM"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
    except OSError:
        method = "ru_maxrss"
    before = _status_kb("VmRSS") or 0
    run()
    peak = _status_kb("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kb": (peak or 0) - before, "method": method}))

"""The GPU's peak throughput for a row of ``pcmekit bench --device cuda``, by matmul mode.

A GPU's limit depends on which units a kernel may use, and that is what
``torch.get_float32_matmul_precision()`` decides for float32: "highest" keeps float32 products
on the FP32 (SIMT) pipes, "high" / "medium" allow TF32 tensor cores (docs/design.md, "CUDA tensor
cores and the matmul precision"). So a CUDA row's % of peak is against the peak of its mode:

* float32 under "highest": the FP32 peak; under "high" / "medium": the dense TF32 tensor peak;
* float64: the FP64 (non-tensor) peak, the units pcmekit's double kernels run on;
* float16 / bfloat16: their dense tensor peak.

The figures are NVIDIA's data-sheet numbers in TFLOP/s; the tensor-core ones are the dense
figures, half of the "with sparsity" numbers the sheets print. A GPU that is not in the table
gets no % of peak (its rows keep their GFLOP/s).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = ["GPU_PEAKS", "MODES", "peak_kind", "gpu_peak_tflops"]

MODES = ("highest", "high", "medium")

# (substring of torch.cuda.get_device_name(), peaks): the first match wins, so the PCIe H100 is
# listed before the SXM one ("NVIDIA H100 80GB HBM3").
GPU_PEAKS: Tuple[Tuple[str, Dict[str, float]], ...] = (
    ("H200", {"fp64": 34.0, "fp32": 67.0, "tf32": 494.7, "fp16": 989.5, "bf16": 989.5}),
    ("H100 PCIe", {"fp64": 25.6, "fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0}),
    ("H100", {"fp64": 34.0, "fp32": 67.0, "tf32": 494.7, "fp16": 989.5, "bf16": 989.5}),
    ("A100", {"fp64": 9.7, "fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}),
)


def peak_kind(dtype: str, mode: str) -> str:
    """The peak that bounds a kernel on ``dtype`` ("fp32", "fp64", "fp16", "bf16") under matmul
    precision ``mode``: "fp32", "tf32", "fp64", "fp16" or "bf16"."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if dtype == "fp32":
        return "fp32" if mode == "highest" else "tf32"
    if dtype in ("fp64", "fp16", "bf16"):
        return dtype
    raise ValueError(f"dtype must be fp32, fp64, fp16 or bf16; got {dtype!r}")


def gpu_peak_tflops(device_name: str, dtype: str, mode: str) -> Optional[Tuple[str, float]]:
    """``(kind, TFLOP/s)`` of the data-sheet peak for ``dtype`` under ``mode`` on the GPU named
    ``device_name``, or None for a GPU the table does not know."""
    kind = peak_kind(dtype, mode)
    for key, peaks in GPU_PEAKS:
        if key in device_name:
            return kind, peaks[kind]
    return None

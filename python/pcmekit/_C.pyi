"""Type stubs for pcmekit._C, the compiled pybind11 core (csrc/bindings/*.cpp).

Internal: the package calls these through ``pcmekit._core`` (the only module that imports
``_C``), from the op modules ``pcmekit.ops.<op>``. Arrays cross the boundary as view tuples built by
``pcmekit._core.matrix_view``; the core never allocates and never sees a torch object.

Errors raised by every function: ``ValueError`` (shapes, devices, "built without CUDA support"),
``TypeError`` (dtypes; the ``CoreTypeError`` subclass), ``RuntimeError`` (a failed CUDA call).
The GIL is released while a kernel runs.
"""

from typing import Any, Dict, List, Optional, Tuple, TypedDict

# (data_ptr, rows, cols, row_stride, col_stride, dtype code, device code, device index).
# Strides are in elements. dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16, 4 int64;
# device codes: 0 cpu, 1 cuda.
ViewTuple = Tuple[int, int, int, int, int, int, int, int]

class CoreTypeError(TypeError):
    """A dtype the core does not accept (raised as a TypeError subclass)."""

class BuildConfig(TypedDict):
    version: str
    cuda_compiled: bool
    cuda_archs: str  # comma-separated CMake architectures, "" without CUDA, "cuemu" emulated
    cuda_emulated: bool  # the CUDA back end runs on the CPU emulator (tests/cuemu; test builds only)
    cuda_runtime: Optional[str]  # CUDA runtime version the core was linked with, None without CUDA
    cpu_simd: str  # "avx512", "avx2" or "generic": the CPU micro-kernel this machine gets
    cpu_threading: str  # "openmp (<library>)" (torch's runtime) or "pcmekit pool"
    hardware_threads: int
    cuda_max_topk: int  # largest k the CUDA top-k kernel takes (kCudaMaxTopk, pcmekit/topk.h)
    cuda_bce_sums_rows: int  # rows of the CUDA BCE ops' [rows, 3] float64 sums (pcmekit/bce.h)

def pairwise_forward(
    metric: int,  # index into pcmekit.ops._args.METRICS
    a_mean: ViewTuple,  # [N, D]
    a_logvar: Optional[ViewTuple],  # [N, D]; None for l2
    b_mean: ViewTuple,  # [M, D]
    b_logvar: Optional[ViewTuple],  # [M, D]; None for l2
    out: ViewTuple,  # [N, M], written
    num_threads: int,
    stream: int,  # cudaStream_t as an integer; 0 on the CPU
    precision: int = 0,  # float32 matmul precision on CUDA: 0 highest, 1 high (TF32), 2 medium
) -> None: ...
def pairwise_backward(
    metric: int,
    grad_out: ViewTuple,  # [N, M]
    a_mean: ViewTuple,  # [N, D]
    a_logvar: Optional[ViewTuple],  # [N, D]
    b_mean: ViewTuple,  # [M, D]
    b_logvar: Optional[ViewTuple],  # [M, D]
    grad_a_mean: Optional[ViewTuple],  # [N, D], written; None: not computed
    grad_a_logvar: Optional[ViewTuple],  # [N, D]
    grad_b_mean: Optional[ViewTuple],  # [M, D]
    grad_b_logvar: Optional[ViewTuple],  # [M, D]
    num_threads: int,
    stream: int,
    precision: int = 0,  # float32 matmul precision on CUDA: 0 highest, 1 high (TF32), 2 medium
) -> None: ...
def distance_bce(
    distance: ViewTuple,  # [N, M] float32/float64 (CUDA: also float16/bfloat16)
    target: Optional[ViewTuple],  # [N, M]; None: the identity
    grad: ViewTuple,  # [N, M], written: dloss/ddistance (may be the distance itself)
    scale: float,
    shift: float,
    mean: bool,  # False: sum
    num_threads: int,
    stream: int = 0,
    sums: Optional[ViewTuple] = None,  # CUDA: [cuda_bce_sums_rows, 3] float64, row 0 written
) -> Tuple[float, float, float]: ...  # loss, dloss/dscale, dloss/dshift (zeros on CUDA)
def pairwise_bce(
    metric: int,  # index into pcmekit.ops._args.METRICS
    a_mean: ViewTuple,  # [N, D]
    a_logvar: Optional[ViewTuple],  # [N, D]; None for l2
    b_mean: ViewTuple,  # [M, D]
    b_logvar: Optional[ViewTuple],  # [M, D]; None for l2
    out: ViewTuple,  # [N, M] (float32 for 16-bit inputs), written: dloss/ddistance
    target: Optional[ViewTuple],  # [N, M] in out's dtype; None: the identity
    scale: float,
    shift: float,
    mean: bool,
    num_threads: int,
    stream: int = 0,
    precision: int = 0,  # float32 matmul precision on CUDA, as pairwise_forward
    sums: Optional[ViewTuple] = None,  # CUDA: as distance_bce
) -> Tuple[float, float, float]: ...
def match_prob_forward(
    a_mean: ViewTuple,  # [N, D]
    a_logvar: ViewTuple,  # [N, D]
    b_mean: ViewTuple,  # [M, D]
    b_logvar: ViewTuple,  # [M, D]
    eps_a: ViewTuple,  # [N * J, D]: noise of row i, sample s at row i * J + s
    eps_b: ViewTuple,  # [M * J, D]
    num_samples: int,  # J
    scale: float,
    shift: float,
    squared: bool,
    log_p: ViewTuple,  # [N, M], written: log p
    log_q: ViewTuple,  # [N, M], written: log(1 - p)
    num_threads: int,
    stream: int,
    precision: int = 0,  # float32 matmul precision on CUDA, as pairwise_forward (TF32 sample GEMM)
) -> None: ...
def match_prob_backward(
    grad_log_p: Optional[ViewTuple],  # [N, M]; None: zero
    grad_log_q: Optional[ViewTuple],  # [N, M]; None: zero
    log_p: ViewTuple,  # [N, M], the forward's outputs
    log_q: ViewTuple,  # [N, M]
    a_mean: ViewTuple,  # [N, D]
    a_logvar: ViewTuple,  # [N, D]
    b_mean: ViewTuple,  # [M, D]
    b_logvar: ViewTuple,  # [M, D]
    eps_a: ViewTuple,  # [N * J, D]
    eps_b: ViewTuple,  # [M * J, D]
    num_samples: int,
    scale: float,
    shift: float,
    squared: bool,
    grad_a_mean: Optional[ViewTuple],  # [N, D], written; None: not computed
    grad_a_logvar: Optional[ViewTuple],  # [N, D]
    grad_b_mean: Optional[ViewTuple],  # [M, D]
    grad_b_logvar: Optional[ViewTuple],  # [M, D]
    grad_scale_shift: Optional[ViewTuple],  # [1, 2], written: (d scale, d shift)
    num_threads: int,
    stream: int,
    precision: int = 0,  # checked as the forward's; the CUDA backward is FP32 in every mode
) -> None: ...
def topk(
    score: int,  # 0 = distance (metric code below), 1 = match probability
    metric: int,  # 0 csd, 1 w2, 2 l2, 3 kl, 4 bhattacharyya, 5 elk
    q_mean: ViewTuple,  # [Q, D]
    q_logvar: Optional[ViewTuple],  # [Q, D]; None for l2
    g_mean: ViewTuple,  # [N, D]
    g_logvar: Optional[ViewTuple],  # [N, D]; None for l2
    eps_q: Optional[ViewTuple],  # [Q * J, D] (match probability only)
    eps_g: Optional[ViewTuple],  # [N * J, D] (match probability only)
    num_samples: int,  # J
    scale: float,
    shift: float,
    squared: bool,
    k: int,  # 1 <= k <= N (<= build_config()["cuda_max_topk"] on CUDA)
    values: ViewTuple,  # [Q, k], written: best first
    indices: ViewTuple,  # [Q, k] int64, written
    workspace: int,  # device pointer of topk_workspace_bytes(...) bytes (0 when none)
    workspace_bytes: int,
    num_threads: int,
    stream: int,
    g_packed: Optional[ViewTuple] = None,  # [1, packed elements] from topk_prepare_gallery (CPU)
    g_terms: Optional[ViewTuple] = None,  # [N, 1] from topk_prepare_gallery
    g_layout_tag: int = 0,  # topk_prepared_layout(...)[1] of that preparation
    precision: int = 0,  # float32 matmul precision on CUDA: 0 highest, 1 high, 2 medium (CPU ignores)
) -> None: ...
def topk_prepared_layout(metric: int, dtype: int, n: int, d: int) -> Tuple[int, int]:
    """(packed elements, layout tag) of a prepared CPU gallery (csd, w2, l2, kl; float32/64)."""
def topk_prepare_gallery(
    metric: int,
    g_mean: ViewTuple,  # [N, D]
    g_logvar: Optional[ViewTuple],  # [N, D]; None for l2
    packed: ViewTuple,  # [1, packed elements], written; contiguous, 64-byte aligned
    terms: ViewTuple,  # [N, 1], written
    num_threads: int,
) -> None: ...
def topk_workspace_bytes(
    score: int,
    metric: int,
    q_mean: ViewTuple,
    q_logvar: Optional[ViewTuple],
    g_mean: ViewTuple,
    g_logvar: Optional[ViewTuple],
    num_samples: int,
    k: int,
    precision: int = 0,  # as topk's: where it picks the fused tensor-core path, its workspace
) -> int: ...
def adamp_step(
    algorithm: int,  # 0 AdamP, 1 SGDP
    params: List[ViewTuple],  # [R, C] each, contiguous rows; read and written
    grads: List[ViewTuple],  # like params
    exp_avgs: List[ViewTuple],  # like params; AdamP's exp_avg or SGDP's momentum buffer, written
    exp_avg_sqs: Optional[List[ViewTuple]],  # like params (AdamP, written); None for SGDP
    steps: List[int],  # AdamP: this step's count per parameter (>= 1); SGDP: ignored
    projectable: List[bool],  # dimension > 1 (R = size(0)): run the scale-invariance test
    lr: float,
    beta1: float,
    beta2: float,
    momentum: float,
    dampening: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
    num_threads: int,
) -> List[int]:
    """One fused step in place on CPU float32/float64 tensors of one dtype; returns the
    projection per parameter: 0 none, 1 channel view, 2 layer view."""
def build_config() -> BuildConfig: ...
def cuda_device_count() -> int:
    """GPUs the CUDA runtime sees; 0 without CUDA support or without a driver."""
def fma_peak(isa: str, double_precision: bool, threads: int, seconds: float) -> Dict[str, Any]:
    """Measured multiply-add rate of ``isa`` ("avx512", "avx2" or "generic") on ``threads``
    threads at once for about ``seconds``: ``{"gflops", "seconds", "flops", "threads"}``."""
def supported_isas() -> List[str]:
    """The SIMD paths this CPU supports, whatever PCMEKIT_CPU_CAPABILITY caps the kernels to."""

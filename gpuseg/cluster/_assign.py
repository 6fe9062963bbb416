"""Chunked nearest-centre assignment and Lloyd accumulation.

Distances use ``||x||^2 - 2 x.c + ||c||^2``: one GEMM per chunk (MKL/oneDNN on CPU, cuBLAS on
CUDA) followed by a row-wise min, so at most ``chunk x K`` distances exist at any time and the
``N x K`` matrix is never materialised. On CUDA the GEMM may run in TF32 or BF16; the distance
that is kept (inertia, relocation) is then recomputed exactly in float32 from the chosen centre,
so only near-ties can be resolved differently from a float32 GEMM.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "tf32", "bf16")

# Target size (in float32 elements) of one chunk's distance block. On CPU it should stay in
# the last-level cache (measured best around 1M elements for K=100, d=64); on CUDA it should
# be large enough for the GEMM to reach peak throughput.
_CPU_BLOCK = 1 << 20
_CUDA_BLOCK = 1 << 27

_MM_OUT_DTYPE_OK: bool | None = None


def auto_chunk_rows(n_clusters: int, n_features: int, device: torch.device) -> int:
    """Rows per chunk so that the ``rows x n_clusters`` distance block has a sensible size."""
    if device.type == "cuda":
        rows = _CUDA_BLOCK // max(n_clusters, 1)
        try:
            free, _ = torch.cuda.mem_get_info(device)
            # distances + a float32 and a bf16 copy of the chunk, with headroom for the allocator
            per_row = 4 * n_clusters + 6 * n_features + 32
            rows = min(rows, max(1024, int(0.25 * free) // per_row))
        except RuntimeError:  # pragma: no cover - only on odd drivers
            pass
        return int(max(1024, min(rows, 1 << 22)))
    rows = _CPU_BLOCK // max(n_clusters, 1)
    return int(max(256, min(rows, 65536)))


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Set cuBLAS float32 GEMM precision (IEEE or TF32) for the block, then restore it.

    Only CUDA float32 GEMMs are affected; ``bf16`` casts its operands explicitly instead.
    """
    if device.type != "cuda" or precision == "bf16":
        yield
        return
    matmul = torch.backends.cuda.matmul
    want_tf32 = precision == "tf32"
    if hasattr(matmul, "fp32_precision"):
        attr, value = "fp32_precision", ("tf32" if want_tf32 else "ieee")
    else:  # pragma: no cover - torch < 2.9
        attr, value = "allow_tf32", want_tf32
    try:
        old = getattr(matmul, attr)
        setattr(matmul, attr, value)
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - conflicting global settings
        log.debug("could not set matmul precision %s: %s", precision, exc)
        yield
        return
    try:
        yield
    finally:
        setattr(matmul, attr, old)


def _mm_float_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bf16 x bf16 GEMM with a float32 result (cuBLAS accumulates in float32 either way)."""
    global _MM_OUT_DTYPE_OK
    if _MM_OUT_DTYPE_OK is not False:
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
            _MM_OUT_DTYPE_OK = True
            return out
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE_OK = False
            log.debug("torch.mm(out_dtype=float32) unavailable; bf16 GEMM output rounded to bf16")
    return torch.mm(a, b).float()


class PreparedCenters:
    """Centres plus what every chunk needs from them (norms, transposed/low-precision copies).

    Parameters
    ----------
    centers : torch.Tensor
        ``(K, d)`` float32 centres on the compute device.
    precision : {"float32", "tf32", "bf16"}
        GEMM precision on CUDA; CPU always computes in float32.
    """

    def __init__(self, centers: torch.Tensor, precision: str = "float32"):
        self.centers = centers
        self.device = centers.device
        self.precision = precision if centers.device.type == "cuda" else "float32"
        self.sqnorm = (centers * centers).sum(1)
        self.t = centers.t()
        self.t_bf16 = centers.to(torch.bfloat16).t() if self.precision == "bf16" else None
        self._buffer: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        """True when the GEMM is float32, so distances from it can be kept as they are."""
        return self.precision == "float32"

    def _workspace(self, rows: int) -> torch.Tensor | None:
        # On CPU a fresh multi-MB allocation per chunk costs page faults; reuse one buffer.
        if self.device.type != "cpu":
            return None
        k = self.centers.shape[0]
        if self._buffer is None or self._buffer.shape[0] < rows:
            self._buffer = torch.empty(rows, k, dtype=torch.float32)
        return self._buffer[:rows]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``||c||^2 - 2 x.c`` for a chunk: squared distances up to the per-row ``||x||^2``."""
        if self.t_bf16 is not None:
            g = _mm_float_out(x.to(torch.bfloat16), self.t_bf16)
            return g.mul_(-2.0).add_(self.sqnorm)
        out = self._workspace(x.shape[0])
        if out is None:
            return torch.addmm(self.sqnorm, x, self.t, beta=1.0, alpha=-2.0)
        return torch.addmm(self.sqnorm, x, self.t, beta=1.0, alpha=-2.0, out=out)


def row_sqnorm(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean norm of each row, in float32."""
    return torch.linalg.vector_norm(x, dim=1).square_()


def assign_chunk(
    x: torch.Tensor, prep: PreparedCenters, x_sqnorm: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of each row of one chunk.

    Parameters
    ----------
    x : torch.Tensor
        ``(m, d)`` float32 chunk on the centres' device.
    prep : PreparedCenters
        Centres prepared once per pass.
    x_sqnorm : torch.Tensor, optional
        Cached ``||x||^2`` of the chunk's rows.

    Returns
    -------
    labels : torch.Tensor
        ``(m,)`` int64 index of the nearest centre.
    sqdist : torch.Tensor
        ``(m,)`` float32 squared distance to it (exact float32 even after a TF32/BF16 GEMM).
    """
    scores = prep.scores(x)
    best, labels = scores.min(dim=1)
    if prep.exact:
        if x_sqnorm is None:
            x_sqnorm = row_sqnorm(x)
        sqdist = best.add_(x_sqnorm).clamp_min_(0.0)
    else:
        diff = x - prep.centers.index_select(0, labels)
        sqdist = row_sqnorm(diff)
    return labels, sqdist


def all_distances_chunk(x: torch.Tensor, prep: PreparedCenters) -> torch.Tensor:
    """``(m, K)`` Euclidean distances of a chunk to every centre (for ``transform``)."""
    scores = prep.scores(x)
    if prep.device.type == "cpu":
        scores = scores.clone()  # the CPU workspace is reused by the next chunk
    return scores.add_(row_sqnorm(x)[:, None]).clamp_min_(0.0).sqrt_()


class LloydAccumulator:
    """Per-pass sums, counts, inertia and far points for a Lloyd (full-batch) update.

    Sums are added per chunk in float32 (``index_add_``) and folded into a float64 total, so a
    cluster of 10^8 points keeps its mean accurate. The ``n_far`` farthest points seen are kept
    as candidates for re-seeding clusters that end the pass empty.
    """

    def __init__(self, n_clusters: int, n_features: int, device: torch.device, n_far: int = 32):
        self.sums = torch.zeros(n_clusters, n_features, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_clusters, dtype=torch.float64, device=device)
        self.inertia = torch.zeros((), dtype=torch.float64, device=device)
        self.n_far = max(1, min(n_far, n_clusters))
        self.far_dist = torch.empty(0, dtype=torch.float32, device=device)
        self.far_rows = torch.empty(0, n_features, dtype=torch.float32, device=device)
        self._chunk_sums = torch.zeros(n_clusters, n_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor, labels: torch.Tensor, sqdist: torch.Tensor) -> None:
        """Fold one assigned chunk into the totals."""
        self._chunk_sums.zero_().index_add_(0, labels, x)
        self.sums += self._chunk_sums
        self.counts += torch.bincount(labels, minlength=self.counts.shape[0]).to(torch.float64)
        self.inertia += sqdist.sum(dtype=torch.float64)
        r = min(self.n_far, sqdist.shape[0])
        if r:
            d, idx = sqdist.topk(r)
            dist = torch.cat([self.far_dist, d])
            rows = torch.cat([self.far_rows, x.index_select(0, idx)])
            keep = dist.topk(min(self.n_far, dist.shape[0])).indices
            self.far_dist, self.far_rows = dist[keep], rows[keep]

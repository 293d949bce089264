"""Alpha by the constrained quadratic problem min a^T L a with a fixed on the trimap's known
pixels: L_UU a_U = -L_UK a_K (pymatting's estimate_alpha_cf formulation, exact constraints),
L the fused Laplacian's unknown rows, solved by preconditioned CG (kernels.pcg, the numeric
kernel) on the CPU or, when asked, on CuPy.
"""
from __future__ import annotations

import time

import numpy as np

from kernels.pcg import solve_spd
from pipeline.matting.config import DEVICES, MattingConfig
from pipeline.matting.grid import FeatureGrid
from pipeline.matting.laplacian.fused import fused_rows
from pipeline.matting.trimap import split


def _use_gpu(device: str) -> bool:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return False
    try:
        import cupy

        available = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU"
        available = False
    if device == "cuda" and not available:
        raise RuntimeError("device='cuda' needs CuPy and a CUDA GPU")
    return available


def solve_alpha_cg(image: np.ndarray, trimap: np.ndarray, cfg: MattingConfig,
                   grid: FeatureGrid | None = None) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float64 image, (H, W) trimap -> ((H, W) alpha, info): the constrained solve
    L_UU a_U = -L_UK a_K by PCG, on the GPU when cfg.device asks for it."""
    t0 = time.perf_counter()
    L, rows, weight = fused_rows(image, trimap, cfg, grid)
    fg, _, unknown = split(trimap)
    alpha = fg.astype(np.float64).ravel()
    b = -(L @ alpha)  # alpha is 0 on the unknown columns: only L_UK a_K contributes
    A = L[:, rows]
    t1 = time.perf_counter()
    # An explicit ichol means the CPU under device="auto" (it has no GPU version).
    if _use_gpu(cfg.device) and not (cfg.preconditioner == "ichol" and cfg.device == "auto"):
        import cupy
        import cupyx.scipy.sparse

        res = solve_spd(cupyx.scipy.sparse.csr_matrix(A), cupy.asarray(b), cfg.preconditioner,
                        cfg.rtol, cfg.maxiter)
        x = cupy.asnumpy(res.x)
    else:
        res = solve_spd(A, b, cfg.preconditioner, cfg.rtol, cfg.maxiter)
        x = res.x
    alpha[rows] = x
    t2 = time.perf_counter()
    info = {"seconds_laplacian": t1 - t0, "seconds_solve": t2 - t1, "iterations": res.iterations,
            "preconditioner": res.preconditioner, "n_unknown": int(rows.size),
            "feature_lambda": weight, "nnz": int(A.nnz)}
    return np.clip(alpha.reshape(trimap.shape), 0, 1), info

"""Preconditioned conjugate gradients for the sparse SPD systems of matting, CPU or GPU.

The array module comes from A: a scipy.sparse matrix is solved with SciPy or pymatting, a
cupyx.scipy.sparse matrix with cupyx.scipy.sparse.linalg.cg on the GPU.

Preconditioners:
  "ichol"   pymatting's thresholded incomplete Cholesky (CPU only: a sequential numba
            factorisation; the fewest iterations on matting Laplacians, what estimate_alpha_cf uses)
  "jacobi"  1 / diag(A): the one that runs unchanged on CuPy, so CPU and GPU run the same
            algorithm (SciPy's and cupyx's cg) and agree to the tolerance
  "auto"    ichol on the CPU, jacobi on the GPU
"""
from __future__ import annotations

import contextlib
import inspect
import sys
from dataclasses import dataclass

from kernels.backend import array_module, is_cupy, scipy_module

PRECONDITIONERS = ("auto", "ichol", "jacobi")


@dataclass(frozen=True)
class CGResult:
    x: object  # (n,) solution, in A's array module
    iterations: int
    preconditioner: str  # the one actually used


def _cg_function(A):
    """The module's cg and the name of its relative-tolerance argument (cupyx: tol, SciPy: rtol)."""
    cg = scipy_module(A).sparse.linalg.cg
    params = inspect.signature(cg).parameters
    return cg, ("rtol" if "rtol" in params else "tol")


def solve_spd(A, b, preconditioner: str = "auto", rtol: float = 1e-7, maxiter: int = 10000,
              x0=None) -> CGResult:
    """Sparse SPD A (n, n) and b (n,) in the same array module -> A^-1 b by PCG.

    Stops at ||b - A x|| <= rtol ||b||. Raises RuntimeError when maxiter is reached, rather
    than return an unconverged alpha that looks like a result.
    """
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
    gpu = is_cupy(A)
    if preconditioner == "auto":
        preconditioner = "jacobi" if gpu else "ichol"
    if preconditioner == "ichol":
        if gpu:
            raise ValueError("ichol is CPU-only (pymatting's numba factorisation); use jacobi on the GPU")
        from pymatting import cg, ichol

        count = [0]
        # ichol prints a "PERFORMANCE WARNING" to stdout whenever it needs a diagonal shift
        # (routine on fused Laplacians); stdout belongs to the caller's results.
        # pymatting reserves 250 M entries (4 GB of address space) for the factor by default;
        # thresholded fill stays near nnz(A) here, so reserve a few times that and fall back
        # to the default only if it overflows.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                M = ichol(A.tocsc(), max_nnz=4 * A.nnz + A.shape[0])
            except ValueError as e:
                if "max_nnz" not in str(e):
                    raise
                M = ichol(A.tocsc())
        try:
            x = cg(A.tocsr(), b, x0=x0, rtol=rtol, maxiter=maxiter, M=M,
                   callback=lambda *_: count.__setitem__(0, count[0] + 1))
        except ValueError as e:  # pymatting's way of saying "not converged"
            raise RuntimeError(str(e)) from None
        return CGResult(x=x, iterations=count[0], preconditioner="ichol")
    xp = array_module(A)
    linalg = scipy_module(A).sparse.linalg
    diag = A.diagonal()
    inv_diag = xp.where(diag > 0, 1.0 / xp.where(diag > 0, diag, 1.0), 1.0)
    M = linalg.LinearOperator(A.shape, matvec=lambda v: inv_diag * v.ravel(), dtype=A.dtype)
    count = [0]
    cg, tol_name = _cg_function(A)
    x, info = cg(A, b, x0=x0, maxiter=maxiter, M=M, atol=0.0, **{tol_name: rtol},
                 callback=lambda _: count.__setitem__(0, count[0] + 1))
    if info != 0:
        raise RuntimeError(f"CG did not converge to rtol {rtol} within {maxiter} iterations (info {info})")
    return CGResult(x=x, iterations=count[0], preconditioner="jacobi")

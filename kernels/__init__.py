"""Array-module-generic numeric kernels (NumPy/SciPy on CPU, CuPy/cupyx.scipy on GPU)."""
from kernels.backend import array_module, is_cupy, is_sparse, scipy_module, to_numpy
from kernels.eigensolver import METHODS, Eigenpairs, smallest_eigenpairs
from kernels.laplacian import degrees, inverse_sqrt_degrees, normalized_laplacian

__all__ = [
    "METHODS",
    "Eigenpairs",
    "array_module",
    "degrees",
    "inverse_sqrt_degrees",
    "is_cupy",
    "is_sparse",
    "normalized_laplacian",
    "scipy_module",
    "smallest_eigenpairs",
    "to_numpy",
]

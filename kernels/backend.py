"""Which array library an input lives in: NumPy/SciPy on the CPU, CuPy/cupyx.scipy on a GPU.

Kernels take the module from their input instead of a device flag, so one code path serves
both. CuPy is optional: it is imported only when an input is already a CuPy object, which
also means a CPU-only install never pays its import time.
"""
from __future__ import annotations

import importlib

import numpy as np


def is_cupy(x) -> bool:
    """True for CuPy arrays and cupyx.scipy.sparse matrices (without importing CuPy)."""
    return type(x).__module__.split(".", 1)[0] in ("cupy", "cupyx")


def array_module(x):
    """`numpy` or `cupy`, whichever `x` (dense or sparse) belongs to."""
    if is_cupy(x):
        return importlib.import_module("cupy")
    return np


def device_module(device: str, on_cpu: str):
    """`cupy` for a "cuda" device, else `numpy`; also `numpy`, with a warning that ends in
    `on_cpu` (what then runs on the CPU), when CuPy is not installed."""
    if device == "cuda":
        try:
            return importlib.import_module("cupy")
        except ImportError:
            import warnings

            warnings.warn(f"CuPy is not installed (pip install -e '.[gpu]'): {on_cpu}")
    return np


def scipy_module(x):
    """`scipy` or `cupyx.scipy`, with .linalg, .sparse and .sparse.linalg loaded."""
    name = "cupyx.scipy" if is_cupy(x) else "scipy"
    for sub in ("linalg", "sparse", "sparse.linalg"):
        importlib.import_module(f"{name}.{sub}")
    return importlib.import_module(name)


def is_sparse(x) -> bool:
    """True for scipy.sparse and cupyx.scipy.sparse matrices and arrays."""
    return bool(scipy_module(x).sparse.issparse(x))


def to_numpy(x):
    """A NumPy copy of a CuPy array (dense or sparse: `.get()`); NumPy/SciPy inputs as they are."""
    if is_cupy(x):
        return x.get()
    if isinstance(x, np.ndarray) or is_sparse(x):
        return x
    return np.asarray(x)

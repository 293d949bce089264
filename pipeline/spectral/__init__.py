"""The per-image spectral core: the affinity graph, its Laplacian eigenvectors and their
sign rule (the numerics themselves are in `kernels/`).

May import `pipeline.features`, `pipeline.io`, `pipeline.config` and `kernels`.
"""

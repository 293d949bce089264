"""The closed-form matting Laplacian (Levin, Lischinski and Weiss 2008), by pymatting's
`cf_laplacian`: the colour term of the fused Laplacian and the "cf" spectral layers' graph.
"""
from __future__ import annotations

import numpy as np

from pipeline.matting.config import MattingConfig


def colour_laplacian(image: np.ndarray, cfg: MattingConfig, is_known: np.ndarray | None = None):
    """(H, W, 3) float64 in [0, 1] -> closed-form matting Laplacian (N, N) CSR float64.

    With is_known, windows with no unknown pixel are skipped (pymatting): rows of unknown
    pixels stay exact, the others are not needed by the constrained solve.
    """
    from pymatting import cf_laplacian

    return cf_laplacian(image, epsilon=cfg.cf_epsilon, radius=cfg.cf_radius, is_known=is_known)

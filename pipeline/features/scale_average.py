"""A second input scale's patch features brought onto the first scale's cells (test-time averaging).

    f2 = to_first_grid(features2, resized2, resized1, grid1)    # (h1, w1, C)
    averaged = (features1 + f2) / 2                              # then the graph L2-normalises

The backbone resizes the whole image to (H1, W1) at the first long side and to (H2, W2) at the
second, then crops each bottom/right to a patch multiple. Cell i of the first grid is centred at
(i + 0.5) · p input pixels, i.e. (i + 0.5) · H2 / H1 cells of the second grid minus the half cell
to its centres; the second grid is sampled there, bilinearly between cell centres and clamped at
the edges (the second crop can miss a strip the first keeps). Positions are computed from the
resized sizes, not from the grids, so the two crops' different bottom/right strips do not shift
the cells; equal sizes give exactly the identity (u_i = i).
"""
from __future__ import annotations

import torch


def _axis(n_out: int, n_in: int, ratio: float, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lo, hi, frac) along one axis: output cell i samples input cells lo..hi at weight frac of hi."""
    pos = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * ratio - 0.5
    pos = pos.clamp(0, n_in - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (pos - lo).float()


def to_first_grid(features: torch.Tensor, resized: tuple[int, int], first_resized: tuple[int, int],
                  first_grid: tuple[int, int]) -> torch.Tensor:
    """(h2, w2, C) features of the second scale -> (h1, w1, C) on the first scale's cells.

    resized / first_resized: (H, W) the image was resized to at each scale, before the crop;
    first_grid: (h1, w1) cells of the first scale.
    """
    h2, w2 = features.shape[:2]
    rlo, rhi, rf = _axis(first_grid[0], h2, resized[0] / first_resized[0], features.device)
    clo, chi, cf = _axis(first_grid[1], w2, resized[1] / first_resized[1], features.device)
    rows = features[rlo] * (1 - rf)[:, None, None] + features[rhi] * rf[:, None, None]
    return rows[:, clo] * (1 - cf)[None, :, None] + rows[:, chi] * cf[None, :, None]

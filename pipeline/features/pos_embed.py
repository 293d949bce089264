"""Resampling a ViT's learned position grid to the input's patch grid, by name.

    POS_RESAMPLERS[name](pos (1, prefix + h0*w0, C), grid (h, w), old (h0, w0), prefix)
        -> (1, prefix + h*w, C)

Each backbone family is resampled the way its reference code does it, because the small
differences between resize rules change the features measurably (tests/test_backbones.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _resample_size(pos: torch.Tensor, grid: tuple[int, int], old: tuple[int, int],
                   prefix: int) -> torch.Tensor:
    """Bicubic to exactly `grid`, no antialias: what the HF Dinov2 ONNX export does (Resize,
    cubic a=-0.75, half_pixel, sizes=(H//14, W//14)). timm's default antialias=True drifts."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(old),
                                  num_prefix_tokens=prefix, interpolation="bicubic", antialias=False)


def _resample_dino_offset(pos: torch.Tensor, grid: tuple[int, int], old: tuple[int, int],
                          prefix: int) -> torch.Tensor:
    """facebookresearch/dino `interpolate_pos_encoding`: scale_factor (grid + 0.1) / old, which
    samples slightly different source coordinates than an exact-size resize."""
    if grid == old:
        return pos
    head, body = pos[:, :prefix], pos[:, prefix:]
    body = body.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2).float()
    scale = ((grid[0] + 0.1) / old[0], (grid[1] + 0.1) / old[1])
    body = F.interpolate(body, scale_factor=scale, mode="bicubic", align_corners=False)
    assert body.shape[-2:] == grid, (body.shape, grid)
    body = body.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([head, body], dim=1)


POS_RESAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "size": _resample_size,
    "dino_offset": _resample_dino_offset,
}

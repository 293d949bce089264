"""ViTDet-style simple feature pyramid over a ViT patch-feature grid (Li et al. 2022, "Exploring Plain
Vision Transformer Backbones for Object Detection"): the single-scale grid is resampled to several
strides (×2 up by a transposed conv, ×1, ×½ and ×¼ by max-pooling), each level projected to
`out_channels` by a 1×1 and a 3×3 conv with a channel LayerNorm (GroupNorm with one group).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

# Each level's stride in patches (0.5 would be twice the grid's resolution); its stride in pixels is this
# × patch size. FCOS gives the first level the objects up to 8 strides (112 px at patch 14). A ½-patch
# level in front quadruples the head's work (measured 4x per training step on CPU) for objects
# under a patch or two, which the patch features barely resolve.
LEVEL_STRIDES = (1.0, 2.0, 4.0)


def _resampler(stride: float, channels: int) -> tuple[nn.Module, int]:
    """The resampling in front of a level: (module, its output channels) for a stride in patches."""
    if stride == 0.5:
        return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), nn.GELU()), channels // 2
    if stride == 1.0:
        return nn.Identity(), channels
    return nn.MaxPool2d(int(stride), ceil_mode=True), channels


class SimplePyramid(nn.Module):
    """(B, C, h, w) patch features -> OrderedDict {"p0": (B, D, h, w), "p1": (B, D, ⌈h/2⌉, ⌈w/2⌉),
    "p2": (B, D, ⌈h/4⌉, ⌈w/4⌉)} with the default strides (a stride ½ level is (B, D, 2h, 2w)),
    D = out_channels (what torchvision's detection heads read: every level has the same channels)."""

    def __init__(self, in_channels: int, out_channels: int, strides: tuple[float, ...] = LEVEL_STRIDES):
        super().__init__()
        self.out_channels = out_channels
        self.strides = tuple(strides)
        levels = []
        for stride in self.strides:
            resample, channels = _resampler(stride, in_channels)
            levels.append(nn.Sequential(
                resample,
                nn.Conv2d(channels, out_channels, 1, bias=False), nn.GroupNorm(1, out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.GroupNorm(1, out_channels),
            ))
        self.levels = nn.ModuleList(levels)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return OrderedDict((f"p{i}", level(x)) for i, level in enumerate(self.levels))

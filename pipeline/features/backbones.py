"""Self-supervised ViT backbones: a registry of specs and a batched, any-size feature extractor.

    bb = create_backbone("dinov2_vits14_offline", resize=448)
    outs = bb([img_uint8_hw3, ...])          # list[BackboneOutput], input order
    outs[0].features                         # (grid_h, grid_w, C) float32

Grid cell (i, j) covers input pixels [i*p, (i+1)*p) x [j*p, (j+1)*p) of the resized image
(p = patch size; crops are top-left), i.e. original pixels divided by `scale`.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pipeline.config import PATCH_FEATURES, intermediate_block
from pipeline.features.preprocess import parse_resize, preprocess
from pipeline.features.registry import BACKBONES, DEFAULT_BACKBONE, BackboneSpec, get_spec
from pipeline.features.pos_embed import POS_RESAMPLERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = PATCH_FEATURES
# Arithmetic of the forward pass (BackboneConfig.precision).
PRECISIONS = ("fp32", "bf16")


# ---------------------------------------------------------------------------------- weights


def _file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _unwrap_checkpoint(obj: dict) -> dict[str, torch.Tensor]:
    """Peel training wrappers ({"teacher": ...}, {"model": ...}, DDP "module.", DINO "backbone.")."""
    while True:
        inner = next((obj[k] for k in ("teacher", "state_dict", "model")
                      if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    out = {}
    for key, value in obj.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def read_state_dict(url: str) -> tuple[dict[str, torch.Tensor], str]:
    """Local path or fsspec URL -> (state dict, sha256[:16] of the file bytes)."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        data = f.read()
    if url.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        state = load_safetensors(data)
    elif url.endswith((".pth", ".pt", ".bin")):
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{url}: expected a .safetensors, .pth, .pt or .bin file")
    return _unwrap_checkpoint(state), _file_digest(data)


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    own = model.state_dict()
    # DINO checkpoints carry their projection head; the backbone has none (num_classes=0).
    state = {k: v for k, v in state.items() if k in own or not k.startswith("head.")}
    state = checkpoint_filter_fn(state, model)  # original DINOv2 layouts, mask_token, etc.
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit {type(model).__name__}; "
                         f"missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}")
    model.load_state_dict(state, strict=True)


def build_model(spec: BackboneSpec, weights: str | None = None) -> tuple[torch.nn.Module, str]:
    """timm model with weights loaded (eval mode, CPU) and the weights digest."""
    import timm

    source = weights or spec.weights
    if source == "hub":
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0)
        except Exception as e:  # noqa: BLE001 - any hub/network failure means the same thing
            raise RuntimeError(
                f"could not fetch pretrained {spec.timm_name!r} from the model hub ({e}). Offline, "
                f"pass weights=<path or URL to a checkpoint> or use '{DEFAULT_BACKBONE}'.") from e
        return model.eval(), f"hub:{spec.timm_name}"
    if source == "offline":
        from pipeline.features.offline_weights import ensure_offline_weights

        source = os.fspath(ensure_offline_weights())
    model = timm.create_model(spec.timm_name.split(".")[0], pretrained=False, num_classes=0)
    state, digest = read_state_dict(source)
    _load_into(model, state, source)
    return model.eval(), digest


# ---------------------------------------------------------------------------- preprocessing


def _to_tensor(images: list[np.ndarray], device: str) -> torch.Tensor:
    """list of uint8 (h, w, 3), equal sizes -> normalised float (B, 3, h, w)."""
    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _keys(tokens: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
    return qkv[..., tokens.shape[-1]:2 * tokens.shape[-1]]


# (normed tokens (B, T, C), last-block qkv (B, T, 3C)) -> per-token features (B, T, C)
_FEATURE_SELECTORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "keys": _keys,
    "tokens": lambda tokens, qkv: tokens,
}


# --------------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class BackboneOutput:
    """One image's features.

    features: (grid_h, grid_w, C) float32 patch features (prefix tokens removed).
    also: {kind: (grid_h, grid_w, C)} the other feature kinds asked for, from the same pass.
    input_hw: (h, w) pixels fed to the network, after resize and crop; grid = input_hw // patch.
    scale: resized / original side length (1.0 with "crop"); original pixel = input pixel / scale.
    """

    features: np.ndarray
    input_hw: tuple[int, int]
    scale: float
    also: dict[str, np.ndarray] = field(default_factory=dict)

    def to_host(self) -> "BackboneOutput":
        """The same output with NumPy arrays (from Backbone.forward_prepared's tensors)."""
        def host(t):
            return t if isinstance(t, np.ndarray) else np.ascontiguousarray(t.detach().cpu().numpy())
        return BackboneOutput(host(self.features), self.input_hw, self.scale,
                              {kind: host(t) for kind, t in self.also.items()})


class Backbone:
    """Frozen ViT feature extractor for any image size; loads the model once.

    features: "keys" (last block's attention keys, the paper's choice) or "tokens" (final
    LayerNorm'd tokens). resize: "crop" (native size, cropped to a patch multiple) or a long side.
    """

    def __init__(self, spec: BackboneSpec, weights: str | None = None, features: str | None = None,
                 device: str = "cpu", resize: str | int | None = "crop", max_batch_size: int = 8,
                 precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.spec = spec
        self.precision = precision
        self.features = features or spec.features
        if self.features not in _FEATURE_SELECTORS:
            raise ValueError(f"features must be one of {list(_FEATURE_SELECTORS)}, got {self.features!r}")
        if spec.pos_resample not in POS_RESAMPLERS:
            raise ValueError(f"unknown pos_resample {spec.pos_resample!r}")
        self.long_side = parse_resize(resize)
        self.device = device
        self.max_batch_size = max_batch_size
        model, self.digest = build_model(spec, weights)
        self.model = model.to(device)
        # Inputs of any size: the position grid is resampled in _forward, not by timm.
        self.model.patch_embed.strict_img_size = False
        self._qkv: list[torch.Tensor] = []
        self.model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: self._qkv.append(o))

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    @property
    def feature_dim(self) -> int:
        """Width of the network's tokens (and of cls_embeddings)."""
        return self.spec.feature_dim

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, blocks: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(B, 3, h, w) normalised -> (normed tokens (B, T, C), last-block qkv (B, T, 3C),
        {b: (B, T, C) residual stream after block b} for the asked `blocks`).

        T = prefix tokens + (h/p)*(w/p). Mirrors timm's forward_features with our resampler.
        """
        m = self.model
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        tokens = m.patch_embed(x)  # (B, N, C)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        n_pos_prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        pos = POS_RESAMPLERS[self.spec.pos_resample](
            m.pos_embed, grid, tuple(m.patch_embed.grid_size), n_pos_prefix)
        if m.no_embed_class:
            tokens = torch.cat(prefix + [tokens + pos], dim=1)
        else:
            tokens = torch.cat(prefix + [tokens], dim=1) + pos
        tokens = m.norm_pre(m.patch_drop(m.pos_drop(tokens)))
        self._qkv.clear()
        hidden = {}
        for b, block in enumerate(m.blocks):
            tokens = block(tokens)
            if b in blocks:
                hidden[b] = tokens
        return m.norm(tokens), self._qkv.pop(), hidden

    def _batches(self, images: list[np.ndarray], long_side: int | None):
        """Yield (indices, uint8 crops, scales), grouping equal preprocessed sizes."""
        groups: dict[tuple[int, int], list[tuple[int, np.ndarray, float]]] = {}
        for i, image in enumerate(images):
            crop, scale = preprocess(image, self.patch_size, long_side)
            groups.setdefault(crop.shape[:2], []).append((i, crop, scale))
        for items in groups.values():
            for s in range(0, len(items), self.max_batch_size):
                chunk = items[s:s + self.max_batch_size]
                yield [c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk]

    def __call__(self, images: list[np.ndarray], also: tuple[str, ...] = ()) -> list[BackboneOutput]:
        """uint8 (H, W, 3) images of any sizes -> one BackboneOutput each, in input order.

        also: further feature kinds to return from the same forward pass: FEATURES (e.g. the
        keys for segment features when the graph uses the tokens) or "blockB" (the residual
        stream after block B, 0-based: the earlier blocks of a fine-tuned backbone can hold
        more class information than its last ones; docs/semantic.md).
        """
        prepared = [preprocess(image, self.patch_size, self.long_side) for image in images]
        outputs = self.forward_prepared([p[0] for p in prepared], [p[1] for p in prepared], also)
        return [output.to_host() for output in outputs]

    def forward_prepared(self, crops: list[np.ndarray], scales: list[float],
                         also: tuple[str, ...] = ()) -> list[BackboneOutput]:
        """Network inputs made by `preprocess` (uint8 (h, w, 3), patch multiples) and their
        scales -> one BackboneOutput each, in input order, whose arrays are float32 torch
        tensors on the model's device (views into one tensor per forward pass: no copy to the
        host). Equal sizes share a forward pass of up to max_batch_size."""
        self.check_kinds(also)
        out: list[BackboneOutput | None] = [None] * len(crops)
        kinds = (self.features, *also)
        for idx in self._groups([c.shape[:2] for c in crops]):
            h, w = crops[idx[0]].shape[:2]
            grids = self._grid_features(_to_tensor([crops[i] for i in idx], self.device), kinds)
            grids = {kind: g.float() for kind, g in grids.items()}
            for j, i in enumerate(idx):
                out[i] = BackboneOutput(grids[self.features][j], (h, w), scales[i],
                                        {kind: grids[kind][j] for kind in also})
        return out  # type: ignore[return-value]

    def _groups(self, sizes: list[tuple[int, int]]) -> list[list[int]]:
        """Indices of equal input sizes, in chunks of at most max_batch_size: one forward each."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(size, []).append(i)
        return [items[s:s + self.max_batch_size] for items in groups.values()
                for s in range(0, len(items), self.max_batch_size)]

    def check_kinds(self, kinds: tuple[str, ...]) -> None:
        """Raises ValueError naming the feature kinds this model cannot return."""
        unknown = {kind for kind in kinds if kind not in _FEATURE_SELECTORS and self._block_of(kind) is None}
        if unknown:
            raise ValueError(f"unknown feature kinds {sorted(unknown)}; known: {list(_FEATURE_SELECTORS)} "
                             f"and block0..block{len(self.model.blocks) - 1}")

    def _block_of(self, kind: str) -> int | None:
        """"blockB" -> B when the model has that block, else None."""
        b = intermediate_block(kind)
        return b if b is not None and b < len(self.model.blocks) else None

    def _grid_features(self, x: torch.Tensor, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """(B, 3, h, w) normalised -> {kind: (B, h/p, w/p, C) patch features}, one forward pass."""
        # bf16 autocast: matmuls in bfloat16 with float32 accumulation, norms and softmax in
        # float32 (torch's autocast lists); the features are returned as float32.
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            tokens, qkv, hidden = self._forward(x, tuple(b for b in map(self._block_of, kinds) if b is not None))
        grid = (x.shape[0], x.shape[2] // self.patch_size, x.shape[3] // self.patch_size, -1)

        def select(kind: str) -> torch.Tensor:
            block = self._block_of(kind)
            return hidden[block] if block is not None else _FEATURE_SELECTORS[kind](tokens, qkv)

        return {kind: select(kind)[:, self.model.num_prefix_tokens:].reshape(grid) for kind in kinds}

    def cls_embeddings(self, images: list[np.ndarray], resize: str | int | None = None) -> np.ndarray:
        """CLS token of the final normed output, (N, C) float32, for re-embedding segment crops.

        resize: overrides the backbone's resize policy (e.g. 224 for small crops).
        """
        long_side = self.long_side if resize is None else parse_resize(resize)
        out = np.zeros((len(images), self.feature_dim), np.float32)
        for idx, crops, _ in self._batches(images, long_side):
            tokens, _, _ = self._forward(_to_tensor(crops, self.device))
            out[idx] = tokens[:, 0].float().cpu().numpy()
        return out


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None,
                    features: str | None = None, device: str = "cpu",
                    resize: str | int | None = "crop", max_batch_size: int = 8,
                    precision: str = "fp32") -> Backbone:
    """Backbone by registry name; `weights` and `features` override the spec's defaults."""
    return Backbone(get_spec(name), weights=weights, features=features, device=device,
                    resize=resize, max_batch_size=max_batch_size, precision=precision)


def grid_shape(hw: tuple[int, int], patch: int, long_side: int | None) -> tuple[int, int]:
    """Feature grid (gh, gw) that an (H, W) image yields, without running the model."""
    h, w = hw
    if long_side is not None:
        s = long_side / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    return h // patch, w // patch


__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "FEATURES", "Backbone", "BackboneOutput",
           "BackboneSpec", "build_model", "create_backbone", "get_spec", "grid_shape",
           "parse_resize", "preprocess", "read_state_dict"]

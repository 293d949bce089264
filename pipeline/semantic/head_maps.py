"""A second network's feature maps for the self-training head (pseudo_labels.self_train.backbone).

The paper's self-training trains a separate segmentation network on the pseudo-labels. Here the
head stays a linear one over frozen features, but it can read, next to the graph's stored patch
features, NAME's dense feature map of the same image on the graph's cell grid:

    HeadMapConfig(backbone)                   what makes the maps; .digest(extract_digest) names them
    map_input(image, geometry)                (H, W, 3) uint8 -> the area the cells cover, resized
                                              to CELL_PIXELS per cell: (grid_h·P, grid_w·P, 3)
    map_on_grid(feature_map, grid_h, grid_w)  (C, h, w) -> (grid_h, grid_w, C), bilinear

The maps are made once per image and extraction (jobs.head_maps, OUT/head_maps), whatever the
clustering seed, and read back by pipeline.semantic.labelling.head_rows, which joins them to the patch
features (pipeline.semantic.self_training.joined).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from pipeline.features.geometry import GridGeometry

# Each cell (14 input pixels of the graph's ViT) is fed to the map's network at 16 pixels: a
# stride-32 CNN then gives a map of half the grid, upsampled bilinearly (the measured setting,
# docs/semantic.md; VOC07's 1,675 images take 71 s for EfficientNet-Lite0 on 2 CPU cores).
CELL_PIXELS = 16


@dataclass(frozen=True)
class HeadMapConfig:
    backbone: str  # a supervised embedder of pipeline.features.supervised.EMBEDDERS
    cell_pixels: int = CELL_PIXELS

    def __post_init__(self):
        if not self.backbone:
            raise ValueError("head maps need an embedder name")
        if self.cell_pixels < 1:
            raise ValueError(f"cell_pixels is a side in pixels, got {self.cell_pixels}")

    def digest(self, extract_digest: str) -> str:
        """Names one extraction's maps: a rerun, and every seed of an evaluation, reuses them."""
        text = json.dumps({"head_maps": asdict(self), "extract": extract_digest}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def map_input(image: np.ndarray, geom: GridGeometry, cell_pixels: int = CELL_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 source image -> (grid_h·P, grid_w·P, 3) uint8: the part of the image the
    cells cover (the extraction's resize drops a strip at the bottom and right), resized so each
    cell is P pixels square."""
    bottom, right = geom.grid_h * geom.cell_h / geom.scale_y, geom.grid_w * geom.cell_w / geom.scale_x
    crop = Image.fromarray(image).crop((0, 0, min(int(round(right)), image.shape[1]),
                                        min(int(round(bottom)), image.shape[0])))
    return np.asarray(crop.resize((geom.grid_w * cell_pixels, geom.grid_h * cell_pixels), Image.BICUBIC))


def map_on_grid(feature_map: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    """(C, h, w) feature map over the cells' area -> (grid_h, grid_w, C) float32, bilinear
    (half-pixel centres: a map cell and a grid cell share their area's centre)."""
    import torch

    x = torch.from_numpy(np.asarray(feature_map, np.float32))[None]
    if x.shape[-2:] != (grid_h, grid_w):
        x = torch.nn.functional.interpolate(x, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).numpy()


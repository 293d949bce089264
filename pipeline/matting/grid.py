"""An image's backbone features on their patch grid: what fusion and automatic trimaps need.

feature_grid runs the backbone on one image and records where its cells lie in the image;
fiedler_vectors gives the grid's patch-graph eigenvectors (the extraction's recipe), whose
Fiedler vector the automatic trimap thresholds (pipeline.matting.trimap).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline.config import EigenConfig, ExtractConfig
from pipeline.features.geometry import GridGeometry, resized_size


@dataclass(frozen=True)
class FeatureGrid:
    """Backbone features of one image and where their cells lie in it."""

    features: np.ndarray  # (gh, gw, C) float32
    geom: GridGeometry

    def at_size(self, height: int, width: int) -> "FeatureGrid":
        """The same grid over the image resampled to (height, width)."""
        g = self.geom
        geom = dataclasses.replace(g, height=height, width=width, scale_y=g.scale_y * g.height / height,
                                   scale_x=g.scale_x * g.width / width)
        return FeatureGrid(self.features, geom)


def feature_grid(backbone, image: np.ndarray) -> FeatureGrid:
    """(H, W, 3) uint8 and a pipeline.features.backbones.Backbone -> its FeatureGrid."""
    out = backbone([image])[0]
    gh, gw = out.features.shape[:2]
    height, width = image.shape[:2]
    rh, rw = resized_size(height, width, backbone.long_side)
    geom = GridGeometry(grid_h=gh, grid_w=gw, height=height, width=width,
                        cell_h=out.input_hw[0] / gh, cell_w=out.input_hw[1] / gw,
                        scale_y=rh / height, scale_x=rw / width)
    return FeatureGrid(out.features, geom)


def fiedler_vectors(grid: FeatureGrid, k: int = 3) -> np.ndarray:
    """(k, gh, gw) oriented eigenvectors of the patch graph (the extraction recipe)."""
    from pipeline.spectral.spectrum import image_spectrum

    cfg = ExtractConfig(eigen=EigenConfig(k=k))
    # The image argument only feeds the KNN colour term, which is off (knn_lambda = 0).
    return image_spectrum(grid.features, np.zeros((1, 1, 3), np.uint8), cfg).eigenvectors

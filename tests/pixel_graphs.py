"""Real-image graphs that need no model, for eigensolver tests and benchmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def image_graph(name: str, n_target: int, patch: int = 8) -> np.ndarray:
    """Dense W (N, N) = max(f fᵀ, 0), N ~ n_target, over image_descriptors(name, n_target)."""
    f = image_descriptors(name, n_target, patch)
    return np.maximum(f @ f.T, 0.0)


def image_descriptors(name: str, n_target: int, patch: int = 8) -> np.ndarray:
    """(N, 3·patch² + 2) L2-normalised descriptors, N ~ n_target, of the patch × patch cells
    of samples/<name>.jpg (resized to fit): mean-centred RGB plus grid position."""
    image = Image.open(ROOT / "samples" / f"{name}.jpg").convert("RGB")
    w, h = image.size
    scale = np.sqrt(n_target / ((h / patch) * (w / patch)))
    gh, gw = max(2, round(h * scale / patch)), max(2, round(w * scale / patch))
    pixels = np.asarray(image.resize((gw * patch, gh * patch), Image.Resampling.BILINEAR),
                        dtype=np.float64) / 255.0
    patches = pixels.reshape(gh, patch, gw, patch, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
    patches -= patches.mean(axis=0)
    patches /= np.linalg.norm(patches, axis=1).mean()
    yy, xx = np.mgrid[0:gh, 0:gw]
    position = np.stack([yy.ravel() / gh, xx.ravel() / gw], axis=1) - 0.5
    f = np.concatenate([patches, position], axis=1)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f

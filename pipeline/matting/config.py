"""The matting configuration and the digest that keys a matte run's rows.

MattingConfig holds every setting of `pipeline.matting.matte.matte`: the closed-form colour
Laplacian, the feature Laplacian's fusion, the solver ("cg" or "spectral"), working sizes, the
trimap and the backbone. matte_record / matte_digest say what a run's digest hashes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from pipeline.config import BackboneConfig, canonical_json, digest_of
from pipeline.matting.trimap import TrimapConfig
from pipeline.settings import build

SOLVERS = ("cg", "spectral")  # pipeline.matting.alpha.cg, pipeline.matting.alpha.spectral
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class MattingConfig:
    # Closed-form colour Laplacian (pymatting defaults).
    cf_epsilon: float = 1e-7
    cf_radius: int = 1
    # Fusion: weight of the feature Laplacian relative to the colour one (0 = colour only).
    feature_weight: float = 0.0
    feature_radius: int = 1
    # Stencil spacing in patch cells: interpolated features change little from one pixel to
    # the next, so links must span part of a cell to see a semantic edge at all.
    feature_stride: float = 0.25
    feature_power: float = 1.0
    solver: str = "cg"
    preconditioner: str = "auto"  # kernels.pcg: ichol on CPU, jacobi on GPU
    rtol: float = 1e-7
    maxiter: int = 10000
    device: str = "auto"  # where CG runs: "cpu", "cuda" (CuPy) or "auto" (CUDA when CuPy sees a GPU)
    # Spectral matting: number of layers and the long side they are computed at. 400 px beat
    # 200 px on both halves of alphamatting.com (Trimap1 SAD 8.05 / 10.83 against 9.48 / 11.92,
    # tune / check; docs/matting.md) for 5-15x the seconds and 4x the memory.
    n_layers: int = 20
    spectral_max_side: int = 400
    # The graph the layers are eigenvectors of (pipeline.matting.alpha.spectral.LAYER_GRAPHS):
    # "cf" the closed-form matting Laplacian (Levin et al.), "knn" the KNN colour graph's
    # normalised Laplacian (the paper's).
    spectral_graph: str = "cf"
    # Downscale so the long side is at most this before solving; alpha is upsampled back
    # and the full-resolution trimap's known pixels are kept. None = full resolution.
    max_side: Optional[int] = None
    estimate_foreground: bool = True
    trimap: TrimapConfig = field(default_factory=TrimapConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Decompression-bomb guard of the job's decoder: images with more pixels fail unread.
    max_pixels: int = 64_000_000

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        """What keys the matte job's rows in automatic mode (same digest = same work, skipped):
        matte_record's hash."""
        return matte_digest(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MattingConfig":
        return build(cls, data, "matte")


def matte_record(cfg: MattingConfig, trimaps: list[str] | None = None) -> dict:
    """What a matte run's digest hashes (and its shards' metadata holds): every field of cfg
    but `device`, which only says where CG runs (CPU and GPU agree to CG's tolerance); with
    given trimaps also where they came from (a folder, or the files), so matting the same
    images with other trimaps is new work."""
    data = cfg.to_dict()
    del data["device"]
    if trimaps:
        data["trimaps"] = list(trimaps)
    return data


def matte_digest(cfg: MattingConfig, trimaps: list[str] | None = None) -> str:
    """The digest that keys a matte run's rows: matte_record's (pipeline.config.digest_of)."""
    return digest_of(matte_record(cfg, trimaps))

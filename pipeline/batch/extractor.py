"""Batch extraction as a callable: image refs in, shard rows and error rows out.

Loads the backbone once (`__init__`) and maps batches (`__call__`), the shape Ray's batch
inference expects; it knows nothing about Ray. Every image either yields a row or an error
row: one bad file never costs the rest of its batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from kernels.backend import device_module
from pipeline.spectral.affinity import batched_feature_affinity, image_affinity, upsample_features
from pipeline.features.backbones import create_backbone
from pipeline.features.supervised import segment_embedder
from pipeline.config import ExtractConfig
from pipeline.features.geometry import geometry_of
from pipeline.batch.decoder import DecodedImage, ImageDecoder
from pipeline.io.schema import OPTIONAL_DEFAULTS, eigen_row, eigenvectors_of, features_of
from pipeline.semantic.segments import (backbone_grids, backbone_kinds, feature_kinds, joined, pooled_features,
                                        pooled_parts, segment_boxes, segment_crops, segment_map)
from pipeline.io.sources import ImageRef
from pipeline.spectral.spectrum import Spectrum, batch_spectra, device_array, grid_size, stacked_spectra


def _array_module(device: str):
    """CuPy on a GPU actor (graph and eigensolve on the GPU), NumPy otherwise."""
    return device_module(device, "the graph and eigensolve run on the CPU; only the backbone uses the GPU")


@dataclass
class Extracted:
    """One image through the spectral core: its shard row and what the row does not keep."""

    ref: ImageRef
    image: np.ndarray  # (H, W, 3) uint8
    row: dict  # the eigen_row written to the shard
    affinity: object  # the (N, N) graph W, NumPy or CuPy
    spectrum: Spectrum


class SpectralExtractor:
    def __init__(self, cfg: ExtractConfig, device: str = "cpu", batch_size: int = 8):
        self.cfg = cfg
        self.config_digest = cfg.digest()
        self.config_json = cfg.to_json()
        self.backbone = create_backbone(
            cfg.backbone.name,
            weights=cfg.backbone.weights,
            features=cfg.backbone.features,
            resize=cfg.backbone.long_side or "crop",
            device=device,
            max_batch_size=batch_size,
            precision=cfg.backbone.precision,
        )
        self.decoder = ImageDecoder(self.config_digest, self.backbone.patch_size, cfg.backbone.long_side,
                                    cfg.max_pixels)
        # Graph and eigensolve run where the features are: CuPy on a GPU actor.
        self.xp = _array_module(device)
        # A batch's graphs solved as one stack on the GPU (one chain of batched kernels instead
        # of one per image); on the CPU image by image, which measured faster there (GEMMs
        # already bound each solve: docs/scale.md).
        self.batched_solve = self.xp is not np
        # Segment crops are re-embedded by the graph's backbone unless another is named.
        self.segment_embedder = (segment_embedder(cfg.segments.backbone, device)
                                 if cfg.segments.n_segments and cfg.segments.backbone else self.backbone)
        # Pooled keys or block tokens as segment features: from the graph's own forward pass.
        self._also = backbone_kinds(cfg.segments.features) if cfg.segments.n_segments else ()
        self.backbone.check_kinds(self._also)  # a block the model lacks fails the run, not every image

    def __call__(self, refs: list[ImageRef]) -> tuple[list[dict], list[dict]]:
        """-> (rows for pipeline.io.schema.eigen_table, rows for error_table)."""
        rows, errors = [], []
        for item in self.extract(refs):
            if isinstance(item, dict):
                errors.append(item)
            else:
                rows.append(item.row)
        return rows, errors

    def extract(self, items: list[ImageRef | DecodedImage | dict]) -> Iterator[Extracted | dict]:
        """Each image's Extracted (its graph included, for callers that cut it again), or its
        error row. `items` are refs (decoded here) or what ImageDecoder made of them in a
        decode stage (DecodedImage, or an error row passed through).

        The batch's readable images share forward passes (equal input sizes) and one spectral
        step (pipeline.spectral.spectrum.batch_spectra); features stay on the device between."""
        decoded = []
        for item in items:
            item = self.decoder.decode(item) if isinstance(item, ImageRef) else item
            if isinstance(item, dict):
                yield item
            else:
                decoded.append(item)
        graphs = []
        for d, output in zip(decoded, self._features(decoded)):
            if isinstance(output, Exception):
                yield self.error_row(d.ref, "backbone", output)
                continue
            graphs.append((d, output, device_array(output.features, self.xp)))
        stacked = self._stacked(graphs)
        if stacked is not None:  # a GPU batch: one GEMM for all graphs, one stacked solve
            graphs, spectra = stacked
        else:
            graphs, spectra, errors = self._one_by_one(graphs)
            yield from errors
        for (d, output, W, _), spectrum in zip(graphs, spectra):
            if isinstance(spectrum, Exception):
                yield self.error_row(d.ref, "spectral", spectrum)
                continue
            try:
                yield Extracted(d.ref, d.image, self._row(d.ref, d.image, d.sha256, output, spectrum), W, spectrum)
            except Exception as exc:
                yield self.error_row(d.ref, "spectral", exc)

    def _one_by_one(self, graphs: list) -> tuple[list, list, list]:
        """(image, output, features) -> ((image, output, its graph, grid) of those whose graph
        was built, their spectra (batch_spectra), the error rows of the others)."""
        made, errors = [], []
        for d, output, features in graphs:
            try:
                made.append((d, output, image_affinity(features, d.image, self.cfg.graph), grid_size(features, self.cfg)))
            except Exception as exc:
                errors.append(self.error_row(d.ref, "spectral", exc))
        spectra = batch_spectra([g[2] for g in made], [g[3] for g in made], self.cfg.eigen, self.batched_solve)
        return made, spectra, errors

    def _stacked(self, graphs: list) -> tuple[list, list] | None:
        """The default graph of a GPU batch's images as one padded stack from one batched matmul,
        solved together -> ((image, output, its graph: a view of the stack), spectra), or None
        where that does not apply (CPU, another graph, one image, a grid under k cells) or the
        stack fails as a whole (the caller goes one by one)."""
        g = self.cfg.graph
        if (not self.batched_solve or len(graphs) < 2 or self.cfg.eigen.method != "auto" or g.kind != "dense"
                or g.knn_lambda != 0 or g.upsample != 1 or g.sparsify_topk is not None
                or min(f.shape[0] * f.shape[1] for _, _, f in graphs) < self.cfg.eigen.k):
            return None
        try:
            stack, sizes = batched_feature_affinity([f for _, _, f in graphs])
            grids = [grid_size(f, self.cfg) for _, _, f in graphs]
            spectra = stacked_spectra(stack, sizes, grids, self.cfg.eigen)
        except Exception:
            return None
        return [(d, o, stack[i, :sizes[i], :sizes[i]], grids[i]) for i, (d, o, _) in enumerate(graphs)], spectra

    def _features(self, decoded: list[DecodedImage]) -> list:
        """Backbone outputs (tensors on the device) in input order; on a batch failure, retry
        one by one so the exception lands on the image that caused it."""
        def forward(part: list[DecodedImage]) -> list:
            return self.backbone.forward_prepared([d.crop for d in part], [d.scale for d in part], self._also)
        try:
            return forward(decoded)
        except Exception:
            outputs = []
            for d in decoded:
                try:
                    outputs.append(forward([d])[0])
                except Exception as exc:
                    outputs.append(exc)
            return outputs

    def _row(self, ref: ImageRef, image: np.ndarray, sha: str, output, spectrum: Spectrum) -> dict:
        k, grid_h, grid_w = spectrum.eigenvectors.shape
        row = eigen_row(
            image_id=ref.image_id,
            source_uri=ref.uri,
            image_sha256=sha,
            height=image.shape[0],
            width=image.shape[1],
            input_height=output.input_hw[0],
            input_width=output.input_hw[1],
            patch_size=self.backbone.patch_size,
            grid_h=grid_h,
            grid_w=grid_w,
            backbone=self.cfg.backbone.name,
            weights_digest=self.backbone.digest,
            config_digest=self.config_digest,
            k=k,
            eigenvalues=spectrum.eigenvalues.tolist(),
            eigenvectors=spectrum.eigenvectors.astype(self.cfg.eigen.storage_dtype).ravel(),
            eigensolver=spectrum.method,
            max_residual=spectrum.max_residual,
        )
        if self.cfg.segments.n_segments or self.cfg.store_features:
            output = output.to_host()  # features on the host only for what the row stores

        # On the eigenvectors' grid, so one (grid_h, grid_w) describes both.
        def grid_features():
            return upsample_features(output.features, self.cfg.graph.upsample)

        def grids():
            return {"pool": grid_features(), **backbone_grids(output, self._also, self.cfg.graph.upsample)}

        if self.cfg.segments.n_segments:
            row.update(self._segments(image, grids, spectrum.eigenvectors, row))
        if self.cfg.store_features:
            features = grid_features()
            row["feature_dim"] = features.shape[-1]
            row["features"] = features.astype(np.float32).ravel()
        return row

    def _segments(self, image: np.ndarray, grids, eigenvectors: np.ndarray, row: dict) -> dict:
        """The row's segment columns (pipeline.io.schema): map, boxes and one feature per segment.
        `grids()` -> {"pool": the patch features, and the keys or block tokens cfg.features names:
        (grid_h, grid_w, C) on the eigenvectors' grid}, called only for pooling them."""
        cfg = self.cfg.segments
        labels = segment_map(eigenvectors, cfg)
        n = int(labels.max())
        boxes = segment_boxes(labels, n, geometry_of(row, self.cfg.backbone.long_side), cfg)
        kinds = feature_kinds(cfg.features)
        parts = pooled_parts(cfg.features)
        found = grids() if parts else {}
        per_kind = {kind: pooled_features(found[kind], labels, n) for kind in parts}
        if "crop" in kinds:
            crops = segment_crops(image, boxes, cfg.crop_size)
            per_kind["crop"] = (self.segment_embedder.cls_embeddings(crops, resize="crop") if n else
                                np.zeros((0, self.segment_embedder.feature_dim), np.float32))
        features = joined([per_kind[kind] for kind in kinds])
        columns = {"n_segments": n, "segment_map": labels.ravel(), "segment_boxes": boxes.ravel(),
                   "segment_dim": features.shape[1], "segment_features": features.astype(np.float32).ravel()}
        if cfg.store_patches:  # each patch joined as the segments' pooled kinds are: a head sees them
            patches = joined([found[kind].reshape(-1, found[kind].shape[-1]) for kind in parts])
            columns["segment_patch_features"] = patches.astype(np.float16).ravel()
        return columns

    def from_stored(self, items: list[tuple[ImageRef, dict | None]]) -> tuple[list[dict], list[dict]]:
        """(ref, its row from an extraction with config segments_source(cfg), or None) pairs ->
        (this config's rows, error rows), like __call__ but without the graph's forward pass:
        the stored eigenvectors and patch features give the segments (crop features still
        re-embed each crop). An image whose bytes changed since its row was written, or that
        has no such row, becomes an error row rather than a row that mixes two images."""
        rows, errors = [], []
        for ref, stored in items:
            try:
                if stored is None:
                    raise ValueError(f"{ref.image_id}: no row of the reused extraction")
                image = None
                if "crop" in feature_kinds(self.cfg.segments.features) or self._also:  # both need the image
                    decoded = self.decoder.decode(ref)
                    if isinstance(decoded, dict):
                        errors.append(decoded)
                        continue
                    image = decoded.image
                    if decoded.sha256 != stored["image_sha256"]:
                        raise ValueError(f"{ref.image_id}: image changed since the reused row was written")
                row = {**stored, "config_digest": self.config_digest, **OPTIONAL_DEFAULTS}
                if self.cfg.store_features:
                    row.update(feature_dim=stored["feature_dim"], features=stored["features"])
                if self.cfg.segments.n_segments:
                    row.update(self._segments(image, lambda: self._stored_grids(image, stored),
                                              eigenvectors_of(stored), row))
                rows.append(row)
            except Exception as exc:
                errors.append(self.error_row(ref, "segments", exc))
        return rows, errors

    def _stored_grids(self, image: np.ndarray, stored: dict) -> dict[str, np.ndarray]:
        """A stored row -> {"pool": its stored patch features, and the keys or block tokens its
        segments pool, on the row's grid (one forward pass, only when some are asked for)}."""
        found = {"pool": features_of(stored)}
        if self._also:
            found.update(backbone_grids(self.backbone([image], also=self._also)[0], self._also, self.cfg.graph.upsample))
        for kind in self._also:
            if found[kind].shape[:2] != (stored["grid_h"], stored["grid_w"]):
                raise ValueError(f"{kind} grid {found[kind].shape[:2]} is not the stored row's "
                                 f"{(stored['grid_h'], stored['grid_w'])}")
        return found

    def error_row(self, ref: ImageRef, stage: str, exc: BaseException) -> dict:
        """The error row of `ref` failing at `stage`, under this extraction's digest."""
        return self.decoder.error_row(ref, stage, exc)

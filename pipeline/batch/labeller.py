"""Batch labelling as a callable: image refs in, object rows (and the shard rows and error
rows extraction adds) out.

Per image: the spectral core (SpectralExtractor), or, when a shard already holds the image's
row with stored features, that row (no forward pass); then objects (pipeline.objects.instances)
from its eigenvectors and graph (with a self-trained head, the head's mask of the patch features
is the first object), and for images picked for the gallery a panel PNG and its thumbnail. Like the
extractor, it loads the backbone once and knows nothing about Ray.
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import fsspec
import numpy as np

from kernels.backend import array_module, is_cupy, to_numpy
from pipeline.batch.decoder import DecodedImage
from pipeline.batch.extractor import SpectralExtractor
from pipeline.config import ExtractConfig
from pipeline.detection.checkpoint import read_checkpoint
from pipeline.detection.samples import DetectedObject, added_detections, detected_objects
from pipeline.detection.train import detect
from pipeline.evaluation.panels import GALLERY_DIR, object_tag, panel_name, render_panel, thumb_name, thumbnail
from pipeline.features.geometry import geometry_of
from pipeline.io.coco_instances import decode_mask, encode_mask
from pipeline.io.rle import encode_masks
from pipeline.io.schema import eigenvectors_of, features_of
from pipeline.io.shards import rows_by_id
from pipeline.io.soft_masks import encode_soft
from pipeline.io.sources import ImageRef
from pipeline.objects.discovery import discover_batch
from pipeline.objects.instances import ImageObject, LabelConfig, image_objects, label_digest
from pipeline.objects.self_training import Head, head_mask
from pipeline.spectral.affinity import image_affinity

@dataclass(frozen=True)
class LabelRef:
    """One image to label and what OUT already holds for it."""

    ref: ImageRef
    has_row: bool = False  # its eigen row is in OUT/eigs: do not write it again
    features_shard: str = ""  # that row's shard, when it holds the patch features
    panel: bool = False  # draw it for the gallery
    decoded: DecodedImage | dict | None = None  # the decode stage's image (or error row), if it ran


@dataclass
class Labelled:
    """One batch's output."""

    eigen_rows: list[dict]  # new shard rows (images that had none)
    objects: list[dict]  # rows for pipeline.io.schema.object_table
    errors: list[dict]
    panels: list[str]  # image ids whose panel was written


class ObjectLabeller:
    def __init__(self, extract_cfg: ExtractConfig, label_cfg: LabelConfig, out: str,
                 device: str = "cpu", batch_size: int = 8, head: Head | None = None):
        if label_cfg.self_train and (head is None or not extract_cfg.store_features):
            raise ValueError("self_train labels with a fitted head (pipeline.batch.head_fitting) and "
                             "stored patch features (store_features)")
        self.extractor = SpectralExtractor(extract_cfg, device=device, batch_size=batch_size)
        self.cfg, self.head = label_cfg, head if label_cfg.self_train else None
        self.out = out.rstrip("/")
        self.extract_digest = extract_cfg.digest()
        self.digest = label_digest(self.extract_digest, label_cfg)
        self.reuse_graph = dataclasses.replace(extract_cfg.graph, upsample=1)  # stored features are upsampled
        self.detector, self.detector_round = None, 0
        if label_cfg.detector:
            if not extract_cfg.store_features:
                raise ValueError("label.detector reads the patch features: needs extract.store_features")
            self.detector, record = read_checkpoint(label_cfg.detector)  # once per actor, like the backbone
            self.detector.to("cuda" if self.extractor.batched_solve else "cpu")
            self.detector_round = record["round"]

    def __call__(self, items: list[LabelRef]) -> Labelled:
        result = Labelled([], [], [], [])
        stored = [i for i in items if i.features_shard]
        fresh = {i.ref.image_id: i for i in items if not i.features_shard}
        todo = []  # (want, image, row, eigenvectors, eigenvalues, W, features)
        for item in self.extractor.extract([i.ref if i.decoded is None else i.decoded for i in fresh.values()]):
            if isinstance(item, dict):
                result.errors.append(self._relabel(item))
                continue
            want = fresh[item.ref.image_id]
            if not want.has_row:
                result.eigen_rows.append(item.row)
            todo.append((want, item.image, item.row, item.spectrum.eigenvectors, item.spectrum.eigenvalues,
                         item.affinity, features_of(item.row) if self._needs_features else None))
        for want, row in zip(stored, self._stored_rows(stored)):
            decoded = self.extractor.decoder.decode(want.ref) if want.decoded is None else want.decoded
            if isinstance(decoded, dict):
                result.errors.append(self._relabel(decoded))
                continue
            try:
                features = features_of(row)
                W = image_affinity(self.extractor.xp.asarray(features), decoded.image, self.reuse_graph)
                todo.append((want, decoded.image, row, eigenvectors_of(row), np.asarray(row["eigenvalues"]), W,
                             features))
            except Exception as exc:
                result.errors.append(self._relabel(self.extractor.error_row(want.ref, "objects", exc)))
        # The detector's objects, one forward pass for the batch; they join each image's cuts.
        detected = self._detect(todo)
        # Every image's cuts in rounds across the batch (one stacked solve a round on a GPU).
        firsts = [self._first(t[6]) for t in todo]
        found = discover_batch([(t[3], t[4], t[5], None if isinstance(first, Exception) else first)
                                for t, first in zip(todo, firsts)], self.cfg.discovery,
                               batched=self.extractor.batched_solve)
        found = [first if isinstance(first, Exception) else f for first, f in zip(firsts, found)]
        for (want, image, row, eigenvectors, eigenvalues, _, _), candidates, detections in zip(todo, found, detected):
            self._label(want, image, row, eigenvectors, eigenvalues, candidates, detections, result)
        return result

    @property
    def _needs_features(self) -> bool:
        return self.head is not None or self.detector is not None

    def _detect(self, todo: list) -> list[list[DetectedObject]]:
        """Each image's detected objects (none without a detector, or where it found none)."""
        if self.detector is None or not todo:
            return [[] for _ in todo]
        import torch

        grids = [torch.from_numpy(np.ascontiguousarray(to_numpy(t[6]).transpose(2, 0, 1))) for t in todo]
        detections = detect(self.detector, grids)
        long_side = self.extractor.cfg.backbone.long_side
        return [detected_objects(d, t[2], long_side) for d, t in zip(detections, todo)]

    def detected_row(self, row: dict, index: int, obj: DetectedObject) -> dict:
        """A detection as a labels-table row (no cut: eigenvalue and border are NaN)."""
        return {"image_id": row["image_id"], "object": index, "height": row["height"], "width": row["width"],
                "box": obj.box.tolist(), "patch_box": obj.box.tolist(), "score": obj.score, "area": obj.area,
                "segmentation": obj.segmentation, "method": "detector", "rank": index,
                "eigenvalue": float("nan"), "border": float("nan"),
                "grid_area": obj.area / float(row["height"] * row["width"]), "fallback": False,
                "config_digest": self.digest, "extract_digest": self.extract_digest, "soft": None,
                "source": "detector", "round": self.detector_round}

    def _first(self, features: np.ndarray | None):
        """The self-trained head's mask of an image's patch features (None without a head), or
        the exception it raised."""
        try:
            return head_mask(self.head, features) if self.head is not None else None
        except Exception as exc:
            return exc

    def _label(self, want: LabelRef, image: np.ndarray, row: dict, eigenvectors: np.ndarray,
               eigenvalues: np.ndarray, candidates, detections: list[DetectedObject], result: Labelled) -> None:
        try:
            if isinstance(candidates, Exception):
                raise candidates
            geom = geometry_of(row, self.extractor.cfg.backbone.long_side)
            # On a GPU actor the masks are refined, boxed and run-length encoded on the GPU.
            on_device = self.extractor.xp.asarray(image) if self.extractor.batched_solve else image
            objects = image_objects(eigenvectors, eigenvalues, None, on_device, geom, self.cfg, candidates=candidates)
            areas, rles = mask_codes([o.mask for o in objects])
            added = added_detections([o.box for o in objects], [o.score for o in objects], detections)
            result.objects.extend(self.object_row(row, i, obj, area, rle)
                                  for i, (obj, area, rle) in enumerate(zip(objects, areas, rles)))
            result.objects.extend(self.detected_row(row, len(objects) + i, obj) for i, obj in enumerate(added))
            if want.panel:
                # the best objects by score: the cuts, then as many detections as the cuts leave room for
                shown = added[:max(0, self.cfg.discovery.max_objects - len(objects))]
                masks = [to_numpy(o.mask) for o in objects]
                masks += [decode_mask(o.segmentation, row["height"], row["width"]) for o in shown]
                self._draw(want.ref.image_id, image, eigenvectors, geom, masks,
                           [o.box for o in objects] + [o.box for o in shown],
                           [o.score for o in objects] + [o.score for o in shown])
                result.panels.append(want.ref.image_id)
        except Exception as exc:
            result.errors.append(self._relabel(self.extractor.error_row(want.ref, "objects", exc)))

    def object_row(self, row: dict, index: int, obj: ImageObject, area: int, rle: str) -> dict:
        c = obj.candidate
        return {"image_id": row["image_id"], "object": index, "height": row["height"], "width": row["width"],
                "box": obj.box.tolist(), "patch_box": obj.patch_box.tolist(), "score": obj.score,
                "area": area, "segmentation": rle,
                "method": self.cfg.discovery.method, "rank": c.rank,
                "eigenvalue": c.eigenvalue, "border": c.border, "grid_area": c.area, "fallback": c.fallback,
                "config_digest": self.digest, "extract_digest": self.extract_digest,
                "soft": encode_soft(to_numpy(obj.soft)) if self.cfg.soft_masks else None,
                "source": "cut", "round": 0}

    def _stored_rows(self, stored: list[LabelRef]) -> list[dict]:
        """The shard rows of `stored`, in order, each shard read once."""
        rows = rows_by_id([(i.ref.image_id, i.features_shard) for i in stored], self.extract_digest)
        return [rows[item.ref.image_id] for item in stored]

    def _draw(self, image_id: str, image: np.ndarray, eigenvectors: np.ndarray, geom, masks: list, boxes: list,
              scores: list[float]) -> None:
        """The image's panel (its objects' boxes tagged with place by score and score) and,
        beside it under thumbs/, the thumbnail the gallery page shows."""
        panel = render_panel(image, eigenvectors, geom, object_masks=masks,
                             pred_boxes=np.array(boxes).reshape(-1, 4), title=image_id,
                             box_labels=[object_tag(i, s) for i, s in enumerate(scores)],
                             mask_title=f"{len(masks)} object masks")
        buffer = io.BytesIO()
        panel.save(buffer, format="PNG")
        with fsspec.open(f"{self.out}/{GALLERY_DIR}/{panel_name(image_id)}", "wb") as f:
            f.write(buffer.getvalue())
        with fsspec.open(f"{self.out}/{GALLERY_DIR}/{thumb_name(image_id)}", "wb") as f:
            f.write(thumbnail(panel))

    def _relabel(self, error: dict) -> dict:
        """Error rows of a label run carry its digest, so its reruns skip them."""
        return {**error, "config_digest": self.digest}


def mask_codes(masks: list) -> tuple[list[int], list[str]]:
    """One image's (H, W) bool object masks -> (their pixel counts, their COCO RLE strings).
    Masks on a GPU are encoded there (pipeline.io.rle: only run boundaries cross to the host);
    host masks by pycocotools, faster on a CPU (the same strings: tests/test_rle.py)."""
    if not masks:
        return [], []
    if is_cupy(masks[0]):
        stack = array_module(masks[0]).stack(masks)
        return to_numpy(stack.sum(axis=(1, 2))).astype(int).tolist(), encode_masks(stack)
    return [int(m.sum()) for m in masks], [encode_mask(m) for m in masks]

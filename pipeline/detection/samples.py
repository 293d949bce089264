"""Between a label run's tables and the detector: training samples from a shard row (its stored
patch features) and the image's objects, and detections back to objects in image pixels.

The detector works in *input pixels*, the resized-and-cropped image the backbone saw
(pipeline.features.geometry): a grid cell is `cell` input pixels, an object's box in original
pixels times the resize scale is its box there.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import box_iou

from pipeline.features.geometry import geometry_of, resized_size
from pipeline.io.coco_instances import decode_mask, encode_mask
from pipeline.io.schema import features_of


@dataclass(frozen=True)
class DetectedObject:
    """One object in original image pixels (a detection, or a cut that joins a round's targets)."""

    box: np.ndarray  # (4,) [x0, y0, x1, y1]
    segmentation: str  # COCO RLE counts of the (height, width) mask
    area: int  # mask pixels
    score: float


def cell_size(row: dict) -> int:
    """Input pixels per grid cell of a shard row (the patch size, or patch / upsample)."""
    return max(1, round(row["input_width"] / row["grid_w"]))


def feature_grid(row: dict) -> Tensor:
    """A shard row with stored features -> (feature_dim, grid_h, grid_w) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(features_of(row).transpose(2, 0, 1)))


def training_target(row: dict, objects: list[dict], long_side: int | None) -> dict[str, Tensor]:
    """A shard row and its image's objects ({"box" original-pixel xyxy, "segmentation" RLE}) ->
    the detector's target: boxes in input pixels, masks (n, grid_h·cell, grid_w·cell) uint8 over
    the input. Objects whose box is under one input pixel on a side are left out."""
    geom = geometry_of(row, long_side)
    cell = cell_size(row)
    size = (row["grid_h"] * cell, row["grid_w"] * cell)
    scale = np.array([geom.scale_x, geom.scale_y, geom.scale_x, geom.scale_y])
    boxes, masks = [], []
    for obj in objects:
        box = np.clip(np.asarray(obj["box"], np.float64) * scale, 0, [size[1], size[0], size[1], size[0]])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        boxes.append(box)
        masks.append(_input_mask(decode_mask(obj["segmentation"], row["height"], row["width"]), long_side, size))
    return {"boxes": torch.tensor(np.array(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.zeros(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(np.array(masks, np.uint8).reshape(-1, *size))}


def _input_mask(mask: np.ndarray, long_side: int | None, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool in original pixels -> (h, w) uint8 over the input: resized as the backbone
    resized the image, cropped bottom/right as it cropped."""
    h, w = resized_size(*mask.shape, long_side)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))
    out = np.zeros(size, np.uint8)
    out[:min(h, size[0]), :min(w, size[1])] = resized[:size[0], :size[1]]
    return out


def detected_objects(detection: dict[str, Tensor], row: dict, long_side: int | None) -> list[DetectedObject]:
    """One image's detections (train.detect: input-pixel boxes, 28×28 mask probabilities) -> objects
    in original pixels, best first: boxes divided by the resize scale, masks pasted into them at
    the image's size and thresholded at 0.5; a detection whose mask is empty keeps its box as mask."""
    geom = geometry_of(row, long_side)
    height, width = row["height"], row["width"]
    scale = torch.tensor([geom.scale_x, geom.scale_y, geom.scale_x, geom.scale_y], dtype=torch.float32)
    boxes = (detection["boxes"].float() / scale).clamp(min=0)
    boxes = torch.minimum(boxes, torch.tensor([width, height, width, height], dtype=torch.float32))
    # a box clipped to the image's edge can shrink below a pixel: no object to label there
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    boxes, detection = boxes[keep], {key: value[keep] for key, value in detection.items()}
    if not len(boxes):
        return []
    masks = paste_masks_in_image(detection["masks"], boxes, (height, width))[:, 0] > 0.5
    objects = []
    for box, mask, score in zip(boxes.numpy(), masks.numpy(), detection["scores"].tolist()):
        if not mask.any():
            x0, y0, x1, y1 = np.floor(box[:2]).astype(int).tolist() + np.ceil(box[2:]).astype(int).tolist()
            mask[y0:y1, x0:x1] = True
        objects.append(DetectedObject(box.astype(np.float64), encode_mask(mask), int(mask.sum()), float(score)))
    return objects


def _overlapping_none(boxes: list, others: list, iou: float) -> list[bool]:
    """For each of boxes (N, 4), whether its IoU with every one of others (M >= 1, 4) is below iou."""
    if not len(boxes):
        return []
    overlap = box_iou(torch.tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                      torch.tensor(np.asarray(others, np.float32).reshape(-1, 4)))
    return (overlap.amax(dim=1) < iou).tolist()


def added_detections(cut_boxes: list, cut_scores: list[float], detections: list[DetectedObject],
                     iou: float = 0.5) -> list[DetectedObject]:
    """The detections that join one image's cuts in `label --detector`: those whose box overlaps
    no positive-scored cut by IoU >= iou, each score multiplied by the image's lowest positive cut
    score, so they rank after its cuts (the cuts' scores and the detector's are not on one scale;
    the cuts find the salient object better, the detector the ones the cuts missed)."""
    positive = [(box, score) for box, score in zip(cut_boxes, cut_scores) if score > 0]
    if not positive:
        return list(detections)
    lowest = min(score for _, score in positive)
    new = _overlapping_none([d.box for d in detections], [box for box, _ in positive], iou)
    return [replace(d, score=d.score * lowest) for d, keep in zip(detections, new) if keep]


def round_objects(cuts: list[dict], detections: list[DetectedObject], min_score: float,
                  iou: float = 0.5) -> list[dict]:
    """The next round's targets for one image (CutLER's self-training): the detections scoring at
    least min_score, and the cuts whose box overlaps none of those by IoU >= iou (the cuts stay
    where the detector is unsure). Objects as the labels table has them ({"box", "segmentation"})."""
    kept = [{"box": d.box.tolist(), "segmentation": d.segmentation} for d in detections if d.score >= min_score]
    if not kept:
        return list(cuts)
    new = _overlapping_none([cut["box"] for cut in cuts], [k["box"] for k in kept], iou)
    return kept + [{"box": list(cut["box"]), "segmentation": cut["segmentation"]}
                   for cut, keep in zip(cuts, new) if keep]

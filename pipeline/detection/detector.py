"""Class-agnostic FCOS over precomputed patch features, with CutLER's drop-loss.

torchvision's FCOS is kept as is; three pieces adapt it to features instead of pixels:
- `FeatureTransform` replaces its GeneralizedRCNNTransform: no resizing and no normalisation; it
  zero-pads a batch of (C, h, w) grids to the largest and reports each image's size in *pixels*
  (h·patch, w·patch), so targets and predicted boxes are in input-pixel xyxy;
- `PatchAnchorGenerator` computes each level's stride in pixels from the patch size (torchvision's
  reads it off the batch tensor's shape, which here is the patch grid, not the image);
- `DropLossHead` replaces the head's classification loss by `drop_loss_classification`;
and `MaskFCOS` adds Mask R-CNN's mask head (torchvision's heads, loss and pasting) on the finest
pyramid level, so each detection comes with an instance mask.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou, roi_align, sigmoid_focal_loss

from pipeline.detection.pyramid import SimplePyramid


class FeatureTransform(GeneralizedRCNNTransform):
    """list of (C, h_i, w_i) feature grids -> ImageList(tensors (B, C, max h, max w) zero-padded,
    image_sizes [(h_i·patch, w_i·patch)]); targets pass through unchanged (already pixel xyxy)."""

    def __init__(self, patch_size: int):
        super().__init__(min_size=1, max_size=1, image_mean=[], image_std=[], size_divisible=1)
        self.patch_size = patch_size

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None):
        height = max(f.shape[-2] for f in images)
        width = max(f.shape[-1] for f in images)
        batch = torch.stack([F.pad(f, (0, width - f.shape[-1], 0, height - f.shape[-2])) for f in images])
        sizes = [(f.shape[-2] * self.patch_size, f.shape[-1] * self.patch_size) for f in images]
        return ImageList(batch, sizes), targets

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result  # boxes are already in pixels of the (unresized) input


class PatchAnchorGenerator(AnchorGenerator):
    """AnchorGenerator whose strides are (grid size · patch) // level size in pixels."""

    def __init__(self, sizes: tuple[tuple[int, ...], ...], patch_size: int):
        super().__init__(sizes, ((1.0,),) * len(sizes))
        self.patch_size = patch_size

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        height, width = (s * self.patch_size for s in image_list.tensors.shape[-2:])
        device = feature_maps[0].device
        strides = [[torch.tensor(height // f.shape[-2], device=device), torch.tensor(width // f.shape[-1], device=device)]
                   for f in feature_maps]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors([f.shape[-2:] for f in feature_maps], strides))
        return [anchors] * len(image_list.image_sizes)


def drop_loss_classification(cls_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]],
                             matched_idxs: list[Tensor], drop_iou: float = 0.01) -> Tensor:
    """CutLER's drop-loss (Wang et al. 2023, eq. 2) on a dense head: a location's predicted box that
    overlaps no pseudo-box (max IoU < drop_iou with every target) contributes no classification loss,
    so objects the cuts missed are not taught as background. Locations matched to a target
    (foreground) always count.

    cls_logits (N, A, K), pred_boxes (N, A, 4) decoded pixel xyxy, matched_idxs N × (A,) target index
    or -1 -> focal loss summed over the kept locations / number of foreground locations (FCOS's norm).
    """
    foreground = torch.stack(matched_idxs) >= 0  # (N, A)
    labels = torch.zeros_like(cls_logits)
    for i, (target, matched) in enumerate(zip(targets, matched_idxs)):
        rows = torch.nonzero(matched >= 0).squeeze(1)
        labels[i, rows, target["labels"][matched[rows]]] = 1.0
    keep = foreground.clone()
    for i, target in enumerate(targets):
        if target["boxes"].numel():
            keep[i] |= box_iou(pred_boxes[i].detach(), target["boxes"]).max(dim=1).values >= drop_iou
    loss = sigmoid_focal_loss(cls_logits, labels, reduction="none").sum(dim=-1)  # (N, A)
    return (loss * keep).sum() / max(1, int(foreground.sum()))


class DropLossHead(FCOSHead):
    """FCOSHead whose classification loss is `drop_loss_classification` when drop_iou is set
    (regression and centerness losses are FCOS's, computed on foreground only anyway)."""

    def __init__(self, in_channels: int, num_convs: int, drop_iou: Optional[float]):
        super().__init__(in_channels, num_anchors=1, num_classes=1, num_convs=num_convs)
        self.drop_iou = drop_iou

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if self.drop_iou is not None:
            pred_boxes = self.box_coder.decode(head_outputs["bbox_regression"], torch.stack(anchors))
            losses["classification"] = drop_loss_classification(
                head_outputs["cls_logits"], pred_boxes, targets, matched_idxs, self.drop_iou)
        return losses


class MaskBranch(nn.Module):
    """Mask R-CNN's class-agnostic mask head on one pyramid level: RoIAlign 14×14 of each box,
    four 3×3 convs, a deconvolution to 28×28 logits (torchvision's MaskRCNNHeads/Predictor).
    Trained on the pseudo-boxes themselves as proposals (each matched to its own mask)."""

    def __init__(self, channels: int, level_stride_px: float, layers: int = 4):
        super().__init__()
        self.heads = MaskRCNNHeads(channels, [channels] * layers, dilation=1)
        self.predictor = MaskRCNNPredictor(channels, channels, 1)
        self.spatial_scale = 1.0 / level_stride_px

    def logits(self, level: Tensor, boxes: list[Tensor]) -> Tensor:
        """level (B, C, h, w), boxes B × (n_i, 4) pixel xyxy -> (Σn_i, 1, 28, 28) logits."""
        crops = roi_align(level, boxes, output_size=14, spatial_scale=self.spatial_scale, sampling_ratio=2,
                          aligned=True)
        return self.predictor(self.heads(crops))

    def loss(self, level: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        boxes = [t["boxes"] for t in targets]
        if sum(len(b) for b in boxes) == 0:
            return level.sum() * 0
        return maskrcnn_loss(self.logits(level, boxes), boxes, [t["masks"] for t in targets],
                             [t["labels"] for t in targets], [torch.arange(len(b)) for b in boxes])


class MaskFCOS(FCOS):
    """FCOS whose detections also carry "masks" (n, 1, 28, 28) probabilities in their boxes (paste
    them with torchvision's paste_masks_in_image); training adds the "mask" loss, which needs
    "masks" (n, H, W) uint8 in each target, H × W the input in pixels."""

    def __init__(self, *args, mask_branch: MaskBranch, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_branch = mask_branch

    def forward(self, images, targets=None):  # FCOS.forward without its checks, plus the masks
        images, targets = self.transform(images, targets)
        features = list(self.backbone(images.tensors).values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(images, features)
        counts = [f.size(2) * f.size(3) for f in features]
        if self.training:
            losses = self.compute_loss(targets, head_outputs, anchors, counts)
            losses["mask"] = self.mask_branch.loss(features[0], targets)
            return losses
        split = {k: list(v.split(counts, dim=1)) for k, v in head_outputs.items()}
        detections = self.postprocess_detections(split, [list(a.split(counts)) for a in anchors],
                                                 images.image_sizes)
        boxes = [d["boxes"] for d in detections]
        if sum(len(b) for b in boxes):
            probabilities = self.mask_branch.logits(features[0], boxes).sigmoid()
            for d, p in zip(detections, probabilities.split([len(b) for b in boxes])):
                d["masks"] = p
        else:
            for d in detections:
                d["masks"] = torch.zeros((0, 1, 28, 28))
        return detections


def build_detector(in_channels: int, pyramid_channels: int, head_convs: int = 4, patch_size: int = 14,
                   drop_iou: Optional[float] = 0.01, score_threshold: float = 0.3,
                   max_detections: int = 100) -> MaskFCOS:
    """A one-class FCOS with masks over (C=in_channels, h, w) patch features: forward takes a list
    of feature grids (and, training, targets with pixel-xyxy "boxes", int64 "labels" of zeros and
    uint8 "masks") and returns the losses or detections ({"boxes" pixel xyxy, "scores", "labels",
    "masks"}). drop_iou=None trains without drop-loss."""
    pyramid = SimplePyramid(in_channels, pyramid_channels)
    sizes = tuple((int(round(s * patch_size)),) for s in pyramid.strides)  # anchor size = level stride (FCOS)
    model = MaskFCOS(pyramid, num_classes=1, anchor_generator=PatchAnchorGenerator(sizes, patch_size),
                     head=DropLossHead(pyramid_channels, head_convs, drop_iou), score_thresh=score_threshold,
                     detections_per_img=max_detections,
                     mask_branch=MaskBranch(pyramid_channels, pyramid.strides[0] * patch_size))
    model.transform = FeatureTransform(patch_size)
    return model

"""Fit the class-agnostic detector on (patch features, pseudo-objects) samples, and predict with it.

Plain single-process PyTorch (no Ray here: jobs/train.py runs `train` inside Ray Train's workers);
deterministic for a seed on CPU when the batches come in a fixed order: the weights' init comes
from the seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

from pipeline.config import check
from pipeline.detection.detector import MaskFCOS, build_detector

# A training sample: features (C, h, w) float and its target {"boxes" (n, 4) input-pixel xyxy,
# "labels" (n,) int64 zeros, "masks" (n, H, W) uint8 over the input in pixels}.
Sample = tuple[Tensor, dict[str, Tensor]]


# Steps of the learning rate's linear warm-up from lr / WARMUP_STEPS to lr.
WARMUP_STEPS = 100


@dataclass(frozen=True)
class DetectorConfig:
    # Passes over the label runs (on COCO instances 12 scored as 4 at three times the time: docs/detector.md).
    epochs: int = 4
    lr: float = 3e-4
    batch_size: int = 8
    # Channels of every pyramid level and of the FCOS and mask heads (a multiple of 32: their GroupNorm).
    pyramid_channels: int = 64
    # 3×3 convs in each FCOS tower (torchvision's default is 4; 2 halves the training step on CPU).
    head_convs: int = 2
    # Detections below this score are not returned (COCO evaluation wants the low ones too).
    score_threshold: float = 0.05
    # Most detections per image, best first (COCO's AR100 reads 100).
    max_detections: int = 100
    seed: int = 0
    # CutLER's drop-loss: predictions overlapping no pseudo-box (IoU < 0.01) get no classification loss.
    drop_loss: bool = True
    # Self-training rounds: round r > 1 trains on round r-1's detections scoring >= round_score,
    # merged with the cuts that overlap none of them (box IoU < 0.5).
    rounds: int = 1
    round_score: float = 0.5
    # Targets per image: the label run's best-scored objects with a positive score, at most this many
    # (0: all of them). On COCO instances 3 scored above 1 and above all (docs/detector.md).
    max_targets: int = 3

    def __post_init__(self):
        def integer(name: str, value, least: int):
            check(isinstance(value, int) and not isinstance(value, bool) and value >= least, f"detector.{name}",
                  f"an integer >= {least}", value)

        for name, least in (("epochs", 1), ("batch_size", 1), ("head_convs", 1), ("max_detections", 1),
                            ("rounds", 1), ("seed", 0), ("max_targets", 0)):
            integer(name, getattr(self, name), least)
        check(self.lr > 0, "detector.lr", "> 0", self.lr)
        check(isinstance(self.pyramid_channels, int) and self.pyramid_channels > 0 and self.pyramid_channels % 32 == 0,
              "detector.pyramid_channels", "a positive multiple of 32", self.pyramid_channels)
        check(0.0 <= self.score_threshold < 1.0, "detector.score_threshold", "in [0, 1)", self.score_threshold)
        check(0.0 <= self.round_score < 1.0, "detector.round_score", "in [0, 1)", self.round_score)
        check(isinstance(self.drop_loss, bool), "detector.drop_loss", "true or false", self.drop_loss)


def new_model(in_channels: int, patch_size: int, cfg: DetectorConfig) -> MaskFCOS:
    """An untrained detector for (in_channels, h, w) features whose cells are patch_size input
    pixels, initialised from cfg.seed (what a checkpoint's state_dict loads into)."""
    torch.manual_seed(cfg.seed)
    return build_detector(in_channels, cfg.pyramid_channels, cfg.head_convs, patch_size,
                          drop_iou=0.01 if cfg.drop_loss else None, score_threshold=cfg.score_threshold,
                          max_detections=cfg.max_detections)


def train(model: MaskFCOS, epoch_batches: Callable[[int], Iterable[list[Sample]]], cfg: DetectorConfig,
          after_epoch: Callable[[int, dict, torch.optim.Optimizer], None] | None = None,
          device: torch.device | str = "cpu", start_epoch: int = 0, optimizer_state: dict | None = None,
          log_every: int = 0) -> MaskFCOS:
    """AdamW over epochs start_epoch..cfg.epochs-1; epoch_batches(epoch) yields that epoch's batches of
    samples (the caller decides order and streaming). after_epoch(epoch, mean losses, optimizer) is
    called after each pass (a checkpoint, a report); optimizer_state resumes from one; log_every > 0
    prints the epoch's mean losses every that many steps. Returns the model in eval mode."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    # A linear warm-up: without it FCOS's ReLU box regression died within the first epoch of 1,959
    # images at lr 1e-3 (every predicted box empty, regression loss stuck at 1.0).
    # A resumed run (start_epoch > 0) is past it.
    warmup = None if start_epoch else torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    # Drop-loss leaves most background logits without gradient; on CPU their optimiser state decays into
    # denormal floats, measured 10x slower (185 s vs 18 s on the synthetic test set); flush them to zero.
    torch.set_flush_denormal(True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            totals: dict[str, float] = {}
            steps = 0
            for batch in epoch_batches(epoch):
                losses = model([f.to(device) for f, _ in batch],
                               [{k: v.to(device) for k, v in t.items()} for _, t in batch])
                optimizer.zero_grad()
                sum(losses.values()).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                if warmup is not None:
                    warmup.step()
                steps += 1
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value.item()
                if log_every and steps % log_every == 0:
                    print(f"  step {steps}: " + ", ".join(f"{k} {v / steps:.4f}" for k, v in totals.items()), flush=True)
            if after_epoch is not None:
                after_epoch(epoch, {name: round(value / max(1, steps), 5) for name, value in totals.items()}, optimizer)
    finally:
        torch.set_flush_denormal(False)
    return model.eval()


def shuffled_batches(samples: list[Sample], cfg: DetectorConfig) -> Callable[[int], Iterable[list[Sample]]]:
    """In-memory samples -> epoch_batches for `train`: a seeded shuffle per epoch, cfg.batch_size each."""
    order = random.Random(cfg.seed)

    def epoch_batches(_epoch: int):
        indices = list(range(len(samples)))
        order.shuffle(indices)
        for start in range(0, len(indices), cfg.batch_size):
            yield [samples[i] for i in indices[start:start + cfg.batch_size]]

    return epoch_batches


def _target(boxes: Tensor, masks: Tensor | None, size: tuple[int, int]) -> dict[str, Tensor]:
    boxes = boxes.reshape(-1, 4).float()
    if masks is None:  # box-only samples: the box itself as the mask
        masks = torch.zeros((len(boxes), *size), dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
            mask[y0:y1, x0:x1] = 1
    return {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64), "masks": masks}


def fit(samples: Iterable[tuple], cfg: DetectorConfig, patch_size: int = 14) -> MaskFCOS:
    """samples: (features (C, h, w), boxes (n, 4) input-pixel xyxy[, masks (n, h·patch, w·patch)])
    -> trained detector (eval mode), in memory, batches in a seeded shuffled order."""
    prepared = []
    for sample in samples:
        features, boxes = sample[0].float(), sample[1]
        size = (features.shape[-2] * patch_size, features.shape[-1] * patch_size)
        prepared.append((features, _target(boxes, sample[2] if len(sample) > 2 else None, size)))
    check(len(prepared) > 0, "detector samples", "non-empty", len(prepared))
    model = new_model(prepared[0][0].shape[0], patch_size, cfg)
    return train(model, shuffled_batches(prepared, cfg), cfg)


@torch.no_grad()
def detect(model: MaskFCOS, features: list[Tensor]) -> list[dict[str, Tensor]]:
    """Feature grids (C, h, w) -> per grid {"boxes" (n, 4) input-pixel xyxy, "scores" (n,),
    "masks" (n, 1, 28, 28) probabilities inside each box}, best first, after FCOS's NMS."""
    model.eval()
    device = next(model.parameters()).device
    return [{k: v.cpu() for k, v in d.items()} for d in model([f.float().to(device) for f in features])]


def predict(model: MaskFCOS, features: Tensor) -> tuple[Tensor, Tensor]:
    """features (C, h, w) -> (boxes (n, 4) input-pixel xyxy, scores (n,)), best first."""
    detection = detect(model, [features])[0]
    return detection["boxes"], detection["scores"]

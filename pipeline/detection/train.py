"""Fit the class-agnostic detector on (patch features, pseudo-boxes) pairs, and predict with it.

Plain single-process PyTorch (no Ray here); deterministic for a seed on CPU: the weights' init and
the epoch order both come from the seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor
from torchvision.models.detection import FCOS

from pipeline.config import check
from pipeline.detection.detector import build_detector


@dataclass(frozen=True)
class DetectorConfig:
    epochs: int = 12
    lr: float = 1e-3
    batch_size: int = 8
    # Channels of every pyramid level and of the FCOS head (a multiple of 32: the head's GroupNorm).
    pyramid_channels: int = 64
    # 3×3 convs in each FCOS tower (torchvision's default is 4).
    head_convs: int = 4
    # Detections below this score are not returned by predict.
    score_threshold: float = 0.3
    seed: int = 0
    # CutLER's drop-loss: predictions overlapping no pseudo-box (IoU < 0.01) get no classification loss.
    drop_loss: bool = True
    patch_size: int = 14

    def __post_init__(self):
        check(isinstance(self.epochs, int) and self.epochs >= 1, "detector.epochs", ">= 1", self.epochs)
        check(self.lr > 0, "detector.lr", "> 0", self.lr)
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "detector.batch_size", ">= 1",
              self.batch_size)
        check(isinstance(self.pyramid_channels, int) and self.pyramid_channels > 0 and self.pyramid_channels % 32 == 0,
              "detector.pyramid_channels", "a positive multiple of 32", self.pyramid_channels)
        check(isinstance(self.head_convs, int) and self.head_convs >= 1, "detector.head_convs", ">= 1",
              self.head_convs)
        check(0.0 <= self.score_threshold < 1.0, "detector.score_threshold", "in [0, 1)", self.score_threshold)
        check(isinstance(self.seed, int), "detector.seed", "an integer", self.seed)
        check(isinstance(self.drop_loss, bool), "detector.drop_loss", "true or false", self.drop_loss)
        check(isinstance(self.patch_size, int) and self.patch_size >= 1, "detector.patch_size", ">= 1",
              self.patch_size)


def new_model(in_channels: int, cfg: DetectorConfig) -> FCOS:
    """An untrained detector for (in_channels, h, w) features, initialised from cfg.seed (what a
    checkpoint's state_dict loads into)."""
    torch.manual_seed(cfg.seed)
    return build_detector(in_channels, cfg.pyramid_channels, cfg.head_convs, cfg.patch_size,
                          drop_iou=0.01 if cfg.drop_loss else None, score_threshold=cfg.score_threshold)


def _target(boxes: Tensor) -> dict[str, Tensor]:
    boxes = boxes.reshape(-1, 4).float()
    return {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64)}


def fit(samples: Iterable[tuple[Tensor, Tensor]], cfg: DetectorConfig) -> FCOS:
    """samples: (features (C, h, w) float, boxes (n, 4) pixel xyxy, n >= 0) -> trained detector (eval mode).
    AdamW over cfg.epochs passes in a seeded shuffled order, batches of cfg.batch_size."""
    samples = [(features.float(), _target(boxes)) for features, boxes in samples]
    check(len(samples) > 0, "detector samples", "non-empty", len(samples))
    model = new_model(samples[0][0].shape[0], cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    order = random.Random(cfg.seed)
    # Drop-loss leaves most background logits without gradient; on CPU their optimiser state decays into
    # denormal floats, measured 10x slower (185 s vs 18 s on the synthetic test set); flush them to zero.
    torch.set_flush_denormal(True)
    try:
        _epochs(model, optimizer, samples, order, cfg)
    finally:
        torch.set_flush_denormal(False)
    return model.eval()


def _epochs(model: FCOS, optimizer, samples, order: random.Random, cfg: DetectorConfig) -> None:
    for _ in range(cfg.epochs):
        indices = list(range(len(samples)))
        order.shuffle(indices)
        for start in range(0, len(indices), cfg.batch_size):
            batch = [samples[i] for i in indices[start:start + cfg.batch_size]]
            losses = model([f for f, _ in batch], [t for _, t in batch])
            optimizer.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()


@torch.no_grad()
def predict(model: FCOS, features: Tensor) -> tuple[Tensor, Tensor]:
    """features (C, h, w) -> (boxes (n, 4) pixel xyxy, scores (n,)), scores >= the model's threshold,
    after FCOS's NMS, best first."""
    model.eval()
    detection = model([features.float()])[0]
    return detection["boxes"], detection["scores"]

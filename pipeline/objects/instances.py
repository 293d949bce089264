"""One image's object labels: candidate patch masks -> refined masks, boxes, scores.

`LabelConfig` is what `deep-spectral label` records in its shards: the discovery method, the
score, and the pixel refinement. Masks are refined as single-object masks are
(pipeline.objects.masks: nearest-cell upsampling, then the colour guided filter or the
bilateral solver, > 0.5), all objects of an image in one stacked pass; each box encloses its
refined mask. The map before the threshold is each object's soft mask (stored when
`soft_masks` asks).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from kernels.backend import array_module, to_numpy
from pipeline.config import canonical_json, check, digest_of
from pipeline.features.geometry import GridGeometry, grid_to_pixels
from pipeline.objects.discovery import Candidate, DiscoveryConfig, discover
from pipeline.objects.localize import mask_box
from pipeline.objects.masks import PIXEL_REFINERS, REFINERS, SegmentConfig, refine_guided_cells, refine_matting
from pipeline.objects.self_training import HeadConfig
from pipeline.settings import build

# How a candidate's score is made from what discovery measured (docs/objects-results.md compares them
# by AP). Scores rank objects across the whole dataset, so they must be comparable between
# images, not only within one.
SCORES = {
    "rank": lambda c: 1.0 / (c.rank + 1),  # the order of discovery
    "prior": lambda c: c.prior,  # the method's own score
    "cut": lambda c: (1.0 - min(c.eigenvalue, 1.0)) / (c.rank + 1),  # a strong, early cut
    "inner": lambda c: (1.0 - c.border) / (c.rank + 1),  # away from the frame, early
}


FRAME_OFF = 1.0  # frame_area / frame_border at this value: no candidate is the frame


def is_frame(c: Candidate, area: float, border: float) -> bool:
    """Whether a candidate covers more than `area` of the grid and more than `border` of the
    grid's border cells (LabelConfig's frame rule)."""
    return c.area > area and c.border > border


@dataclass(frozen=True)
class LabelConfig:
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    score: str = "cut"  # a SCORES name ("cut" beat "rank" on tune and check: docs/objects-results.md)
    # The frame rule: a candidate covering more than frame_area of the grid and more than
    # frame_border of the grid's border cells is the background, whatever the sign of its cut
    # (a cut whose object is small and the rest near 0 can leave the near-0 side positive and
    # above the mean: samples/rocket.jpg's sky), and scores 0 like the whole-image fallback:
    # never an image's best object while any other has a positive score. 0.6 / 0.7: the middle
    # of the plateau of the best tune figures (areas 0.5-0.7 x borders 0.6-0.8: VOC07 CorLoc
    # +0.4, ECSSD +0.4, the rest equal); check agrees (VOC07 +0.2, the rest equal; docs/objects-results.md,
    # "The frame rule"). 1.0 turns it off (the runs stored before it).
    frame_area: float = 0.6
    frame_border: float = 0.7
    # "guided", "bilateral" (pipeline.objects.masks.PIXEL_REFINERS), "matting" (pymatting
    # closed-form alpha near the edge, slow) or "none" (nearest-cell upsampling of the patch mask)
    refine: str = "guided"
    radius: int = 16
    eps: float = 1e-3
    max_side: int = 1024
    # Guided filter (refine="guided"): 1 = the exact filter, s > 1 = He and Sun's fast guided
    # filter fitted on s×s blocks (SegmentConfig.subsample). 4: the scores of the exact filter
    # on every tune and check part measured (Horse check +0.1), at 1/20 of its time
    # (docs/objects-results.md, "Fast guided filter"); 8 lost 0.2 mIoU on ECSSD tune and 0.3 box AP50
    # on COCO instances tune.
    guided_subsample: int = 4
    # Bilateral solver (refine="bilateral"), as SegmentConfig.
    sigma_spatial: float = 16.0
    sigma_luma: float = 16.0
    sigma_chroma: float = 8.0
    lam: float = 128.0
    # Also store each object's soft mask (8-bit PNG in the labels table): what max-F needs.
    soft_masks: bool = False
    # Self-training (pipeline.objects.self_training): a logistic head fitted on the Fiedler
    # objects of a fixed-seed sample of `head_images` stored rows of the run (stored features
    # needed), refitted `head_rounds - 1` times to its own masks; its mask replaces the
    # Fiedler object as the first object (VOC07 CorLoc +2.4 on tune and check, not COCO128:
    # docs/objects-results.md, so off by default).
    self_train: bool = False
    head_images: int = 400
    head_rounds: int = 1
    # A detector trained on a label run (`deep-spectral train`; the URI of its round folder, which
    # names its digest): its detections become the objects, best first, and an image where it finds
    # none keeps its cuts. Empty: the cuts only.
    detector: str = ""

    def __post_init__(self):
        check(self.score in SCORES, "label.score", f"one of {sorted(SCORES)}", self.score)
        check(self.refine in REFINERS, "label.refine", f"one of {list(REFINERS)}", self.refine)
        check(self.radius >= 1 and self.eps > 0, "label.radius / label.eps", "radius >= 1 and eps > 0",
              (self.radius, self.eps))
        check(self.guided_subsample >= 1, "label.guided_subsample", ">= 1 (1: the exact filter)", self.guided_subsample)
        check(self.max_side >= 1, "label.max_side", ">= 1", self.max_side)
        check(0 < self.frame_area <= 1 and 0 < self.frame_border <= 1, "label.frame_area / label.frame_border",
              "shares in (0, 1] (1: the frame rule off)", (self.frame_area, self.frame_border))
        check(isinstance(self.detector, str), "label.detector", "a detector folder (text)", self.detector)
        check(self.head_images >= 1 and self.head_rounds >= 1, "label.head_images / label.head_rounds", ">= 1",
              (self.head_images, self.head_rounds))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key, value in _OMITTED_AT_DEFAULT.items():
            if data[key] == value:
                del data[key]
        return data

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        return digest_of(self.digested())

    def digested(self) -> dict:
        """What the digests hash: to_dict, with the discovery settings removed since
        (DiscoveryConfig.REMOVED_SETTINGS) back at the values every run had them at, so runs
        stored before keep their digests."""
        data = self.to_dict()
        data["discovery"] = {**data["discovery"], **DiscoveryConfig.REMOVED_SETTINGS}
        return data

    def segment_config(self) -> SegmentConfig:
        """The single-object refinement settings these options mean."""
        return SegmentConfig(radius=self.radius, eps=self.eps, max_side=self.max_side, subsample=self.guided_subsample,
                             sigma_spatial=self.sigma_spatial, sigma_luma=self.sigma_luma,
                             sigma_chroma=self.sigma_chroma, lam=self.lam)

    def head_config(self) -> HeadConfig:
        """The head these options fit (the rest at HeadConfig's defaults)."""
        return HeadConfig(rounds=self.head_rounds)

    @classmethod
    def from_dict(cls, data: dict) -> "LabelConfig":
        """to_dict's inverse: a field it left out takes the value it was left out at (for
        guided_subsample the exact filter, not today's default)."""
        return build(cls, {**_OMITTED_AT_DEFAULT, **data}, "label")


# Fields added after label runs were stored, left out of the JSON (and so the digest) while at
# the value that reproduces those runs, as pipeline.config does for ExtractConfig: such a run
# keeps its digest and its stored labels stay valid. guided_subsample's default (4) is not that
# value, so the default run has a new digest; --set label.guided_subsample=1 keeps the old one
# (the exact filter, now in float32: soft masks within 1e-5 of the float64 ones). Nor is the
# frame rule's (0.6 / 0.7): --set label.frame_area=1 --set label.frame_border=1 keeps the digests
# of the runs before it.
_OMITTED_AT_DEFAULT = {"sigma_spatial": 16.0, "sigma_luma": 16.0, "sigma_chroma": 8.0, "lam": 128.0,
                       "soft_masks": False, "self_train": False, "head_images": 400, "head_rounds": 1,
                       "guided_subsample": 1, "frame_area": FRAME_OFF, "frame_border": FRAME_OFF,
                       "detector": ""}


def label_digest(extract_digest: str, cfg: LabelConfig) -> str:
    """The digest of a label run: its own config and the extraction it labels."""
    return digest_of({"extract_digest": extract_digest, "label": cfg.digested()})


@dataclass(frozen=True)
class ImageObject:
    mask: np.ndarray  # (H, W) bool, original resolution
    box: np.ndarray  # (4,) [x0, y0, x1, y1] around the mask, original pixels
    patch_box: np.ndarray  # (4,) the box of the patch mask (cells to pixels)
    score: float
    candidate: Candidate
    soft: np.ndarray  # (H, W) float32 in [0, 1]: the refined map; mask == soft > 0.5


def image_objects(eigenvectors: np.ndarray, eigenvalues: np.ndarray, W, image: np.ndarray,
                  geom: GridGeometry, cfg: LabelConfig, first: np.ndarray | None = None,
                  candidates: list[Candidate] | None = None) -> list[ImageObject]:
    """(k, h, w) oriented eigenvectors, (k,) eigenvalues, the (N, N) graph, the (H, W, 3)
    uint8 image -> its objects, best score first (at least one: the Fiedler object, or the
    (h, w) bool `first` in its place: the self-trained head's mask). `candidates`: what
    discover_batch found for this image already (then W and first are not read)."""
    if candidates is None:
        candidates = discover(eigenvectors, eigenvalues, W, cfg.discovery, first)
    softs = soft_masks([c.mask for c in candidates], image, geom, cfg)
    masks = [soft > 0.5 for soft in softs]
    boxes, filled = mask_boxes(masks)
    objects = []
    for cand, soft, mask, box, full in zip(candidates, softs, masks, boxes, filled):
        patch_box = mask_box(cand.mask, geom) if cand.mask.any() else np.array([0, 0, geom.width, geom.height], float)
        objects.append(ImageObject(mask=mask, box=box if full else patch_box, patch_box=patch_box,
                                   score=candidate_score(cand, cfg), candidate=cand, soft=soft))
    return sorted(objects, key=lambda o: (-o.score, o.candidate.rank))


def candidate_score(c: Candidate, cfg: LabelConfig) -> float:
    """A candidate's score under cfg: 0 for the whole-image fallback and for the frame
    (is_frame at cfg.frame_area, cfg.frame_border), else SCORES[cfg.score]."""
    if c.fallback or is_frame(c, cfg.frame_area, cfg.frame_border):
        return 0.0
    return float(SCORES[cfg.score](c))


def mask_boxes(masks: list) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool masks of one image (NumPy or CuPy) -> ((L, 4) float64 [x0, y0, x1, y1]
    around each, pixel columns 0..9 being [0, 10); (L,) bool: not empty), on the host: one
    copy of 5 numbers per mask, however large the masks."""
    if not masks:
        return np.zeros((0, 4)), np.zeros(0, bool)
    xp = array_module(masks[0])
    stack = xp.stack(masks)
    rows, cols = stack.any(axis=2), stack.any(axis=1)  # (L, H), (L, W)
    h, w = rows.shape[1], cols.shape[1]
    found = xp.stack([xp.argmax(cols, axis=1), xp.argmax(rows, axis=1),
                      w - xp.argmax(cols[:, ::-1], axis=1), h - xp.argmax(rows[:, ::-1], axis=1),
                      rows.any(axis=1)], axis=1)
    found = to_numpy(found)
    return found[:, :4].astype(np.float64), found[:, 4].astype(bool)


def soft_masks(cells: list[np.ndarray], image: np.ndarray, geom: GridGeometry, cfg: LabelConfig) -> list[np.ndarray]:
    """(grid_h, grid_w) bool patch masks -> (H, W) float32 soft masks in [0, 1], whose > 0.5
    are the objects' masks (one guided-filter pass for all of them). With the fast guided
    filter they are made on the image's device (a CuPy image on a GPU), else on the host."""
    if not cells:
        return []
    if cfg.refine == "guided":  # from the cells: the fast filter never forms the full-size masks
        return list(refine_guided_cells(image, np.stack(cells), geom, cfg.segment_config()))
    image = to_numpy(image)  # the other refiners run on the host
    coarse = np.stack([grid_to_pixels(c, geom, bilinear=False) for c in cells])
    if cfg.refine == "none":
        soft = coarse
    elif cfg.refine == "matting":  # the band pipeline.objects.masks.segment uses: half a patch
        band = max(1, round(0.5 * geom.cell_h / geom.scale_y))
        soft = np.stack([refine_matting(image, c, band) for c in coarse])
    else:
        soft = PIXEL_REFINERS[cfg.refine](image, coarse, cfg.segment_config())
    return list(np.clip(soft, 0, 1).astype(np.float32))


def pixel_box(mask: np.ndarray) -> np.ndarray:
    """Non-empty (H, W) bool -> [x0, y0, x1, y1] around it (pixel columns 0..9 are [0, 10))."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
